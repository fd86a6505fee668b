"""Access batches encoded straight into ClickHouse's Native format.

clickhouse-driver serialises a column value by value in Python (a ``Nullable``
column walks its values twice, a ``String`` one encodes each value), which cost
~4 µs of the ~6 µs an access event took to write (bench/bench_clickhouse.py).
Most of an access row repeats: the action, method, route, reason, host and
app are a handful of strings, and the device, network and performer are a few
hundred shared objects. So a column here is built with C-level passes
(``map``, ``zip``, ``bytes.join``), its repeated values encoded once and kept:

* strings that repeat (``_REPEATING``): each distinct value's length-prefixed
  UTF-8 kept in a bounded dict per column, the column one ``join`` of lookups;
* strings that do not (ids, endpoints, addresses): joined with their one-byte
  length prefixes as one ``str``, encoded once, when every value is ASCII and
  shorter than 128 bytes (an id, an address), else encoded one by one;
* integers: one ``array`` each;
* the device, network and performer: their JSON's encoding kept per object
  (by identity, holding the object so its id is never reused).

A batch is encoded in chunks of rows that stay in the CPU's cache (the row
tuples are read once per column: over a whole 50,000-row batch each pass
missed the cache, 3x slower). The chunks' pieces are sent as they are, in
column order, not joined into one packet first.

Anything unexpected (a value of the wrong type, an out-of-range integer) raises
:class:`NotEncodable`, and the caller hands the batch to the driver instead,
whose own checks and errors then apply as before.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Callable, Iterator, Sequence
from functools import cache
from itertools import chain, repeat
from operator import attrgetter, is_, itemgetter, truth
from typing import Any

__all__ = ["AccessEncoder", "NativeBlock", "NotEncodable"]

#: Rows encoded at a time: their tuples and values stay in the CPU's cache.
CHUNK = 512
#: Distinct values kept per column (cleared when full: a cache, never a leak).
_KEEP = 4096
#: The access row's columns whose values repeat across events (kept encoded).
_REPEATING = frozenset({
    "action", "method", "route", "outcome", "reason", "peer_ip", "scheme", "host", "app",
    "device_key", "geo_key", "performer_id", "performer_key",
})  # fmt: skip
_INT_CODES = {"Int64": "q", "Int32": "i"}
_BIG_ENDIAN = sys.byteorder == "big"


class NotEncodable(Exception):
    """A value this encoder does not take: the driver writes the batch instead."""


@cache
def _varints() -> tuple[bytes, ...]:
    """LEB128 (ClickHouse's VarUInt) of 0..16383: one or two bytes each."""
    return tuple(
        bytes((n,)) if n < 0x80 else bytes(((n & 0x7F) | 0x80, n >> 7)) for n in range(0x4000)
    )


def varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def binary_str(text: str) -> bytes:
    data = text.encode()
    return varint(len(data)) + data


_CHARS = tuple(chr(n) for n in range(0x80))  # a one-byte varint, as a character
_EMPTY_FOR_NONE = {None: ""}
_SECOND = itemgetter(1)


class _Kept(dict[Any, bytes]):
    """Length-prefixed UTF-8 of the strings seen, per column; a miss encodes."""

    __slots__ = ("nullable",)

    def __init__(self, nullable: bool) -> None:
        super().__init__()
        self.nullable = nullable
        if nullable:
            self[None] = b"\x00"  # a null's place holds an empty string

    def __missing__(self, value: Any) -> bytes:
        if not isinstance(value, str):  # None in a non-Nullable column, a number, …
            raise NotEncodable(f"{type(value).__name__} in a String column")
        try:
            data = value.encode()
        except UnicodeEncodeError as exc:  # a lone surrogate
            raise NotEncodable(str(exc)) from None
        encoded = varint(len(data)) + data
        if len(self) >= _KEEP:
            self.clear()
            if self.nullable:
                self[None] = b"\x00"
        self[value] = encoded
        return encoded


def _strings(values: Sequence[Any], nullable: bool) -> bytes:
    """A String column of values that seldom repeat (None as '' when nullable)."""
    try:
        if nullable:
            nones = values.count(None)
            if nones == len(values):
                return b"\x00" * nones
            if nones:
                values = list(map(_EMPTY_FOR_NONE.get, values, values))
        lengths = list(map(len, values))
        longest = max(lengths, default=0)
        if longest < 0x80 and lengths.count(longest) == len(lengths):
            # All of one length (ids): one join with that length as the separator.
            mark = _CHARS[longest]
            text = mark + mark.join(values) if values else ""
            if text.isascii():
                return text.encode()
        elif longest < 0x80:
            # Each value behind its length as one character: one str, encoded once.
            marks = map(_CHARS.__getitem__, lengths)
            text = "".join(chain.from_iterable(zip(marks, values, strict=True)))
            if text.isascii():
                return text.encode()
        parts = list(map(str.encode, values))
        table = _varints()
        try:
            heads = map(table.__getitem__, map(len, parts))
            return b"".join(chain.from_iterable(zip(heads, parts, strict=True)))
        except IndexError:  # a value of 16 KiB or more
            return b"".join(varint(len(p)) + p for p in parts)
    except (TypeError, UnicodeEncodeError) as exc:  # not a str; a lone surrogate
        raise NotEncodable(str(exc)) from None


def _integers(values: Sequence[Any], code: str) -> bytes:
    try:
        packed = array(code, values)
    except (TypeError, OverflowError) as exc:
        raise NotEncodable(str(exc)) from None
    if _BIG_ENDIAN:
        packed.byteswap()
    return packed.tobytes()


def _nulls(values: Sequence[Any]) -> bytes:
    """The null map of a Nullable column: a byte per value, 1 for a null."""
    nones = values.count(None)
    if nones == 0 or nones == len(values):
        return (b"\x01" if nones else b"\x00") * len(values)
    return bytes(map(is_, values, repeat(None)))


class _Blobs:
    """Length-prefixed UTF-8 JSON of shared objects (a device, a network, a
    performer), kept by identity. An entry holds its object, so the id is not
    reused while the entry lives; bounded (a new dict when full: a thread still
    reading the old one sees consistent entries)."""

    __slots__ = ("_encode", "_of")

    def __init__(self, encode: Callable[[Any], str]) -> None:
        self._encode = encode
        self._of = self._empty()

    @staticmethod
    def _empty() -> dict[int, tuple[Any, bytes]]:
        return {id(None): (None, b"\x00")}  # a null's place holds an empty string

    def column(self, objects: Sequence[Any]) -> tuple[bytes, bytes]:
        """The column's null map and values."""
        ids = list(map(id, objects))
        # By id: == on the objects would call their (Python) __eq__.
        nones = ids.count(id(None))
        if nones == 0 or nones == len(ids):
            nulls = (b"\x01" if nones else b"\x00") * len(ids)
        else:
            nulls = bytes(map(is_, objects, repeat(None)))
        of = self._of
        try:
            return nulls, b"".join(map(_SECOND, map(of.__getitem__, ids)))
        except KeyError:
            pass
        if len(of) >= _KEEP:
            of = self._of = self._empty()
        for key, obj in dict(zip(ids, objects, strict=True)).items():
            if key not in of:
                try:
                    data = self._encode(obj).encode()
                except (TypeError, ValueError) as exc:
                    raise NotEncodable(str(exc)) from None
                of[key] = (obj, varint(len(data)) + data)
        return nulls, b"".join(map(_SECOND, map(of.__getitem__, ids)))


class NativeBlock:
    """One INSERT's block: its columns (name, type), and each column's encoded
    data as pieces (the null map's, then the values'), in order. Kept in
    pieces: joining them into one packet copied every byte twice more (at
    ~1 KB an event, as much CPU as encoding them on a busy machine)."""

    __slots__ = ("columns", "pieces", "rows")

    def __init__(
        self, columns: Sequence[tuple[str, str]], pieces: list[list[bytes]], rows: int
    ) -> None:
        self.columns = tuple(columns)
        self.pieces = pieces
        self.rows = rows

    def frames(self, custom_serialization: bool) -> Iterator[bytes]:
        """The client's Data packet (type 2, no temporary table name) in order,
        for a connection without compression. ``custom_serialization``: the
        server expects a flag byte before each column (protocol 54454+)."""
        yield b"".join((
            b"\x02\x00",  # Data; table name ""
            b"\x01\x00\x02\xff\xff\xff\xff\x00",  # block info: not overflows, bucket -1
            varint(len(self.columns)),
            varint(self.rows),
        ))  # fmt: skip
        flag = b"\x00" if custom_serialization else b""
        for (name, type_), pieces in zip(self.columns, self.pieces, strict=True):
            yield binary_str(name) + binary_str(type_) + flag
            yield from pieces

    def packet(self, custom_serialization: bool) -> bytes:
        """:meth:`frames` as one bytes object (for tests)."""
        return b"".join(self.frames(custom_serialization))


def _row_encoder(name: str, type_: str) -> Callable[[Sequence[Any]], bytes]:
    nullable = type_.startswith("Nullable(")
    inner = type_[9:-1] if nullable else type_
    if inner == "String":
        if name in _REPEATING:
            kept = _Kept(nullable)

            def repeating(values: Sequence[Any]) -> bytes:
                return b"".join(map(kept.__getitem__, values))

            encode = repeating
        else:

            def strings(values: Sequence[Any]) -> bytes:
                return _strings(values, nullable)

            encode = strings
    elif inner in _INT_CODES and not nullable:
        code = _INT_CODES[inner]

        def integers(values: Sequence[Any]) -> bytes:
            return _integers(values, code)

        encode = integers
    elif inner == "UInt8" and not nullable:  # a boolean (ip_valid): 1 for any true value

        def booleans(values: Sequence[Any]) -> bytes:
            return bytes(map(truth, values))

        encode = booleans
    else:
        raise ValueError(f"no Native encoder for column {name} {type_}")
    return encode


class AccessEncoder:
    """Encodes access events' rows (their first ``n_row`` columns) and the
    device, network and performer JSON columns after them."""

    def __init__(
        self,
        columns: Sequence[tuple[str, str]],
        n_row: int,
        blobs: Sequence[tuple[str, Callable[[Any], str]]],
    ) -> None:
        self.columns = tuple(columns)
        self.n_row = n_row
        self._row = [_row_encoder(n, t) for n, t in self.columns[:n_row]]
        self._nullable = [t.startswith("Nullable(") for _, t in self.columns]
        self._blobs = [(attrgetter(attr), _Blobs(encode)) for attr, encode in blobs]
        if n_row + len(self._blobs) != len(self.columns):
            raise ValueError("one encoder per column")

    def encode(self, events: Sequence[Any]) -> NativeBlock:
        n_row = self.n_row
        nulls: list[list[bytes]] = [[] for _ in self.columns]
        data: list[list[bytes]] = [[] for _ in self.columns]
        for lo in range(0, len(events), CHUNK):
            chunk = events[lo : lo + CHUNK]
            rows = [e.row for e in chunk]
            if len(set(map(len, rows))) != 1 or len(rows[0]) != n_row:
                raise NotEncodable("an access event of another shape (built by an older version)")
            values: list[Sequence[Any]] = list(zip(*rows, strict=True))
            for i, col in enumerate(values):
                if self._nullable[i]:
                    nulls[i].append(_nulls(col))
                data[i].append(self._row[i](col))
            for i, (get, blobs) in enumerate(self._blobs, n_row):
                null_map, blob_data = blobs.column(list(map(get, chunk)))
                nulls[i].append(null_map)
                data[i].append(blob_data)
        return NativeBlock(
            self.columns, [n + d for n, d in zip(nulls, data, strict=True)], len(events)
        )
