"""Settings given per event kind: ``{kind: value}`` or its ``"kind=value,..."`` text."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import LezaConfigError

__all__ = ["by_kind"]


def _pairs(label: str, text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        kind, sep, val = part.partition("=")
        if not sep:
            raise LezaConfigError(f"{label}: {part!r} must look like kind=value")
        out[kind.strip().lower()] = val.strip()
    return out


def by_kind(label: str, value: Any, kinds: tuple[str, ...], expected: str) -> dict[str, Any]:
    """A ``{kind: value}`` setting (or its ``"kind=value,..."`` text), kinds checked."""
    if isinstance(value, str):
        mapping: dict[str, Any] = _pairs(label, value)
    elif isinstance(value, Mapping):
        mapping = dict(value)
    else:
        raise LezaConfigError(f"{label} must {expected}, got {value!r}")
    for kind in mapping:
        if kind not in kinds:
            raise LezaConfigError(f"{label}: unknown kind {kind!r}; kinds: {', '.join(kinds)}")
    return mapping
