"""``record_headers``: the opt-in allow-list of request headers stored with access events.

Names that can carry credentials are refused when the settings are read
(:func:`parse_record_headers`), so no configuration can store them; values
are cleaned, capped and filtered like the endpoint (:func:`stored_headers`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from ..enrich.text import clean
from ..errors import LezaConfigError
from ..redact import DENIED_HEADER_PARTS, DENIED_HEADERS, Redactor, header_refused

__all__ = [
    "DENIED_HEADERS",
    "DENIED_HEADER_PARTS",
    "MAX_HEADERS",
    "MAX_HEADER_VALUE",
    "parse_record_headers",
    "stored_headers",
]

MAX_HEADERS = 16
MAX_HEADER_VALUE = 512
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]{1,64}")


def parse_record_headers(label: str, value: Any) -> tuple[str, ...]:
    """``record_headers``: lower-case header names, none of them secret-bearing."""
    if value is None or value is False:
        return ()
    if isinstance(value, str):
        items = [part.strip() for part in value.split(",")]
    elif isinstance(value, Iterable):
        items = []
        for item in value:
            if not isinstance(item, str):
                raise LezaConfigError(f"{label} must hold header names, got {item!r}")
            items.append(item.strip())
    else:
        raise LezaConfigError(f"{label} must be a list of header names or a comma-separated string")
    names: list[str] = []
    for item in filter(None, items):
        name = item.lower()
        if not _HEADER_NAME.fullmatch(name):
            raise LezaConfigError(f"{label}: {item!r} is not a header name")
        if header_refused(name):
            raise LezaConfigError(
                f"{label}: the {item!r} header can carry credentials and is never stored "
                f"(refused: {', '.join(sorted(DENIED_HEADERS))}, any name containing "
                f"{', '.join(DENIED_HEADER_PARTS)}, and any secret name); see docs/privacy.md"
            )
        if name not in names:
            names.append(name)
    if len(names) > MAX_HEADERS:
        raise LezaConfigError(f"{label}: at most {MAX_HEADERS} headers, got {len(names)}")
    return tuple(names)


def stored_headers(raw: tuple[Any, ...], redactor: Redactor) -> str | None:
    """The JSON text stored for a captured header tuple ``(name, value, name, value, …)``.

    Values are cleaned and capped; secrets in them are filtered like the
    endpoint's (a ``Referer``'s query, a URL's userinfo, ``key=value`` text).
    Repeated names are joined with ``", "`` (RFC 9110).
    """
    out: dict[str, str] = {}
    for i in range(0, len(raw) - 1, 2):
        name, value = raw[i], raw[i + 1]
        if value is None:
            continue
        text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
        # Cleaned first so that what is matched is what is stored; capped again
        # after, as "[Filtered]" can be longer than what it replaces.
        text = clean(redactor.redact_header(clean(text, MAX_HEADER_VALUE)), MAX_HEADER_VALUE)
        key = str(name)
        out[key] = f"{out[key]}, {text}"[:MAX_HEADER_VALUE] if key in out else text
        if len(out) >= MAX_HEADERS:
            break
    return json.dumps(out, ensure_ascii=False) if out else None
