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

import contextvars
import functools
import hashlib
import inspect
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from datetime import date, datetime, time, timezone
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeVar, overload
from uuid import UUID

from ..errors import LezaConfigError

if TYPE_CHECKING:
    from ..audit.api import Audit

__all__ = ["audit_spec", "audited", "connect_audit", "parse_audit_models"]

log = logging.getLogger("leza_middleware")

_UID = "leza_middleware.django.audit."
#: ``QuerySet.update()``: the matched primary keys are listed up to this many rows.
IDS_CAP = 1000
_CHUNK = 500  # primary keys per query when reading the before state of bulk_update()
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
# The QuerySet methods before they were wrapped, and their signatures.
_originals: dict[str, Callable[..., Any]] = {}
_signatures: dict[str, inspect.Signature] = {}
_lock = threading.RLock()
# Set while bulk_update() runs: the update() calls it makes are not recorded again.
_quiet: contextvars.ContextVar[bool] = contextvars.ContextVar("leza_audit_quiet", default=False)


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
        _install_queryset_hooks()
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


def _label(model: Any) -> str:
    return str(model._meta.concrete_model._meta.label_lower)


def _fields(model: Any, excluded: frozenset[str]) -> list[Any]:
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
    fields = _fields(sender, excluded)
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
    entity = (_label(sender), instance.pk)
    if created:
        after = _state(instance, _fields(sender, excluded))
        _later(using, _emit, "create", *entity, None, after)
        return
    if found is None or found[1] is None:  # pre_save did not run, or found no row
        return
    fields, row = found
    before, after = {}, {}
    for f in fields:
        old = _value(f, row[f.attname])
        new = _value(f, instance.__dict__.get(f.attname))
        if old != new:
            before[f.name] = old
            after[f.name] = new
    if after:
        _later(using, _emit, "update", *entity, before, after)


def _state(instance: Any, fields: list[Any]) -> dict[str, Any]:
    """The instance's loaded field values (deferred fields are not read)."""
    d = instance.__dict__
    return {f.name: _value(f, d[f.attname]) for f in fields if f.attname in d}


@_guarded
def _pre_delete(sender: Any, instance: Any, using: Any = None, **kwargs: Any) -> None:
    excluded = audit_spec(sender)
    if excluded is not None:
        fields = _fields(sender, excluded)
        state = _state(instance, fields)
        missing = [f for f in fields if f.name not in state]
        if missing:  # deferred fields: read them while the row is still there
            rows = sender._base_manager.using(using).filter(pk=instance.pk)
            row = next(iter(rows.values(*[f.attname for f in missing])[:1]), None) or {}
            state.update({f.name: _value(f, row.get(f.attname)) for f in missing})
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
        _later(using, _emit, "delete", _label(sender), instance.pk, state, None)
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
            _later(using, _emit, "update", _label(here_model), pk, None, None, change)
    if there_key is not None:
        spec = audit_spec(there_model)
        if spec is not None and there_key not in spec:
            change = {there_key: _link_diff(direction, {pk})}
            for other in _sorted(ids):
                _later(using, _emit, "update", _label(there_model), other, None, None, change)


def _link_diff(direction: str, ids: Iterable[Any]) -> dict[str, list[str]]:
    listed = [str(i) for i in _sorted(ids)]
    return {"added": listed if direction == "added" else [],
            "removed": listed if direction == "removed" else []}  # fmt: skip


def _sorted(ids: Iterable[Any]) -> list[Any]:
    return sorted(ids, key=lambda v: (0, v, "") if isinstance(v, int) else (1, 0, str(v)))


# -- QuerySet.update / bulk_update / bulk_create ---------------------------------------


def _install_queryset_hooks() -> None:
    from django.db.models.query import QuerySet

    for name, wrapper in (("update", _update), ("bulk_update", _bulk_update),
                          ("bulk_create", _bulk_create)):  # fmt: skip
        current = QuerySet.__dict__[name]
        if getattr(current, "_leza_audit", False):
            continue
        _originals[name] = current
        hook = functools.wraps(current)(wrapper)
        setattr(hook, "_leza_audit", True)  # noqa: B010
        setattr(QuerySet, name, hook)


def _write_db(qs: Any) -> Any:
    from django.db import router

    return qs._db or router.db_for_write(qs.model, **qs._hints)


