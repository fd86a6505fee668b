"""Automatic audit of SQLAlchemy / SQLModel changes: ``leza.audit.watch(...)``.

    leza.audit.watch(SessionLocal)                 # a sessionmaker, Session class or session
    leza.audit.watch(engine, models=[Role, User])  # Core UPDATE/DELETE on an engine too

At every flush of a watched session each changed object becomes one audit
record, attributed to the running request's performer:

* inserts → ``create`` with the new state;
* updates → ``update`` with the changed columns only (before and after);
* deletes → ``delete`` with the last state;
* many-to-many collections (``relationship(secondary=...)``) → part of the
  owner's ``update``: ``{"<relationship>": {"added": [ids], "removed": [ids]}}``,
  on each side that has the relationship mapped (a backref moves both);
* bulk ``update()`` / ``delete()`` statements, through the session or on the
  engine → one ``bulk_update`` / ``bulk_delete`` record naming the table, the
  statement's criteria and the number of rows.

The entity type is the table name; the id is the primary key (joined with
``:`` when composite). ``models`` narrows it down to some classes or tables.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import Table, event, inspect, literal_column, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql import Delete, Update, visitors
from sqlalchemy.sql.elements import BinaryExpression, BindParameter, ColumnClause, ColumnElement
from sqlalchemy.sql.visitors import ExternallyTraversible

from ..redact import FILTERED

if TYPE_CHECKING:
    from .api import Audit

log = logging.getLogger("leza_middleware.audit")

__all__ = ["Watch", "watch"]


@dataclass
class Watch:
    """What :func:`watch` installed; :meth:`stop` removes it."""

    listeners: list[tuple[Any, str, Any]] = field(default_factory=list)

    def stop(self) -> None:
        for target, name, fn in self.listeners:
            if event.contains(target, name, fn):
                event.remove(target, name, fn)
        self.listeners.clear()


def watch(audit: Audit, target: Any, models: Iterable[Any] | None = None) -> Watch:
    tables = _tables(models)
    handle = Watch()

    def wanted(table: Any) -> bool:
        return tables is None or getattr(table, "name", None) in tables

    def listen(on: Any, name: str, fn: Any) -> None:
        event.listen(on, name, fn)
        handle.listeners.append((on, name, fn))

    if isinstance(target, Engine):

        def before_execute(conn: Any, clause: Any, multiparams: Any, params: Any,
                           options: Any) -> None:  # fmt: skip
            if isinstance(clause, (Update, Delete)) and wanted(clause.table):
                conn.info[_BULK_IDS] = _matched_ids(conn.execute, clause)

        def after_execute(conn: Any, clause: Any, multiparams: Any, params: Any,
                          options: Any, result: Any) -> None:  # fmt: skip
            if isinstance(clause, (Update, Delete)) and wanted(clause.table):
                ids = conn.info.pop(_BULK_IDS, None)
                _record_bulk(audit, clause, result.rowcount, ids)

        listen(target, "before_execute", before_execute)
        listen(target, "after_execute", after_execute)
        return handle

    if not isinstance(target, (Session, sessionmaker)) and not (
        isinstance(target, type) and issubclass(target, Session)
    ):
        raise TypeError(
            f"watch() takes a Session, a sessionmaker, a Session class or an Engine, "
            f"not {type(target).__name__}"
        )

    def after_flush(session: Session, flush_context: Any) -> None:
        changes: dict[tuple[str, str], _Change] = {}
        for objects, action in ((session.new, "create"), (session.dirty, "update"),
                                (session.deleted, "delete")):  # fmt: skip
            for obj in list(objects):
                if wanted(_table_of(obj)):
                    _collect(changes, obj, action, wanted)
        for change in changes.values():
            change.record(audit)

    def do_orm_execute(state: Any) -> Any:
        statement = state.statement
        if not (state.is_update or state.is_delete) or not wanted(statement.table):
            return None
        ids = _matched_ids(state.session.execute, statement)
        result = state.invoke_statement()
        _record_bulk(audit, statement, result.rowcount, ids)
        return result

    listen(target, "after_flush", after_flush)
    listen(target, "do_orm_execute", do_orm_execute)
    return handle


# -- what a change looks like -----------------------------------------------------------


def _tables(models: Iterable[Any] | None) -> frozenset[str] | None:
    if models is None:
        return None
    names = set()
    for model in models:
        if isinstance(model, str):
            names.add(model)
        elif isinstance(model, Table):
            names.add(model.name)
        else:
            names.add(inspect(model).local_table.name)
    return frozenset(names)


def _table_of(obj: Any) -> Any:
    return inspect(obj).mapper.local_table


def _entity_id(state: Any) -> str:
    # Not state.identity: a row inserted by this very flush is not in the
    # identity map yet when after_flush runs, but its primary key is set.
    obj = state.obj()
    identity = state.identity if obj is None else state.mapper.primary_key_from_instance(obj)
    if identity is None:  # pragma: no cover - flushed objects have one
        return "?"
    return ":".join(str(part) for part in identity)


@dataclass
class _Change:
    """One entity's change in one flush: its columns and its many-to-many links."""

    entity_type: str
    entity_id: str
    action: str
    before: dict[str, Any] = field(default_factory=dict)
    after: dict[str, Any] = field(default_factory=dict)
    links: dict[str, dict[str, set[str]]] = field(default_factory=dict)

    def link(self, key: str, direction: str, ids: Iterable[str]) -> None:
        entry = self.links.setdefault(key, {"added": set(), "removed": set()})
        entry[direction].update(ids)

    def record(self, audit: Audit) -> None:
        links = {
            key: {"added": sorted(v["added"], key=str), "removed": sorted(v["removed"], key=str)}
            for key, v in self.links.items()
            if v["added"] or v["removed"]
        }
        if self.action == "update" and not (self.before or self.after or links):
            return
        audit.record(
            action=self.action,
            entity_type=self.entity_type,
            entity_id=self.entity_id,
            before=self.before if self.action != "create" else None,
            after=self.after if self.action != "delete" else None,
            diff_=links or None,
        )


