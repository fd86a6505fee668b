"""What every event shares: the base class, times, proxy chains, dimension keys."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any, ClassVar

from ..performer import Performer

__all__ = [
    "PRIORITY_ACTIONS",
    "Event",
    "decode_chain",
    "encode_chain",
    "iso_from_us",
    "iso_ms_from_us",
    "performer_key",
    "ua_key",
    "us_from_iso",
]

# Actions whose events must never be dropped for lack of memory: they go to the
# spill file instead (DESIGN.md, reliability contract).
PRIORITY_ACTIONS = frozenset({"login", "logout", "login_failed", "session_start", "session_end"})


def iso_from_us(ts_us: int) -> str:
    """UTC ISO 8601 with microseconds and a ``Z`` suffix."""
    seconds, micros = divmod(ts_us, 1_000_000)
    dt = datetime.fromtimestamp(seconds, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{micros:06d}Z"


def iso_ms_from_us(ts_us: int) -> str:
    """UTC ISO 8601 with milliseconds, as the session record shows times."""
    return iso_from_us(ts_us)[:-4] + "Z"


def us_from_iso(value: str) -> int:
    dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    delta = dt - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def ua_key(user_agent: str) -> str:
    """Stable key of a User-Agent string (the same in every process and host)."""
    return hashlib.blake2b(user_agent.encode("utf-8", "surrogatepass"), digest_size=10).hexdigest()


def performer_key(performer: Performer) -> str:
    """Stable key of one performer value: a hash of its canonical JSON."""
    return hashlib.blake2b(performer.to_json().encode("utf-8"), digest_size=16).hexdigest()


def encode_chain(chain: Sequence[str]) -> str:
    """A proxy chain as one text value: comma-joined, JSON when that is ambiguous."""
    if not chain:
        return ""
    text = ",".join(chain)
    # JSON when an element holds a comma, when it would read back as JSON, or
    # when the chain is [""] (which would read back as empty).
    if text.count(",") != len(chain) - 1 or text.startswith("[") or not text:
        return json.dumps(list(chain), ensure_ascii=False)
    return text


def decode_chain(text: str | None) -> tuple[str, ...]:
    if not text:
        return ()
    if text.startswith("["):
        return tuple(json.loads(text))
    return tuple(text.split(","))


class Event:
    """Base of every recorded event: an id, a kind, a UTC time in µs.

    The kinds are declared as ``@dataclass(slots=True, kw_only=True)``, except
    :class:`~.access.AccessEvent`, whose fields are read from one row tuple
    (see its docstring; bench/bench_events.py measures why).
    """

    __slots__ = ()
    kind: ClassVar[str]
    id: str
    ts: int
    action: str

    def to_dict(self) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def priority(self) -> bool:
        """True when this event may be spilled but never dropped."""
        return self.action in PRIORITY_ACTIONS
