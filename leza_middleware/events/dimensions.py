"""The shared, immutable parts of events: what a User-Agent says (:class:`Device`)
and where an IP network is (:class:`Geo`). Storage writes each once per
distinct value and references it by ``key``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .base import ua_key

__all__ = ["Device", "Geo"]


@dataclass(frozen=True, slots=True)
class Device:
    """What a User-Agent string says about the client. One per distinct UA."""

    key: str
    user_agent: str
    browser_type: str = ""  # "browser", "bot", "email client", "" when unknown
    browser_name: str = ""
    browser_version: str = ""
    engine: str = ""
    engine_version: str = ""
    os_name: str = ""
    os_version: str = ""
    os_platform: str = ""
    device_type: str = ""  # "desktop", "smartphone", "tablet", "" when unknown
    device_brand: str = ""
    device_model: str = ""
    bot_name: str | None = None  # set only for bots
    bot_category: str = ""
    bot_url: str = ""
    is_mobile: bool = False
    is_tablet: bool = False
    is_pc: bool = False
    is_touch_capable: bool = False

    @property
    def is_bot(self) -> bool:
        return self.bot_name is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "browser": {
                "type": self.browser_type,
                "name": self.browser_name,
                "version": self.browser_version,
                "engine": self.engine,
                "engineVersion": self.engine_version,
            },
            "os": {"name": self.os_name, "version": self.os_version, "platform": self.os_platform},
            "device": {
                "type": self.device_type,
                "brand": self.device_brand,
                "model": self.device_model,
                "is_mobile": self.is_mobile,
                "is_tablet": self.is_tablet,
                "is_pc": self.is_pc,
                "is_touch_capable": self.is_touch_capable,
            },
            "bot": (
                None
                if self.bot_name is None
                else {"name": self.bot_name, "category": self.bot_category, "url": self.bot_url}
            ),
        }

    @classmethod
    def from_dict(cls, user_agent: str, data: Mapping[str, Any]) -> Device:
        b = data.get("browser") or {}
        o = data.get("os") or {}
        d = data.get("device") or {}
        bot = data.get("bot")
        return cls(
            key=ua_key(user_agent),
            user_agent=user_agent,
            browser_type=b.get("type", ""),
            browser_name=b.get("name", ""),
            browser_version=b.get("version", ""),
            engine=b.get("engine", ""),
            engine_version=b.get("engineVersion", ""),
            os_name=o.get("name", ""),
            os_version=o.get("version", ""),
            os_platform=o.get("platform", ""),
            device_type=d.get("type", ""),
            device_brand=d.get("brand", ""),
            device_model=d.get("model", ""),
            bot_name=None if bot is None else bot.get("name", ""),
            bot_category="" if bot is None else bot.get("category", ""),
            bot_url="" if bot is None else bot.get("url", ""),
            is_mobile=bool(d.get("is_mobile", False)),
            is_tablet=bool(d.get("is_tablet", False)),
            is_pc=bool(d.get("is_pc", False)),
            is_touch_capable=bool(d.get("is_touch_capable", False)),
        )


@dataclass(frozen=True, slots=True)
class Geo:
    """Where an IP network is. One per distinct network of the GeoIP database."""

    key: str  # the database network the IP fell in, e.g. "81.2.69.128/26"
    country_code: str = ""
    country_name: str = ""
    region_code: str = ""
    region_name: str = ""
    city: str = ""
    zip_code: str = ""
    time_zone: str = ""
    latitude: float | None = None
    longitude: float | None = None
    metro_code: int = 0

    def to_dict(self, ip: str) -> dict[str, Any]:
        return {
            "ip": ip,
            "country_code": self.country_code,
            "country_name": self.country_name,
            "region_code": self.region_code,
            "region_name": self.region_name,
            "city": self.city,
            "zip_code": self.zip_code,
            "time_zone": self.time_zone,
            "latitude": self.latitude,
            "longitude": self.longitude,
            "metro_code": self.metro_code,
            "network": self.key,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Geo:
        return cls(
            key=str(data.get("network") or ""),
            country_code=data.get("country_code", ""),
            country_name=data.get("country_name", ""),
            region_code=data.get("region_code", ""),
            region_name=data.get("region_name", ""),
            city=data.get("city", ""),
            zip_code=data.get("zip_code", ""),
            time_zone=data.get("time_zone", ""),
            latitude=data.get("latitude"),
            longitude=data.get("longitude"),
            metro_code=int(data.get("metro_code") or 0),
        )
