"""Audit of Django's bulk writes: ``QuerySet.update()``, ``bulk_update()`` and
``bulk_create()``, which send no per-row signals (see ``audit.py`` for the records
they produce). The three methods are wrapped once, process-wide, when some model
is audited; the wrappers hand every other model straight to Django.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import logging
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from .audit import audit_spec, audited_fields, label_of, sorted_ids, state_of
from .audit_values import current_audit, emit, on_commit, value_of

if TYPE_CHECKING:
    from ..audit.api import Audit

__all__ = ["IDS_CAP", "install_queryset_hooks"]

log = logging.getLogger("leza_middleware")

#: ``QuerySet.update()``: the matched primary keys are listed up to this many rows.
IDS_CAP = 1000
_CHUNK = 500  # primary keys per query when reading the before state of bulk_update()
# The QuerySet methods before they were wrapped, and their signatures.
_originals: dict[str, Callable[..., Any]] = {}
_signatures: dict[str, inspect.Signature] = {}
# Set while bulk_update() runs: the update() calls it makes are not recorded again.
_quiet: contextvars.ContextVar[bool] = contextvars.ContextVar("leza_audit_quiet", default=False)


def install_queryset_hooks() -> None:
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
        audit = current_audit()
        if audit is not None:
            statement = {
                "criteria": _criteria(self, db, audit),
                "rows": rows,
                "values": _values(self.model, kwargs, audit),
            }
            if ids is not None and len(ids) <= IDS_CAP:
                statement["ids"] = [str(i) for i in sorted_ids(ids)]
            change = {"statement": statement}
            on_commit(db, emit, "bulk_update", label_of(self.model), "*", None, None, change)
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
        written = [f for f in audited_fields(model, excluded) if f in named]
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
            label = label_of(model)
            for obj in objs:
                row = before.get(obj.pk)
                if row is None:
                    continue
                old, new = {}, {}
                for f in written:
                    a, b = value_of(f, row[f.attname]), value_of(f, obj.__dict__.get(f.attname))
                    if a != b:
                        old[f.name], new[f.name] = a, b
                if new:
                    on_commit(db, emit, "update", label, obj.pk, old, new)
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
        label = label_of(self.model)
        if ignore_conflicts or update_conflicts or any(o.pk is None for o in made):
            # Which rows were inserted (or updated) is not known: one record.
            statement: dict[str, Any] = {
                "rows": len(made),
                "conflicts": "ignore" if ignore_conflicts else "update" if update_conflicts
                else None,
                "ids": [str(i) for i in sorted_ids(o.pk for o in made if o.pk is not None)],
            }  # fmt: skip
            change = {"statement": statement}
            on_commit(db, emit, "bulk_create", label, "*", None, None, change)
        else:
            fields = audited_fields(self.model, excluded)
            for obj in made:
                on_commit(db, emit, "create", label, obj.pk, None, state_of(obj, fields))
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
            out[field.name] = value_of(field, value.pk)
        else:
            out[field.name] = value_of(field, value)
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
    plain = value_of(None, value)
    return "'" + str(plain).replace("'", "''") + "'"
