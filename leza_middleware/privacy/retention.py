"""``retention``: old rows purged per kind, in batches, by the recorder's periodic tick.

A slice at a time (:meth:`Retention.tick`), so writing never stalls; audit
rows go through the chain-preserving purge (``leza.audit.purge_batches``).
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import LezaConfigError
from ..storage.capabilities import Capability, require_for_setting
from ..storage.routed import BackendPaused, backend_of, is_paused
from .kinds import by_kind

if TYPE_CHECKING:
    from ..storage.base import Storage

__all__ = [
    "DEFAULT_RETENTION",
    "RETENTION_KINDS",
    "Retention",
    "effective_retention",
    "parse_duration",
    "parse_retention",
]

log = logging.getLogger("leza_middleware")

RETENTION_KINDS = ("access", "session", "audit", "log", "advisory", "check", "traffic")
#: Retention applied unless the setting names the kind: traffic rollups (kept
#: by SQL and memory storage) outlive the raw events' retention by default.
#: ``{"traffic": "off"}`` keeps them forever.
DEFAULT_RETENTION: dict[str, int] = {"traffic": 400 * 86_400}
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", re.IGNORECASE)


def parse_duration(label: str, value: Any) -> float:
    """Seconds from ``90d``, ``12h``, ``30m``, ``2w``, ``45s`` or a number of seconds."""
    if isinstance(value, bool):
        raise LezaConfigError(f"{label} must be a duration such as 90d, got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        m = _DURATION.fullmatch(str(value))
        if m is None:
            raise LezaConfigError(
                f"{label}: invalid duration {value!r}; use a number and a unit "
                "(90d, 12h, 30m, 2w, 45s) or seconds"
            )
        seconds = float(m.group(1)) * _UNITS[(m.group(2) or "s").lower()]
    if not 0 < seconds < float("inf"):
        raise LezaConfigError(f"{label}: a duration must be more than 0, got {value!r}")
    return seconds


def parse_retention(label: str, value: Any) -> tuple[tuple[str, int], ...]:
    """``retention``: ``{kind: duration}`` (or ``"access=90d,log=30d"``) as sorted pairs."""
    if value is None or value is False or value == "":
        return ()
    expected = "map event kinds to durations, e.g. {'access': '90d'}"
    mapping = by_kind(label, value, RETENTION_KINDS, expected)
    out: dict[str, int] = {}
    for kind, duration in mapping.items():
        if duration in (None, "", "off", False):
            if kind in DEFAULT_RETENTION:
                out[kind] = 0  # kept forever, instead of the default
            continue
        out[kind] = max(1, int(parse_duration(f"{label}[{kind!r}]", duration)))
    return tuple(sorted(out.items()))


def effective_retention(setting: Sequence[tuple[str, int]], keeps_rollups: bool) -> dict[str, int]:
    """Seconds per kind to purge: the setting over :data:`DEFAULT_RETENTION`,
    without kinds kept forever (0) and without ``traffic`` for a storage that
    keeps no rollups."""
    out = {**DEFAULT_RETENTION, **dict(setting)}
    if not keeps_rollups:
        out.pop("traffic", None)
    return {kind: keep for kind, keep in out.items() if keep > 0}


def check_retention(setting: Sequence[tuple[str, int]], storage: Storage) -> None:
    """At ``Leza(...)``: a retention the app configured needs a storage that can
    purge that kind (LezaConfigError naming ``retention[kind]`` otherwise). The
    default traffic retention is dropped instead for a backend without it, and
    so is any ``traffic`` retention for one that keeps no rollups (nothing to
    purge there)."""
    whole = storage
    for kind, keep in setting:
        label = f"retention[{kind!r}]"
        if keep <= 0:
            continue
        storage = backend_of(whole, kind)  # storage by kind: the store that keeps it
        if kind == "audit":
            require_for_setting(storage, Capability.AUDIT_CHAIN, label)
            require_for_setting(storage, Capability.AUDIT_PURGE, label)
        elif kind != "traffic" or storage.supports(Capability.ROLLUPS):
            require_for_setting(storage, Capability.PURGE, label)


# Work per tick: batches this size, at most this share of the recorder's time.
_PURGE_BATCH = 1000
_PURGE_SLICE = 0.1  # seconds of purging before the recorder writes again
_PURGE_DUTY = 0.1  # of wall time
_RETRY_AFTER = 300.0  # seconds before a failed purge is tried again


class Retention:
    """Each kind's purge, due every ``interval`` seconds, run a slice per tick.

    ``setting``: the ``retention`` setting's (kind, seconds) pairs;
    ``purge_audit(before, batch_size)``: the audit chain's own purge
    (``leza.audit.purge_batches``); every other kind is purged by ``storage``.
    """

    def __init__(
        self,
        setting: Sequence[tuple[str, int]],
        interval: float,
        storage: Storage,
        purge_audit: Callable[[int, int], Iterator[int]],
    ) -> None:
        traffic = backend_of(storage, "traffic")
        self.kinds: dict[str, int] = effective_retention(
            setting, traffic.supports(Capability.ROLLUPS) and traffic.supports(Capability.PURGE)
        )
        self.interval = interval
        self._storage = storage
        self._purge_audit = purge_audit
        self._reset()

    def _reset(self) -> None:
        now = time.monotonic()
        # Workers started together spread their first purge (each purges:
        # deletes are idempotent, the later ones find little to do).
        delay = random.uniform(0, min(60.0, self.interval))
        self._due: dict[str, float] = dict.fromkeys(self.kinds, now + delay)
        self._running: dict[str, Iterator[int]] = {}
        self._next_slice = 0.0
        self._warned: set[str] = set()
        self.purged: dict[str, int] = dict.fromkeys(self.kinds, 0)

    def after_fork(self) -> None:
        self._reset()  # a purge in flight belongs to the parent

    @property
    def running(self) -> bool:
        """Whether a purge is under way (carried on at the next tick)."""
        return bool(self._running)

    def tick(self) -> None:
        """Purge what is due, a slice at a time (the recorder writes in between)."""
        if not self.kinds:
            return
        now = time.monotonic()
        if now < self._next_slice:
            return
        deadline = now + _PURGE_SLICE
        for kind, keep in self.kinds.items():
            if time.monotonic() >= deadline:
                break
            batches = self._running.get(kind)
            if batches is None and now < self._due[kind]:
                continue
            if is_paused(self._storage, kind):
                continue  # its backend failed (storage by kind): the purge waits for it
            finished, failed = False, False
            try:
                if batches is None:  # (the audit purge reads its marks here)
                    batches = self._running[kind] = self._purge(kind, keep)
                while time.monotonic() < deadline:
                    self.purged[kind] += next(batches)
            except StopIteration:
                finished = True
            except BackendPaused:  # its backend failed now: reported once, by the routed storage
                finished = failed = True
            except Exception as exc:  # never let a purge break the recorder
                finished = failed = True
                if kind not in self._warned:  # once per failing spell, not per attempt
                    self._warned.add(kind)
                    log.warning("leza: retention purge of %s failed: %s", kind, exc)
            if finished:  # else the slice is used up: carry on at the next tick
                self._running.pop(kind, None)
                if failed:  # tried again soon, not a whole interval later
                    self._due[kind] = time.monotonic() + min(self.interval, _RETRY_AFTER)
                else:
                    self._warned.discard(kind)
                    self._due[kind] = time.monotonic() + self.interval
        spent = time.monotonic() - now
        self._next_slice = time.monotonic() + spent * (1 - _PURGE_DUTY) / _PURGE_DUTY

    def _purge(self, kind: str, keep: int) -> Iterator[int]:
        before = time.time_ns() // 1000 - keep * 1_000_000
        if kind == "audit":
            return self._purge_audit(before, _PURGE_BATCH)
        return self._storage.purge_batches(kind, before, _PURGE_BATCH)

    def run(self) -> dict[str, int]:
        """Purge every kind with a retention now, to the end (CLI, tests, cron)."""
        out: dict[str, int] = {}
        for kind, keep in self.kinds.items():
            out[kind] = sum(self._purge(kind, keep))
        return out
