"""Automatic audit of Django model changes, opted into per model.

    # settings.py
    LEZA = {"audit_models": ["auth.Group", "auth.User", "shop.Order"]}
    # or {"auth.User": {"exclude": ["last_login"]}, "auth.Group": {}}

    # or on the model
    from leza_middleware.django import audited

    @audited                       # or @audited(exclude=["updated_at"])
    class Order(models.Model): ...

Every change of an audited model becomes one ``leza.audit`` record, attributed
to the running request's performer (``request.user``; None outside requests),
written when the transaction commits (a rolled-back change records nothing):

* ``save()`` of a new row → ``create`` with the new state;
* ``save()`` of an existing row → ``update`` with the changed fields only: the
  before state is read from the database in ``pre_save`` (one query by primary
  key, for audited models only), the after state from the saved instance; a
  save that changes nothing records nothing;
* ``delete()`` (of one instance, or of a queryset: Django sends the signals per
  row) → ``delete`` with the last state;
* many-to-many ``add`` / ``remove`` / ``clear`` / ``set``, from either side →
  ``update`` on each audited side, ``diff`` ``{"<relation>": {"added": [ids],
  "removed": [ids]}}``; the relation is named as seen from that side
  (``permissions`` on a Group, ``group_set`` on a Permission); links that a
  deleted row takes with it are recorded as removed on the other side;
* ``QuerySet.update()`` → one ``bulk_update`` record, entity id ``*``, with
  ``{"statement": {"criteria": <SQL WHERE>, "rows": <count>, "values": {...},
  "ids": [...]}}``; ``bulk_update()`` → an ``update`` per changed object;
  ``bulk_create()`` → a ``create`` per object.

Values are stored as the database holds them: foreign keys as ids, dates and
times in ISO 8601 (aware ones in UTC), decimals and UUIDs as text, binary data
as a SHA-256 digest. Sensitive fields (``password``, ``*_token``, …, plus
``LEZA["audit_mask"]``) are masked by the audit core; a masked field that
changed still shows in the diff, as ``[Filtered]`` → ``[Filtered]``.

Signals are connected by ``LezaConfig.ready()`` (``"leza_middleware.django"``
must be in ``INSTALLED_APPS``), and again when ``settings.LEZA`` changes
(``override_settings`` in tests). ``QuerySet.update``, ``bulk_update`` and
``bulk_create`` are wrapped once, process-wide, and only when some model is
audited; the wrappers hand every other model straight to Django.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar, overload

from ..errors import LezaConfigError
from .audit_values import emit, on_commit, value_of

__all__ = ["audit_spec", "audited", "connect_audit", "parse_audit_models"]

log = logging.getLogger("leza_middleware")

_UID = "leza_middleware.django.audit."
_BEFORE = "_leza_audit_before"  # instance.__dict__ keys for what pre_* signals found
_DELETED = "_leza_audit_deleted"
_M2M = "_leza_audit_m2m"

_T = TypeVar("_T")

# Models audited by the decorator: label (lower case) -> excluded field names.
_decorated: dict[str, frozenset[str]] = {}
# settings.LEZA["audit_models"], parsed once per settings.LEZA object.
_parsed: tuple[object, dict[str, frozenset[str]]] = (object(), {})
# Through model -> the ManyToManyField it belongs to (for m2m_changed).
_through: dict[Any, Any] = {}
_lock = threading.RLock()


# -- which models ---------------------------------------------------------------------


def parse_audit_models(value: object) -> dict[str, frozenset[str]]:
    """``LEZA["audit_models"]`` as ``{"app_label.modelname": excluded field names}``.

    Takes a list of ``"app_label.ModelName"`` labels (or one comma-separated
    string), or a dict ``{label: {"exclude": [field, ...]}}`` (``None`` or ``{}``
    for no exclusion). Raises :class:`~leza_middleware.LezaConfigError`.
    """
    if value is None:
        return {}
    items: list[tuple[object, object]]
    if isinstance(value, str):
        items = [(part.strip(), None) for part in value.split(",") if part.strip()]
    elif isinstance(value, Mapping):
        items = list(value.items())
    elif isinstance(value, Iterable):
        items = [(label, None) for label in value]
    else:
        raise LezaConfigError(
            "audit_models must be a list of 'app_label.ModelName' labels or a dict "
            f"{{label: {{'exclude': [fields]}}}}, got {type(value).__name__}"
        )
    out: dict[str, frozenset[str]] = {}
    for label, options in items:
        if not isinstance(label, str) or label.count(".") != 1 or "" in label.split("."):
            raise LezaConfigError(
                f"audit_models entry {label!r} must be a model label like 'auth.Group'"
            )
        out[label.strip().lower()] = _exclusions(label, options)
    return out


def _exclusions(label: str, options: object) -> frozenset[str]:
    if options is None:
        return frozenset()
    if not isinstance(options, Mapping) or set(options) - {"exclude"}:
        raise LezaConfigError(
            f"audit_models[{label!r}] must be None or {{'exclude': [field names]}}, got {options!r}"
        )
    return _names(f"audit_models[{label!r}]['exclude']", options.get("exclude"))


def _names(what: str, value: object) -> frozenset[str]:
    if value is None:
        return frozenset()
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise LezaConfigError(f"{what} must be a list of field names, got {value!r}")
    names = list(value)
    for name in names:
        if not isinstance(name, str):
            raise LezaConfigError(f"{what} must hold field names, got {name!r}")
    return frozenset(names)


def _setting() -> dict[str, frozenset[str]]:
    global _parsed
    from .conf import raw_setting

    raw = raw_setting()
    parsed = _parsed
    if parsed[0] is raw:
        return parsed[1]
    value = raw.get("audit_models") if isinstance(raw, Mapping) else None
    try:
        specs = parse_audit_models(value)
    except LezaConfigError as exc:  # `manage.py check` reports it as leza.E005
        log.error("leza: settings.LEZA['audit_models'] is invalid, ignored: %s", exc)
        specs = {}
    _parsed = (raw, specs)
    return specs


def audit_spec(model: Any) -> frozenset[str] | None:
    """The excluded field names when ``model`` is audited, else None."""
    meta = getattr(model, "_meta", None)
    if meta is None:
        return None
    specs = _setting()
    for label in (meta.label_lower, meta.concrete_model._meta.label_lower):
        found = specs.get(label)
        mark = _decorated.get(label)
        if found is not None or mark is not None:
            return (found or frozenset()) | (mark or frozenset())
    return None


@overload
def audited(model: _T) -> _T: ...


@overload
def audited(*, exclude: Iterable[str] = ()) -> Callable[[_T], _T]: ...


def audited(model: Any = None, *, exclude: Iterable[str] = ()) -> Any:
    """Audit every change of this model: ``@audited`` or ``@audited(exclude=[...])``.

    The same as naming the model in ``LEZA["audit_models"]``; ``exclude`` names
    fields (or many-to-many relations) left out of the records.
    """
    names = _names("audited(exclude=...)", exclude)

    def mark(cls: _T) -> _T:
        meta = getattr(cls, "_meta", None)
        if meta is None or not hasattr(meta, "label_lower"):
            raise TypeError(f"@audited decorates a Django model class, not {cls!r}")
        if meta.abstract:
            raise TypeError(f"@audited needs a concrete model; {meta.label} is abstract")
        with _lock:
            _decorated[meta.label_lower] = names
        from django.apps import apps

        if apps.ready:  # a model defined after start-up: connect it now
            connect_audit()
        return cls

    return mark if model is None else mark(model)


# -- connecting -----------------------------------------------------------------------


def connect_audit() -> None:
    """Connect the receivers for every audited model (idempotent; ``LezaConfig.ready()``)."""
    from django.apps import apps
    from django.db.models.signals import m2m_changed, post_delete, post_save, pre_delete, pre_save

    if not apps.ready or not (_setting() or _decorated):
        return
    with _lock:
        models = [m for m in apps.get_models() if audit_spec(m) is not None]
        if not models:
            return
        from .audit_bulk import install_queryset_hooks  # it imports this module

        install_queryset_hooks()
        deletions = set()
        for model in models:
            pre_save.connect(_pre_save, sender=model, dispatch_uid=_UID + "pre_save")
            post_save.connect(_post_save, sender=model, dispatch_uid=_UID + "post_save")
            deletions.add(model)
            for field, _ in relations(model._meta.concrete_model):
                through = field.remote_field.through
                _through[through] = field
                m2m_changed.connect(_m2m_changed, sender=through, dispatch_uid=_UID + "m2m")
                # A deleted row takes its links along without m2m_changed.
                deletions.update((field.model, field.related_model))
        for model in deletions:
            pre_delete.connect(_pre_delete, sender=model, dispatch_uid=_UID + "pre_delete")
            post_delete.connect(_post_delete, sender=model, dispatch_uid=_UID + "post_delete")


def on_setting_changed(setting: str = "", **kwargs: Any) -> None:
    """``setting_changed`` receiver: models named by a new ``LEZA`` get connected."""
    if setting == "LEZA":
        try:
            connect_audit()
        except Exception:
            log.warning("leza: connecting the audited models failed", exc_info=True)


def relations(model: Any) -> list[tuple[Any, bool]]:
    """The many-to-many fields ``model`` is on: (field, True when it declares it)."""
    out = [(f, True) for f in model._meta.many_to_many]
    for rel in model._meta.related_objects:
        if rel.many_to_many and not _symmetrical(rel.field):
            out.append((rel.field, False))
    return out


def _symmetrical(field: Any) -> bool:
    return bool(field.remote_field.symmetrical) and field.model is field.related_model


def side_key(field: Any, declaring: bool) -> str | None:
    """How one side of a many-to-many relation names it (None: it has no name there)."""
    if declaring or _symmetrical(field):
        return str(field.name)
    rel = field.remote_field
    hidden = rel.hidden if hasattr(rel, "hidden") else rel.is_hidden()  # Django >= 5.1 / older
    if hidden:
        return None
    return str(field.remote_field.get_accessor_name())


# -- save and delete ------------------------------------------------------------------


def _guarded(receiver: Callable[..., None]) -> Callable[..., None]:
    """A receiver never breaks the app's write; what it misses is logged."""

    @functools.wraps(receiver)
    def run(*args: Any, **kwargs: Any) -> None:
        try:
            receiver(*args, **kwargs)
        except Exception:
            log.warning("leza: audit capture failed (%s)", receiver.__name__, exc_info=True)

    return run


