"""Identifiers: request ids (request path) and time-sortable event ids (recorder).

Both are built from a per-process random prefix plus a counter instead of a
``uuid4()`` per request: uuid4 reads the OS random source every call (~2 µs),
which alone would cost ~4 % of a hello-world's throughput. The prefix is
re-drawn after ``fork`` so worker processes never share a sequence.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Callable, Iterable, Iterator
from itertools import repeat
from operator import and_

__all__ = [
    "REQUEST_IDS_BYTES",
    "REQUEST_IDS_STR",
    "new_event_id",
    "new_event_ids",
    "new_request_id",
    "new_request_id_bytes",
    "parse_incoming_request_id",
]

_counter: Iterator[int]
_prefix: bytes
#: The request ids to come, one iterator in a one-element list each (replaced in
#: place after ``fork``): ``next(REQUEST_IDS_BYTES[0])`` makes an id in C, with no
#: Python frame and one ``%`` formatting (the request path; ~0.1 µs less than
#: a function formatting the prefix and the counter together).
REQUEST_IDS_BYTES: list[Iterator[bytes]] = []
REQUEST_IDS_STR: list[Iterator[str]] = []
_event_counter: Iterator[int]
_event_prefix: str
_event_format: Callable[[int, int], str]


def _reseed() -> None:
    global _counter, _prefix, _event_counter, _event_prefix, _event_format
    # 80 random bits per process + a 48-bit counter: 32 hex chars, uuid-sized.
    # (The counter starts at a random 24-bit value; 2**48 requests per process
    # before it would need a 13th digit.)
    _prefix = os.urandom(10).hex().encode()
    _counter = itertools.count(int.from_bytes(os.urandom(3), "big"))
    # Both kinds draw from the one counter: an id is never made twice. The
    # prefix is hex, so it holds no "%" of its own.
    REQUEST_IDS_BYTES[:] = [map((_prefix + b"%012x").__mod__, _counter)]
    REQUEST_IDS_STR[:] = [map((_prefix.decode() + "%012x").__mod__, _counter)]
    _event_prefix = os.urandom(6).hex()
    _event_counter = itertools.count()
    _event_format = ("{:013x}" + _event_prefix + "{:06x}").format


_reseed()
os.register_at_fork(after_in_child=_reseed)


def new_request_id() -> str:
    """A fresh 32-hex-character request id, unique across processes."""
    return next(REQUEST_IDS_STR[0])


def new_request_id_bytes() -> bytes:
    """:func:`new_request_id` as bytes, ready for a response header."""
    return next(REQUEST_IDS_BYTES[0])


# What we accept from a client: enough for uuids, ULIDs, AWS/GCP trace ids and
# the like, nothing that could smuggle markup or newlines into logs.
_REQUEST_ID_RE = re.compile(rb"[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}")
_TRACEPARENT_RE = re.compile(rb"[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")
_ZERO_TRACE = b"0" * 32


def parse_incoming_request_id(
    x_request_id: bytes | None, traceparent: bytes | None
) -> bytes | None:
    """Reuse a valid incoming ``X-Request-ID``, else the W3C trace id, else None."""
    if x_request_id is not None and _REQUEST_ID_RE.fullmatch(x_request_id):
        return x_request_id
    if traceparent is not None:
        m = _TRACEPARENT_RE.fullmatch(traceparent.strip())
        if m is not None and m.group(1) != _ZERO_TRACE and not traceparent.startswith(b"ff"):
            return m.group(1)
    return None


def new_event_id(ts_us: int) -> str:
    """A time-sortable event id: 13 hex digits of µs timestamp + process prefix + counter.

    Lexical order equals time order (to the µs); ids from different processes
    never collide (48 random bits per process on top of the timestamp).
    Called on the recorder thread.
    """
    return _event_format(ts_us, next(_event_counter) & 0xFFFFFF)


def new_event_ids(ts_us: Iterable[int]) -> Iterator[str]:
    """:func:`new_event_id` over a column of timestamps (runs in C via ``map``)."""
    return map(_event_format, ts_us, map(and_, _event_counter, repeat(0xFFFFFF)))