def _collect(changes: dict[tuple[str, str], _Change], obj: Any, action: str, wanted: Any) -> None:
    state = inspect(obj)
    mapper = state.mapper
    change = _change_for(changes, state, action)
    for attr in mapper.column_attrs:
        history = state.attrs[attr.key].history
        if action == "create":
            change.after[attr.key] = getattr(obj, attr.key)
        elif action == "delete":
            change.before[attr.key] = _current(history)
        elif history.has_changes():
            change.before[attr.key] = history.deleted[0] if history.deleted else None
            change.after[attr.key] = history.added[0] if history.added else None
    own_id = change.entity_id
    for rel in mapper.relationships:
        if rel.secondary is None:
            continue  # one-to-many / many-to-one show as the other row's columns
        history = state.attrs[rel.key].history
        for direction, related in (("added", history.added), ("removed", history.deleted)):
            if not related:
                continue
            change.link(rel.key, direction, _ids(related))
            # The other side changed too, whether or not its collection was
            # loaded (then it is not "dirty" itself): record it there as well.
            for reverse in rel._reverse_property:
                for other in related:
                    other_state = inspect(other)
                    if wanted(other_state.mapper.local_table):
                        _change_for(changes, other_state, "update").link(
                            reverse.key, direction, [own_id]
                        )


def _change_for(changes: dict[tuple[str, str], _Change], state: Any, action: str) -> _Change:
    key = (state.mapper.local_table.name, _entity_id(state))
    change = changes.get(key)
    if change is None:
        change = changes[key] = _Change(key[0], key[1], action)
    elif action != "update":
        change.action = action  # a create or delete outranks a link-only update
    return change


def _current(history: Any) -> Any:
    if history.unchanged:
        return history.unchanged[0]
    if history.deleted:
        return history.deleted[0]
    return history.added[0] if history.added else None


def _ids(objects: Iterable[Any]) -> list[str]:
    out = []
    for obj in objects:
        try:
            out.append(_entity_id(inspect(obj)))
        except Exception:  # pragma: no cover - a non-mapped item in a collection
            out.append(str(obj))
    return out


#: Bulk statements name at most this many matched rows (the count is always exact).
MAX_BULK_IDS = 1000
_BULK_IDS = "leza_bulk_ids"


def _matched_ids(execute: Any, statement: Any) -> list[str] | None:
    """The primary keys a bulk statement is about to touch, read just before it
    runs, so each entity's history can show the bulk change; None if unknown."""
    try:
        keys = list(statement.table.primary_key.columns)
        if not keys:
            return None
        query = select(*keys).limit(MAX_BULK_IDS)
        if statement.whereclause is not None:
            query = query.where(statement.whereclause)
        return [":".join(str(part) for part in row) for row in execute(query)]
    except Exception:  # a statement select() cannot mirror: record the count only
        log.debug("leza: could not list the rows of a bulk statement", exc_info=True)
        return None


_FILTERED_SQL: ColumnElement[Any] = literal_column(f"'{FILTERED}'")
_FILTERED_SQL_LIST: ColumnElement[Any] = literal_column(f"('{FILTERED}')")


def _secret_values_filtered(audit: Audit, criteria: Any) -> Any:
    """``criteria`` with the values compared to a secret column (``password =
    'x'``, ``lower(password) LIKE 'x%'``, ``pin IN (1, 2)``) replaced by
    ``[Filtered]``, so that rendering it inline stores none of them."""

    def touches_secret(expr: Any) -> bool:
        return any(
            isinstance(e, ColumnClause) and audit.masks(str(e.name)) for e in visitors.iterate(expr)
        )

    def bind(element: ExternallyTraversible, **kw: Any) -> ExternallyTraversible | None:
        if isinstance(element, BindParameter):
            return _FILTERED_SQL_LIST if element.expanding else _FILTERED_SQL
        return None

    def binary(element: ExternallyTraversible, **kw: Any) -> ExternallyTraversible | None:
        if isinstance(element, BinaryExpression) and touches_secret(element):
            return visitors.replacement_traverse(element, {}, bind)
        return None

    return visitors.replacement_traverse(criteria, {}, binary)


def _record_bulk(audit: Audit, statement: Any, rowcount: int, ids: list[str] | None) -> None:
    table = statement.table
    criteria = statement.whereclause
    try:
        shown = _secret_values_filtered(audit, criteria)
        text = str(shown.compile(compile_kwargs={"literal_binds": True}))
    except Exception:  # values that cannot be rendered inline
        text = "" if criteria is None else str(criteria)
    values: dict[str, Any] = {}
    if isinstance(statement, Update):
        for column, value in (statement._values or {}).items():
            name = getattr(column, "key", None) or str(column)
            rendered = getattr(value, "value", value)
            values[name] = FILTERED if audit.masks(name) else rendered
    change: dict[str, Any] = {"criteria": text or "(all rows)", "rows": rowcount}
    if values:
        change["values"] = values
    if ids is not None:
        change["ids"] = ids
    audit.record(
        action="bulk_update" if isinstance(statement, Update) else "bulk_delete",
        entity_type=table.name,
        entity_id="*",
        diff_={"statement": change},
    )
