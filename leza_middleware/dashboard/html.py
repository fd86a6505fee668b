"""A tiny escaping template layer: everything is HTML-escaped unless it is :class:`Markup`.

The dashboard renders recorded data — User-Agents, paths, performer names —
that any client can choose, so escaping is the default and trust is explicit:
only strings built here (``fmt``, ``join``, ``render``) are :class:`Markup`.
Templates are files in ``templates/`` (package data), filled with
:class:`string.Template` (``$name``), which has no logic to get wrong.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import html
import re
from collections.abc import Iterable
from importlib import resources
from string import Template

__all__ = ["Markup", "csp_hash", "escape", "fmt", "join", "render", "resource"]


class Markup(str):
    """Text that is already safe HTML (escaped or built from escaped parts)."""

    __slots__ = ()


#: The characters escaping changes (``html.escape`` with ``quote=True``).
_SPECIAL = re.compile("[&<>\"']").search


def escape(value: object) -> Markup:
    """``value`` as HTML text: quotes escaped too, so it is safe in attributes."""
    if isinstance(value, Markup):
        return value
    text = "" if value is None else value if type(value) is str else str(value)
    # Most values (ids, names, paths) hold nothing to escape: one C-level search.
    if _SPECIAL(text) is None:
        return Markup(text)
    return Markup(html.escape(text, quote=True))


def fmt(template: str, /, *args: object, **kwargs: object) -> Markup:
    """``template.format(...)`` with every argument escaped (``template`` is trusted)."""
    if kwargs:
        return Markup(
            template.format(*map(escape, args), **{k: escape(v) for k, v in kwargs.items()})
        )
    return Markup(template.format(*map(escape, args)))


def join(parts: Iterable[Markup], sep: str = "") -> Markup:
    return Markup(sep.join(escape(p) for p in parts))


@functools.cache
def resource(name: str) -> str:
    """The text of one file of ``templates/`` (read once)."""
    return (resources.files(__package__) / "templates" / name).read_text(encoding="utf-8")


@functools.cache
def _template(name: str) -> Template:
    return Template(resource(name))


def render(name: str, /, **values: object) -> Markup:
    """Fill ``templates/<name>``; values are escaped unless Markup; a missing one raises."""
    return Markup(_template(name).substitute({k: escape(v) for k, v in values.items()}))


@functools.cache
def csp_hash(text: str) -> str:
    """The CSP source (``'sha256-…'``) allowing exactly this inline script or style."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return f"'sha256-{base64.b64encode(digest).decode('ascii')}'"
