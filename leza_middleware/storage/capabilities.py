"""What a storage backend can do beyond ``write`` and ``query``, checked in one place.

``write`` and ``query`` are all a backend needs to record events and serve the
admin view. Everything further is a :class:`Capability` the backend declares
(``Storage.capabilities``); a feature that needs a missing one asks
:func:`require` before it starts and fails with one sentence, or, for a setting,
:func:`require_for_setting` at ``Leza(...)`` with a :class:`LezaConfigError`.
docs/storage.md#capabilities has the table users read.

A subclass that declares nothing (one written before capabilities existed) gets
the capabilities whose methods it overrides (:func:`inferred`), so it keeps
working as it did.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..errors import LezaConfigError, StorageCapabilityError

if TYPE_CHECKING:
    from .base import Storage

__all__ = [
    "DOCS",
    "Capability",
    "capabilities_of",
    "check_declared",
    "inferred",
    "missing_sentence",
    "require",
    "require_for_setting",
]

DOCS = "docs/storage.md#capabilities"


class Capability(str, enum.Enum):
    """An optional part of the storage contract (the value is its name in docs and errors)."""

    #: ``count()``: the dashboard's "N rows" and STATE's logins without rollups.
    COUNT = "count"
    #: ``purge()`` / ``purge_batches()``: ``retention`` and ``leza purge``.
    PURGE = "purge"
    #: ``traffic()`` (+ ``settle_traffic()``): STATE's requests, errors and latency.
    ROLLUPS = "rollups"
    #: ``iter_audit()``, ``audit_checkpoints()``: ``leza verify``, ``audit.verify()``.
    AUDIT_CHAIN = "audit_chain"
    #: ``purge_audit_chains()`` (with ``audit_chain``): audit retention and
    #: ``leza purge --kind audit``.
    AUDIT_PURGE = "audit_purge"
    #: ``forget_performer()`` (+ ``redact_audit()`` with ``audit_chain``): ``leza forget``.
    ERASURE = "erasure"

    def __str__(self) -> str:
        return self.value


#: Per capability, the methods that implement it: overriding any group's every
#: method infers it for a backend that declares nothing.
_METHODS: dict[Capability, tuple[tuple[str, ...], ...]] = {
    Capability.COUNT: (("count",),),
    Capability.PURGE: (("purge",), ("purge_batches",)),
    Capability.ROLLUPS: (("traffic",),),
    Capability.AUDIT_CHAIN: (("iter_audit", "audit_checkpoints"),),
    Capability.AUDIT_PURGE: (("purge_audit_chains",),),
    Capability.ERASURE: (("forget_performer",),),
}

#: What a backend without the capability cannot do (the middle of the sentence).
_LACKS: dict[Capability, str] = {
    Capability.COUNT: "cannot count events",
    Capability.PURGE: "cannot purge events",
    Capability.ROLLUPS: "keeps no traffic rollups (STATE's requests, errors and latency)",
    Capability.AUDIT_CHAIN: "cannot verify the audit chain",
    Capability.AUDIT_PURGE: "cannot purge audit rows",
    Capability.ERASURE: "cannot erase a person's data",
}
#: What a setting needing the capability asks the backend to do.
_CAN: dict[Capability, str] = {
    Capability.COUNT: "count events",
    Capability.PURGE: "purge events",
    Capability.ROLLUPS: "keep traffic rollups",
    Capability.AUDIT_CHAIN: "verify the audit chain",
    Capability.AUDIT_PURGE: "purge audit rows",
    Capability.ERASURE: "erase a person's data",
}

_CACHE: dict[type[Any], frozenset[Capability]] = {}


def _overrides(cls: type[Any], name: str) -> bool:
    from .base import Storage

    return getattr(cls, name, None) is not getattr(Storage, name)


def inferred(cls: type[Storage]) -> frozenset[Capability]:
    """The capabilities a class that declares none implements by overriding methods.

    ``keeps_rollups = True`` (the attribute before capabilities) stands for
    ``rollups``: overriding ``traffic()`` alone never made STATE call it.
    """
    found: set[Capability] = {
        cap
        for cap, groups in _METHODS.items()
        if cap is not Capability.ROLLUPS
        and any(all(_overrides(cls, m) for m in group) for group in groups)
    }
    if getattr(cls, "keeps_rollups", False) is True:
        found.add(Capability.ROLLUPS)
    return frozenset(found)


def _parse(owner: str, declared: Iterable[Any]) -> frozenset[Capability]:
    out = set()
    for item in declared:
        try:
            out.add(Capability(item))
        except ValueError:
            known = ", ".join(repr(c.value) for c in Capability)
            raise LezaConfigError(
                f"storage {owner} declares an unknown capability {item!r}; known: {known} ({DOCS})"
            ) from None
    return frozenset(out)


def _declared(cls: type[Any]) -> Any:
    """The ``capabilities`` a class below Storage sets, else None (declares nothing)."""
    from .base import Storage

    for klass in cls.__mro__:
        if klass is Storage:
            return None
        if "capabilities" in vars(klass):
            return vars(klass)["capabilities"]
    return None


def capabilities_of(storage: Storage) -> frozenset[Capability]:
    """What ``storage`` can do: an instance's own ``capabilities``, else its
    class's declaration, else what its class overrides (:func:`inferred`)."""
    own = vars(storage).get("capabilities") if hasattr(storage, "__dict__") else None
    if own is not None:
        return _parse(storage.describe(), own)
    cls = type(storage)
    caps = _CACHE.get(cls)
    if caps is None:
        declared = _declared(cls)
        caps = inferred(cls) if declared is None else _parse(cls.__name__, declared)
        _CACHE[cls] = caps
    return caps


