"""Telling "storage refused these events" from "storage is down", and finding
the few events of a batch it refuses by writing the batch in halves."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..events import Event
from ..storage.routed import PartialWriteError

__all__ = ["Split", "refused_by_value", "refused_for_content", "split_refused"]

# DB-API names for "storage refused what it was given" (NUL in PostgreSQL text,
# a duplicate key, a wrong type) as opposed to "storage is not there". The first
# two are about the values themselves; ProgrammingError may also be the schema.
_VALUE_ERRORS = frozenset({"DataError", "IntegrityError"})
_CONTENT_ERRORS = _VALUE_ERRORS | {"ProgrammingError"}
# Failed part writes allowed before any part was taken (a few bad events in a
# batch of 512 are found in well under this).
_MAX_BLIND_SPLITS = 24


def _named(exc: BaseException, names: frozenset[str]) -> bool:
    return any(cls.__name__ in names for cls in type(exc).__mro__)


def _cause(exc: BaseException) -> BaseException:
    # Storage by kind wraps what its failed backend raised.
    return exc.cause if isinstance(exc, PartialWriteError) else exc


def refused_for_content(exc: BaseException) -> bool:
    """Whether storage refused what it was given rather than failed to work."""
    exc = _cause(exc)
    return isinstance(exc, (ValueError, TypeError)) or _named(exc, _CONTENT_ERRORS)


def refused_by_value(exc: BaseException) -> bool:
    """Whether the refusal is about the values themselves (an unencodable
    string, NUL in PostgreSQL text): no other write is needed to prove it."""
    exc = _cause(exc)
    return isinstance(exc, (ValueError, TypeError)) or _named(exc, _VALUE_ERRORS)


@dataclass
class Split:
    """What :func:`split_refused` made of a refused batch."""

    written: list[Event] = field(default_factory=list)
    #: (event, why) of each single event storage still refused for its content
    refused: list[tuple[Event, Exception]] = field(default_factory=list)
    #: not tried: storage failed for another reason (``error``) first
    untried: list[Event] = field(default_factory=list)
    error: Exception | None = None

    @property
    def droppable(self) -> list[Event]:
        """Refused events that can never be stored: refused by value, or refused
        while other parts were taken (so storage itself works)."""
        return [e for e, why in self.refused if self.written or refused_by_value(why)]

    @property
    def kept(self) -> list[Event]:
        """What is left to retry or spill: refusals not proven, and the untried."""
        gone = {id(e) for e in self.droppable}
        return [e for e, _ in self.refused if id(e) not in gone] + self.untried

    @property
    def first_refusal(self) -> Exception | None:
        return self.refused[0][1] if self.refused else None


def split_refused(
    write: Callable[[list[Event]], None], events: list[Event], error: Exception
) -> Split:
    """Write ``events`` in halves, then quarters…, after storage refused them whole
    with ``error``. Parts are written in order, so the stored events keep theirs."""
    out = Split()
    if len(events) == 1:
        out.refused.append((events[0], error))  # refused alone already: nothing to split
        return out
    half = len(events) // 2
    parts = [events[half:], events[:half]]  # the first half is popped first
    failures = 0
    while parts:
        part = parts.pop()
        try:
            write(part)
        except Exception as exc:
            failures += 1
            # Storage that refuses everything (a table gone, a type it never
            # takes) is failing, not picky: give up before a write per event.
            if not refused_for_content(exc) or (not out.written and failures > _MAX_BLIND_SPLITS):
                out.untried = part + [e for p in reversed(parts) for e in p]
                out.error = exc
                return out
            if len(part) == 1:
                out.refused.append((part[0], exc))
            else:
                half = len(part) // 2
                parts += (part[half:], part[:half])
            continue
        out.written += part
    return out
