"""Rules about who signs in from where: a new machine, a new country, impossible travel."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from ...events import AccessEvent, Event, SessionEvent, iso_from_us
from ..history import Location, location_of, place_label
from .base import (
    DAY_US,
    US,
    Finding,
    Rule,
    RuleContext,
    device_label,
    format_duration,
    haversine_km,
    number_param,
    performer_label,
)


class NewMachine(Rule):
    """A performer logs in from a machine id none of their earlier logins had.

    Quiet for a performer's first known login (or when none of their earlier
    logins carried a machine id) and for a login without a machine id.
    """

    name = "new_machine"
    severity = "medium"
    kinds = frozenset({"access"})
    actions = frozenset({"login"})
    uses_history = True

    def __init__(self, *, name: str | None = None, severity: str | None = None) -> None:
        super().__init__(name=name, severity=severity)

    def observe(self, event: Event, ctx: RuleContext) -> Iterable[Finding]:
        if not isinstance(event, AccessEvent):
            return ()
        performer_id, machine = event.performer_id, event.machine_id
        if not performer_id or not machine:
            return ()
        st = ctx.performer(performer_id, event.ts)
        if st.seen(event.id) or not st.machines or machine in st.machines:
            return ()
        parts = [p for p in (device_label(event.device), place_label(event.geo)) if p]
        where = f" ({', '.join(parts)})" if parts else ""
        who = performer_label(event.performer, performer_id)
        geo = event.geo
        return (
            Finding(
                message=f"{who} logged in from a new machine{where}",
                evidence=(event.id,),
                performer_id=performer_id,
                ip=event.client_ip or None,
                details={
                    "machine_id": machine,
                    "known_machines": len(st.machines),
                    "browser": event.device.browser_name if event.device else "",
                    "os": event.device.os_name if event.device else "",
                    "country_code": geo.country_code if geo else "",
                    "city": geo.city if geo else "",
                },
            ),
        )


class NewCountry(Rule):
    """A performer logs in from a country none of their logins of the last ``days`` had.

    Quiet when the login's country is unknown, and when the performer has no
    login with a known country in those days (nothing to compare with).
    """

    name = "new_country"
    severity = "medium"
    kinds = frozenset({"access"})
    actions = frozenset({"login"})
    uses_history = True

    def __init__(
        self, days: float = 90, *, name: str | None = None, severity: str | None = None
    ) -> None:
        super().__init__(name=name, severity=severity)
        self.days = number_param("NewCountry", "days", days, exclusive=True)
        self.history_days = self.days

    def observe(self, event: Event, ctx: RuleContext) -> Iterable[Finding]:
        if not isinstance(event, AccessEvent):
            return ()
        performer_id, geo = event.performer_id, event.geo
        if not performer_id or geo is None or not geo.country_code:
            return ()
        st = ctx.performer(performer_id, event.ts)
        if st.seen(event.id):
            return ()
        recent = st.countries_since(event.ts - int(self.days * DAY_US))
        code = geo.country_code
        if not recent or code in recent:
            return ()
        who = performer_label(event.performer, performer_id)
        country = f"{geo.country_name} ({code})" if geo.country_name else code
        city = f", {geo.city}" if geo.city else ""
        days = f"{self.days:g}"
        last_seen = st.countries.get(code)
        return (
            Finding(
                message=(
                    f"{who} logged in from {country}{city}, a country not seen for them "
                    f"in the last {days} days (recent: {', '.join(sorted(recent))})"
                ),
                evidence=(event.id,),
                performer_id=performer_id,
                ip=event.client_ip or None,
                details={
                    "country_code": code,
                    "country_name": geo.country_name,
                    "city": geo.city,
                    "recent_countries": sorted(recent),
                    "days": self.days,
                    "last_seen": None if last_seen is None else iso_from_us(last_seen),
                },
            ),
        )


class ImpossibleTravel(Rule):
    """Two logins or session starts of one performer too far apart for the time between.

    Fires when the great-circle distance over the time gap exceeds
    ``max_kmh``; pairs closer than ``min_km`` are ignored (GeoIP places an
    IP only roughly). Both events need coordinates. Compared with the
    performer's latest known location.
    """

    name = "impossible_travel"
    severity = "high"
    kinds = frozenset({"access", "session"})
    actions = frozenset({"login", "session_start"})
    uses_history = True

    def __init__(
        self,
        max_kmh: float = 900,
        min_km: float = 100,
        *,
        name: str | None = None,
        severity: str | None = None,
    ) -> None:
        super().__init__(name=name, severity=severity)
        self.max_kmh = number_param("ImpossibleTravel", "max_kmh", max_kmh, exclusive=True)
        self.min_km = number_param("ImpossibleTravel", "min_km", min_km)

    def observe(self, event: Event, ctx: RuleContext) -> Iterable[Finding]:
        if isinstance(event, AccessEvent):
            performer, performer_id, ip = event.performer, event.performer_id, event.client_ip
        elif isinstance(event, SessionEvent):
            performer, ip = event.performer, event.ip
            performer_id = None if performer is None else performer.id
        else:
            return ()
        if not performer_id:
            return ()
        here = location_of(event)
        if here is None:
            return ()
        st = ctx.performer(performer_id, event.ts)
        before = st.last_location
        if before is None or st.seen(event.id) or before.event_id == event.id:
            return ()
        km = haversine_km(before.latitude, before.longitude, here.latitude, here.longitude)
        if km < self.min_km:
            return ()
        seconds = abs(here.ts - before.ts) / US
        kmh = math.inf if seconds < 1 else km / (seconds / 3600)
        if kmh <= self.max_kmh:
            return ()
        first, second = (before, here) if before.ts <= here.ts else (here, before)
        who = performer_label(performer, performer_id)
        if seconds < 1:
            pace = f"{km:,.0f} km apart within 1 s"
        else:
            pace = f"{km:,.0f} km in {format_duration(seconds)} ({kmh:,.0f} km/h)"
        return (
            Finding(
                message=(
                    f"Impossible travel for {who}: {first.label or 'somewhere'} → "
                    f"{second.label or 'somewhere'}, {pace}"
                ),
                evidence=(first.event_id, second.event_id),
                performer_id=performer_id,
                ip=ip or None,
                details={
                    "from": _location_details(first),
                    "to": _location_details(second),
                    "km": round(km, 1),
                    "seconds": round(seconds, 3),
                    "kmh": None if math.isinf(kmh) else round(kmh, 1),
                    "max_kmh": self.max_kmh,
                },
            ),
        )


def _location_details(loc: Location) -> dict[str, Any]:
    return {
        "event_id": loc.event_id,
        "timestamp": iso_from_us(loc.ts),
        "place": loc.label,
        "latitude": loc.latitude,
        "longitude": loc.longitude,
    }


# --------------------------------------------------------------------------- stream rules