def check_declared(storage: Storage) -> None:
    """At ``Leza(storage=...)``: every declared capability is a known one, and its
    methods are implemented (not the base class's defaults), so a feature never
    meets a NotImplementedError deep inside. Raises LezaConfigError."""
    caps = capabilities_of(storage)
    cls = type(storage)
    own = vars(storage).get("capabilities") if hasattr(storage, "__dict__") else None
    if own is None and _declared(cls) is None:
        return  # inferred from what it overrides: nothing to check
    for cap in sorted(caps, key=lambda c: c.value):
        if not any(all(_overrides(cls, m) for m in group) for group in _METHODS[cap]):
            wanted = " or ".join(", ".join(f"{m}()" for m in group) for group in _METHODS[cap])
            raise LezaConfigError(
                f"storage {storage.describe()} declares the {cap.value!r} capability but does "
                f"not implement {wanted} ({DOCS})"
            )
    both = {Capability.ERASURE, Capability.AUDIT_CHAIN} <= caps
    if both and not _overrides(cls, "redact_audit"):  # erasure then redacts audit rows
        raise LezaConfigError(
            f"storage {storage.describe()} declares 'erasure' and 'audit_chain' but does not "
            f"implement redact_audit() ({DOCS})"
        )


def require(storage: Storage, capability: Capability, lacks: str | None = None) -> None:
    """Raise :class:`StorageCapabilityError` (one sentence) unless ``storage``
    declares ``capability``; ``lacks`` ("cannot purge audit rows") overrides
    the wording of what is missing."""
    if capability in capabilities_of(storage):
        return
    raise StorageCapabilityError(missing_sentence(storage, capability, lacks), capability.value)


def missing_sentence(storage: Storage, capability: Capability, lacks: str | None = None) -> str:
    """ "storage X cannot verify the audit chain: it does not declare the
    'audit_chain' capability (docs/storage.md#capabilities)"."""
    return (
        f"storage {storage.describe()} {lacks or _LACKS[capability]}: it does not "
        f"declare the {capability.value!r} capability ({DOCS})"
    )


def require_for_setting(storage: Storage, capability: Capability, setting: str) -> None:
    """At configuration time: :class:`LezaConfigError` naming ``setting`` unless
    ``storage`` declares ``capability``."""
    if capability in capabilities_of(storage):
        return
    raise LezaConfigError(
        f"{setting} needs a storage that can {_CAN[capability]}: {storage.describe()} "
        f"does not declare the {capability.value!r} capability ({DOCS})"
    )