def label_of(model: Any) -> str:
    return str(model._meta.concrete_model._meta.label_lower)


def audited_fields(model: Any, excluded: frozenset[str]) -> list[Any]:
    return [
        f
        for f in model._meta.concrete_fields
        if not getattr(f, "generated", False) and f.name not in excluded
        and f.attname not in excluded
    ]  # fmt: skip


def _inserting(model: Any, instance: Any) -> bool:
    """True when this save is surely an INSERT (no need to read a before state)."""
    if instance.pk is None:
        return True
    pk = model._meta.pk
    has_db_default = getattr(pk, "has_db_default", lambda: False)
    return bool(instance._state.adding and (pk.has_default() or has_db_default()))


@_guarded
def _pre_save(sender: Any, instance: Any, raw: bool = False, using: Any = None,
              update_fields: Any = None, **kwargs: Any) -> None:  # fmt: skip
    excluded = audit_spec(sender)
    if excluded is None:
        return
    instance.__dict__.pop(_BEFORE, None)
    if _inserting(sender, instance):
        return
    fields = audited_fields(sender, excluded)
    if update_fields is not None:
        wanted = set(update_fields)
        fields = [f for f in fields if f.name in wanted or f.attname in wanted]
    deferred = instance.get_deferred_fields()
    fields = [f for f in fields if f.attname not in deferred]  # not written by this save
    row: dict[str, Any] | None = {}
    if fields:
        rows = sender._base_manager.using(using).filter(pk=instance.pk)
        row = next(iter(rows.values(*[f.attname for f in fields])[:1]), None)
    instance.__dict__[_BEFORE] = (fields, row)


