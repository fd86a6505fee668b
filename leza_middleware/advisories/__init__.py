"""Security advisories derived from the event stream (the ADVISORY tab).

``AdvisoryEngine(rules, storage).process(events)`` runs :class:`Rule` objects
over each recorded batch and returns :class:`~leza_middleware.events.AdvisoryEvent`
findings: a new machine, a new country, impossible travel, bursts of failed
logins or denials, a revoked session used again, a bot on a login route, a
service going down or recovering. See ``docs/advisories.md``.
"""

from __future__ import annotations

from .engine import AdvisoryEngine
from .history import History, Location, PerformerState
from .rules import (
    BotOnLogin,
    Burst,
    Finding,
    ImpossibleTravel,
    NewCountry,
    NewMachine,
    RevokedSessionReuse,
    Rule,
    RuleContext,
    ServiceState,
    default_rules,
    haversine_km,
)

__all__ = [
    "AdvisoryEngine",
    "BotOnLogin",
    "Burst",
    "Finding",
    "History",
    "ImpossibleTravel",
    "Location",
    "NewCountry",
    "NewMachine",
    "PerformerState",
    "RevokedSessionReuse",
    "Rule",
    "RuleContext",
    "ServiceState",
    "default_rules",
    "haversine_km",
]