def _update(self: Any, **kwargs: Any) -> Any:
    original = _originals["update"]
    excluded = None if _quiet.get() or self.model is None else audit_spec(self.model)
    if excluded is None or self.query.is_sliced:
        return original(self, **kwargs)
    from django.db import transaction

    db = _write_db(self)
    ids: list[Any] | None = None
    try:  # the rows the update is about to change (a savepoint when in a transaction)
        with transaction.atomic(using=db):
            ids = list(self.using(db).order_by().values_list("pk", flat=True)[: IDS_CAP + 1])
    except Exception:
        log.debug("leza: the rows of an audited update() could not be listed", exc_info=True)
    rows = original(self, **kwargs)
    try:
        audit = _audit()
        if audit is not None:
            statement = {
                "criteria": _criteria(self, db, audit),
                "rows": rows,
                "values": _values(self.model, kwargs, audit),
            }
            if ids is not None and len(ids) <= IDS_CAP:
                statement["ids"] = [str(i) for i in _sorted(ids)]
            change = {"statement": statement}
            _later(db, _emit, "bulk_update", _label(self.model), "*", None, None, change)
    except Exception:
        log.warning("leza: audit capture failed (update)", exc_info=True)
    return rows


def _arguments(name: str, self: Any, args: Any, kwargs: Any) -> dict[str, Any]:
    """The arguments of a call of the original ``QuerySet.<name>``, by parameter name."""
    signature = _signatures.get(name)
    if signature is None:
        signature = _signatures[name] = inspect.signature(_originals[name])
    bound = signature.bind(self, *args, **kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


def _bulk_update(self: Any, *args: Any, **kwargs: Any) -> Any:
    original = _originals["bulk_update"]
    excluded = None if _quiet.get() or self.model is None else audit_spec(self.model)
    if excluded is None:
        return original(self, *args, **kwargs)
    call = _arguments("bulk_update", self, args, kwargs)
    objs, fields = list(call.pop("objs")), call.pop("fields")
    call.pop("self")
    db = _write_db(self)
    model = self.model
    written: list[Any] = []
    before: dict[Any, dict[str, Any]] | None = None
    try:
        named = {model._meta.get_field(name) for name in fields}
        written = [f for f in _fields(model, excluded) if f in named]
        pks = [o.pk for o in objs if o.pk is not None]
        before = {}
        for start in range(0, len(pks), _CHUNK):
            chunk = model._base_manager.using(db).filter(pk__in=pks[start : start + _CHUNK])
            for row in chunk.values("pk", *[f.attname for f in written]):
                before[row["pk"]] = row
    except Exception:
        log.warning("leza: audit capture failed (bulk_update)", exc_info=True)
    token = _quiet.set(True)
    try:
        rows = original(self, objs, fields, **call)
    finally:
        _quiet.reset(token)
    if before:
        try:
            label = _label(model)
            for obj in objs:
                row = before.get(obj.pk)
                if row is None:
                    continue
                old, new = {}, {}
                for f in written:
                    a, b = _value(f, row[f.attname]), _value(f, obj.__dict__.get(f.attname))
                    if a != b:
                        old[f.name], new[f.name] = a, b
                if new:
                    _later(db, _emit, "update", label, obj.pk, old, new)
        except Exception:
            log.warning("leza: audit capture failed (bulk_update)", exc_info=True)
    return rows


def _bulk_create(self: Any, *args: Any, **kwargs: Any) -> Any:
    original = _originals["bulk_create"]
    made = original(self, *args, **kwargs)
    excluded = None if _quiet.get() or self.model is None else audit_spec(self.model)
    if excluded is None:
        return made
    try:
        call = _arguments("bulk_create", self, args, kwargs)
        ignore_conflicts, update_conflicts = call["ignore_conflicts"], call["update_conflicts"]
        db = _write_db(self)
        label = _label(self.model)
        if ignore_conflicts or update_conflicts or any(o.pk is None for o in made):
            # Which rows were inserted (or updated) is not known: one record.
            statement: dict[str, Any] = {
                "rows": len(made),
                "conflicts": "ignore" if ignore_conflicts else "update" if update_conflicts
                else None,
                "ids": [str(i) for i in _sorted(o.pk for o in made if o.pk is not None)],
            }  # fmt: skip
            change = {"statement": statement}
            _later(db, _emit, "bulk_create", label, "*", None, None, change)
        else:
            fields = _fields(self.model, excluded)
            for obj in made:
                _later(db, _emit, "create", label, obj.pk, None, _state(obj, fields))
    except Exception:
        log.warning("leza: audit capture failed (bulk_create)", exc_info=True)
    return made


def _values(model: Any, kwargs: Mapping[str, Any], audit: Audit) -> dict[str, Any]:
    from ..redact import FILTERED

    out: dict[str, Any] = {}
    for name, value in kwargs.items():
        field = model._meta.get_field(name)
        if audit.masks(field.name) or audit.masks(field.attname):
            out[field.name] = FILTERED
        elif field.is_relation and hasattr(value, "_meta"):  # a model instance
            out[field.name] = _value(field, value.pk)
        else:
            out[field.name] = _value(field, value)
    return out


def _criteria(qs: Any, db: Any, audit: Audit) -> str:
    """The queryset's WHERE clause as SQL, with values inline and masked ones filtered."""
    where = qs.query.where
    if not where.children:
        return "(all rows)"
    compiler = qs.query.get_compiler(using=db)
    return _render(where, compiler, audit)


def _render(node: Any, compiler: Any, audit: Audit) -> str:
    from django.core.exceptions import EmptyResultSet, FullResultSet
    from django.db.models.sql.where import WhereNode

    from ..redact import FILTERED

    if isinstance(node, WhereNode):
        parts = []
        for child in node.children:
            try:
                parts.append(_render(child, compiler, audit))
            except EmptyResultSet:
                parts.append("FALSE")
            except FullResultSet:
                parts.append("TRUE")
        text = f" {node.connector} ".join(parts)
        if len(parts) > 1 or (node.negated and not text.startswith("(")):
            text = f"({text})"
        return f"NOT {text}" if node.negated else text
    sql, params = compiler.compile(node)
    if _secret(node, audit):
        return _inline(sql, [_Raw(FILTERED)] * len(params))
    return _inline(sql, params)


class _Raw(str):
    """A value shown as is in rendered SQL."""


def _secret(node: Any, audit: Audit) -> bool:
    """True when a condition's values must not be stored: it reads a masked field,
    or it is SQL whose columns cannot be told (``extra(where=...)``, ``RawSQL``)."""
    from django.db.models import Lookup

    if not isinstance(node, Lookup):
        return True
    stack = [node]
    while stack:
        expr = stack.pop()
        target = getattr(expr, "target", None)
        if target is not None and hasattr(target, "attname"):
            if audit.masks(target.name) or audit.masks(target.attname):
                return True
        elif type(expr).__name__ in ("RawSQL", "ExtraWhere"):
            return True
        sources = getattr(expr, "get_source_expressions", None)
        if sources is not None:
            stack.extend(e for e in sources() if e is not None)
    return False


def _inline(sql: str, params: Iterable[Any]) -> str:
    values = tuple(_literal(p) for p in params)
    try:
        return sql % values
    except (TypeError, ValueError):
        return f"{sql} {list(values)!r}"


def _literal(value: Any) -> str:
    if isinstance(value, _Raw):
        return str(value)
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, (int, float, Decimal)):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(_literal(v) for v in value) + ")"
    plain = _value(None, value)
    return "'" + str(plain).replace("'", "''") + "'"