@_guarded
def _post_save(sender: Any, instance: Any, created: bool = False, raw: bool = False,
               using: Any = None, **kwargs: Any) -> None:  # fmt: skip
    excluded = audit_spec(sender)
    if excluded is None:
        return
    found = instance.__dict__.pop(_BEFORE, None)
    entity = (label_of(sender), instance.pk)
    if created:
        after = state_of(instance, audited_fields(sender, excluded))
        on_commit(using, emit, "create", *entity, None, after)
        return
    if found is None or found[1] is None:  # pre_save did not run, or found no row
        return
    fields, row = found
    before, after = {}, {}
    for f in fields:
        old = value_of(f, row[f.attname])
        new = value_of(f, instance.__dict__.get(f.attname))
        if old != new:
            before[f.name] = old
            after[f.name] = new
    if after:
        on_commit(using, emit, "update", *entity, before, after)


def state_of(instance: Any, fields: list[Any]) -> dict[str, Any]:
    """The instance's loaded field values (deferred fields are not read)."""
    d = instance.__dict__
    return {f.name: value_of(f, d[f.attname]) for f in fields if f.attname in d}


@_guarded
def _pre_delete(sender: Any, instance: Any, using: Any = None, **kwargs: Any) -> None:
    excluded = audit_spec(sender)
    if excluded is not None:
        fields = audited_fields(sender, excluded)
        state = state_of(instance, fields)
        missing = [f for f in fields if f.name not in state]
        if missing:  # deferred fields: read them while the row is still there
            rows = sender._base_manager.using(using).filter(pk=instance.pk)
            row = next(iter(rows.values(*[f.attname for f in missing])[:1]), None) or {}
            state.update({f.name: value_of(f, row.get(f.attname)) for f in missing})
        instance.__dict__[_DELETED] = state
    links = []
    for field, declaring in relations(sender._meta.concrete_model):
        other = field.related_model if declaring else field.model
        key = side_key(field, not declaring)
        spec = audit_spec(other)
        if key is None or spec is None or key in spec:
            continue
        ids = _linked(field, declaring, instance, using)
        if ids:
            links.append((field, declaring, ids))
    if links:
        instance.__dict__[_M2M + "_deleted"] = links


