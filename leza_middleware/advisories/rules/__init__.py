"""Advisory rules: the base class users subclass, and the built-in rules.

One module per family: :mod:`.base` (Rule, Finding, RuleContext and shared
helpers), :mod:`.identity` (new machine, new country, impossible travel),
:mod:`.abuse` (bursts, revoked-session reuse, bots on login routes),
:mod:`.service` (service down / recovered). Everything is importable from
``leza_middleware.advisories.rules``.
"""

from __future__ import annotations

from .abuse import BotOnLogin, Burst, RevokedSessionReuse
from .base import ALARM_RULES, DEFAULT_MAX_KEYS, Finding, Rule, RuleContext, haversine_km
from .identity import ImpossibleTravel, NewCountry, NewMachine
from .service import ServiceState

__all__ = [
    "ALARM_RULES",
    "DEFAULT_MAX_KEYS",
    "BotOnLogin",
    "Burst",
    "Finding",
    "ImpossibleTravel",
    "NewCountry",
    "NewMachine",
    "RevokedSessionReuse",
    "Rule",
    "RuleContext",
    "ServiceState",
    "default_rules",
    "haversine_km",
]


def default_rules() -> list[Rule]:
    """One instance of every built-in rule with its default parameters."""
    return [
        NewMachine(),
        NewCountry(),
        ImpossibleTravel(),
        Burst(),
        RevokedSessionReuse(),
        BotOnLogin(),
        ServiceState(),
    ]
