"""Field-level diffs of JSON-ready states (secrets are masked by leza_middleware.redact)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..enrich.text import encodable

__all__ = ["diff", "plain"]


def plain(state: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A JSON-ready copy of ``state`` (secrets are masked later, on the recorder thread)."""
    if state is None:
        return None
    return {encodable(str(k)): _plain(v) for k, v in state.items()}


def diff(
    before: Mapping[str, Any] | None, after: Mapping[str, Any] | None
) -> dict[str, dict[str, Any]]:
    """``{field: {"before": old, "after": new}}`` for every field that changed."""
    old = before or {}
    new = after or {}
    out: dict[str, dict[str, Any]] = {}
    for name in sorted(set(old) | set(new), key=str):
        a, b = old.get(name), new.get(name)
        if a != b:
            out[str(name)] = {"before": a, "after": b}
    return out


def _plain(value: Any) -> Any:
    """JSON-friendly: containers kept, sets sorted, everything else as str.

    Text is kept as given except lone surrogates (an undecodable file name, say),
    which no database or JSON file can encode: U+FFFD instead of a lost record.
    """
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return encodable(value)
    if isinstance(value, Mapping):
        return {encodable(str(k)): _plain(v) for k, v in value.items()}
    if isinstance(value, (set, frozenset)):
        return sorted((_plain(v) for v in value), key=str)
    if isinstance(value, Iterable) and not isinstance(value, (bytes, bytearray)):
        return [_plain(v) for v in value]
    return encodable(str(value))