@_guarded
def _post_delete(sender: Any, instance: Any, using: Any = None, **kwargs: Any) -> None:
    state = instance.__dict__.pop(_DELETED, None)
    if state is not None and audit_spec(sender) is not None:
        on_commit(using, emit, "delete", label_of(sender), instance.pk, state, None)
    for field, declaring, ids in instance.__dict__.pop(_M2M + "_deleted", ()):
        _link_events(field, declaring, instance.pk, "removed", ids, using, here=False)


# -- many-to-many ---------------------------------------------------------------------


@_guarded
def _m2m_changed(sender: Any, instance: Any, action: str = "", reverse: bool = False,
                 pk_set: Any = None, using: Any = None, **kwargs: Any) -> None:  # fmt: skip
    field = _through.get(sender)
    if field is None:
        return
    declaring = not reverse  # the instance is on the side that declares the field
    if not _any_side_audited(field):
        return
    stash = f"{_M2M}_{id(sender)}_{int(reverse)}"
    if action in ("pre_remove", "pre_clear"):
        # What is really there: remove() signals every id it was given, and
        # clear() none at all.
        among = None if action == "pre_clear" else pk_set
        instance.__dict__[stash] = _linked(field, declaring, instance, using, among)
        return
    if action == "post_add":
        ids = set(pk_set or ())
        direction = "added"
    elif action in ("post_remove", "post_clear"):
        ids = instance.__dict__.pop(stash, set())
        direction = "removed"
    else:
        return
    if ids:
        _link_events(field, declaring, instance.pk, direction, ids, using)


def _any_side_audited(field: Any) -> bool:
    return audit_spec(field.model) is not None or audit_spec(field.related_model) is not None


def _linked(field: Any, declaring: bool, instance: Any, using: Any,
            among: Iterable[Any] | None = None) -> set[Any]:  # fmt: skip
    """Ids linked to ``instance`` through ``field`` (only those in ``among`` if given)."""
    through = field.remote_field.through
    source = through._meta.get_field(field.m2m_field_name())  # to the declaring model
    target = through._meta.get_field(field.m2m_reverse_field_name())
    mine, other = (source, target) if declaring else (target, source)
    rows = through._base_manager.using(using).filter(
        **{mine.attname: getattr(instance, mine.target_field.attname)}
    )
    if among is not None:
        rows = rows.filter(**{other.attname + "__in": list(among)})
    return set(rows.values_list(other.attname, flat=True))


def _link_events(field: Any, declaring: bool, pk: Any, direction: str, ids: set[Any],
                 using: Any, here: bool = True) -> None:  # fmt: skip
    """Record ``ids`` linked to / unlinked from row ``pk``, on each audited side."""
    here_model, there_model = (
        (field.model, field.related_model) if declaring else (field.related_model, field.model)
    )
    here_key, there_key = side_key(field, declaring), side_key(field, not declaring)
    if here and here_key is not None:
        spec = audit_spec(here_model)
        if spec is not None and here_key not in spec:
            change = {here_key: _link_diff(direction, ids)}
            on_commit(using, emit, "update", label_of(here_model), pk, None, None, change)
    if there_key is not None:
        spec = audit_spec(there_model)
        if spec is not None and there_key not in spec:
            change = {there_key: _link_diff(direction, {pk})}
            for other in sorted_ids(ids):
                on_commit(using, emit, "update", label_of(there_model), other, None, None, change)


def _link_diff(direction: str, ids: Iterable[Any]) -> dict[str, list[str]]:
    listed = [str(i) for i in sorted_ids(ids)]
    return {"added": listed if direction == "added" else [],
            "removed": listed if direction == "removed" else []}  # fmt: skip


def sorted_ids(ids: Iterable[Any]) -> list[Any]:
    return sorted(ids, key=lambda v: (0, v, "") if isinstance(v, int) else (1, 0, str(v)))