# -- values ---------------------------------------------------------------------------


def _value(field: Any, value: Any) -> Any:
    """A field's value as stored, JSON-ready, comparable before and after a save."""
    if value is None:
        return None
    if hasattr(value, "resolve_expression"):  # F("n") + 1: the stored value is unknown here
        return str(value)
    if field is not None:
        value = _python(field, value)  # "5" typed into an IntegerField is stored as 5
    if isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            return value.astimezone(timezone.utc).isoformat()
        return _naive(value)
    if isinstance(value, (date, time)):
        return value.isoformat()
    if isinstance(value, Decimal):
        places = getattr(field, "decimal_places", None)
        if isinstance(places, int) and value.is_finite():
            value = value.quantize(Decimal(1).scaleb(-places))
        return str(value)
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "sha256:" + hashlib.sha256(bytes(value)).hexdigest()
    if isinstance(value, (dict, list)):
        return value
    if field is not None and hasattr(field, "upload_to"):  # a FieldFile: the stored name
        return getattr(value, "name", None) or None
    return str(value)


def _python(field: Any, value: Any) -> Any:
    try:
        return field.to_python(value)
    except Exception:
        return value


def _naive(value: datetime) -> str:
    """A naive datetime as Django stores it with ``USE_TZ``: in UTC."""
    from django.conf import settings

    if getattr(settings, "USE_TZ", False):
        from django.utils import timezone as dj_timezone

        try:
            aware = dj_timezone.make_aware(value, dj_timezone.get_default_timezone())
            return str(aware.astimezone(timezone.utc).isoformat())
        except Exception:
            pass
    return value.isoformat()


# -- recording ------------------------------------------------------------------------


def _later(using: Any, fn: Callable[..., None], *args: Any) -> None:
    """Run ``fn(*args)`` when the transaction commits (now, outside a transaction)."""
    from django.db import transaction

    transaction.on_commit(functools.partial(fn, *args), using=using, robust=True)


def _audit() -> Audit | None:
    try:
        from .conf import get_leza

        return get_leza().audit
    except Exception:
        log.error("leza: settings.LEZA is invalid; a model change is NOT audited", exc_info=True)
        return None


def _emit(action: str, entity_type: str, entity_id: Any, before: dict[str, Any] | None,
          after: dict[str, Any] | None, change: dict[str, Any] | None = None) -> None:  # fmt: skip
    """Hand one change to ``leza.audit.record`` (never raises)."""
    try:
        audit = _audit()
        if audit is None:
            return
        audit.record(
            action=action,
            entity_type=entity_type,
            entity_id=entity_id,
            before=before,
            after=after,
            diff_=change,
        )
    except Exception:
        log.error("leza: recording a model change failed", exc_info=True)
