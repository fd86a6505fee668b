"""``Leza``: the one object an app configures; adapters and the read side share it."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable
from typing import Any

from .config import Settings
from .enrich.access import AccessEnricher
from .enrich.clientip import ProxyTrust
from .enrich.geo import GeoResolver
from .enrich.useragent import UserAgentParser
from .events import Event
from .performer import Performer, coerce_performer
from .query import Query
from .recorder import Recorder
from .request_path import is_priority
from .spill import Spill, default_spill_dir
from .storage import Storage, open_storage

__all__ = ["Leza"]

log = logging.getLogger("leza_middleware")


class Leza:
    """Configuration, recorder and read API of one app.

    Every argument may be left out and read from ``LEZA_<NAME>`` environment
    variables instead (``LEZA_STORAGE``, ``LEZA_GEOIP_DB``,
    ``LEZA_TRUSTED_PROXIES`` comma-separated, ``LEZA_SECRET_KEY``,
    ``LEZA_APP_NAME``, ``LEZA_BATCH_SIZE``, ``LEZA_FLUSH_INTERVAL``,
    ``LEZA_QUEUE_SIZE``, ``LEZA_SPILL_DIR``, ``LEZA_SHUTDOWN_TIMEOUT``, …).
    Invalid values raise :class:`~leza_middleware.LezaConfigError` here.
    Nothing connects to storage until the first event is written.
    """

    def __init__(
        self,
        storage: str | Storage | None = None,
        geoip_db: str | os.PathLike[str] | bool | None = None,
        trusted_proxies: Iterable[str] | str | None = None,
        performer: Callable[[Any], Performer | dict[str, Any] | None] | None = None,
        secret_key: str | None = None,
        app_name: str | None = None,
        **options: Any,
    ) -> None:
        settings = Settings.resolve(
            {
                "storage": storage,
                "geoip_db": geoip_db,
                "trusted_proxies": trusted_proxies,
                "performer": performer,
                "secret_key": secret_key,
                "app_name": app_name,
                **options,
            }
        )
        self.settings = settings
        self.performer_hook = settings.performer
        self.storage: Storage = open_storage(settings.storage)
        self.proxies = ProxyTrust(settings.trusted_proxies)
        geo = settings.geoip_db
        self.geo = GeoResolver.disabled() if geo is False else GeoResolver.open(geo)
        self.user_agents = UserAgentParser()
        self.enricher = AccessEnricher(
            user_agents=self.user_agents,
            geo=self.geo,
            proxies=self.proxies,
            redact_keys=settings.redact_query_keys,
            app_name=settings.app_name,
        )
        spill_dir = settings.spill_dir or default_spill_dir(self.storage.describe())
        self.recorder = Recorder(
            self.storage,
            self._prepare,
            Spill(spill_dir),
            prepare_batch=self._prepare_batch,
            priority=self._priority,
            batch_size=settings.batch_size,
            flush_interval=settings.flush_interval,
            queue_size=settings.queue_size,
            max_retries=settings.max_retries,
            shutdown_timeout=settings.shutdown_timeout,
        )
        self.query = Query(self.storage)
        self._errors_lock = threading.Lock()
        self._request_path_errors = 0
        self._performer_hook_errors = 0

    # -- recorder ------------------------------------------------------------

    def _prepare(self, item: Any) -> Event:
        if type(item) is tuple:  # a raw access record from an adapter
            return self.enricher(item)
        if isinstance(item, Event):
            return item
        raise TypeError(f"cannot record {type(item).__name__}")

    def _prepare_batch(self, items: list[Any]) -> list[Event]:
        """Prepare a whole batch; raw access records are enriched column-wise."""
        raws = [item for item in items if type(item) is tuple]
        if len(raws) == len(items):
            return list(self.enricher.batch(items)) if items else []
        enriched = iter(self.enricher.batch(raws) if raws else ())
        return [next(enriched) if type(item) is tuple else self._prepare(item) for item in items]

    @staticmethod
    def _priority(item: Any) -> bool:
        if type(item) is tuple:
            return is_priority(item)
        return bool(item.priority)

    def record(self, event: Event) -> None:
        """Queue an already-built event (used by the session, audit and log APIs)."""
        self.recorder.offer(event)

    def flush(self, timeout: float | None = 5.0) -> bool:
        """Block until everything queued so far is written (or spilled); False on timeout."""
        return self.recorder.flush(timeout)

    def shutdown(self, timeout: float | None = None) -> bool:
        """Flush and stop the background thread; called at interpreter exit too."""
        return self.recorder.shutdown(timeout)

    def stats(self) -> dict[str, Any]:
        """Counters: enqueued, written, dropped (+ by reason), retried, spilled, replayed, …

        ``enqueued == written + dropped + pending + spilled`` holds at all times.
        """
        out = self.recorder.stats()
        out["request_path_errors"] = self._request_path_errors
        out["performer_hook_errors"] = self._performer_hook_errors
        out["geo"] = self.geo.stats()
        out["user_agents"] = self.user_agents.cache_info()
        return out

    # -- used by adapters ----------------------------------------------------

    def _count_request_path_error(self) -> None:
        with self._errors_lock:
            self._request_path_errors += 1
            first = self._request_path_errors == 1
        if first:
            log.warning("leza: could not record a request (counted in stats())", exc_info=True)

    def _call_performer_hook(self, request: Any) -> Performer | None:
        hook = self.performer_hook
        if hook is None:
            return None
        try:
            return coerce_performer(hook(request))
        except Exception:
            with self._errors_lock:
                self._performer_hook_errors += 1
                first = self._performer_hook_errors == 1
            if first:
                log.warning("leza: the performer hook raised (counted in stats())", exc_info=True)
            return None

    def __repr__(self) -> str:
        return f"<Leza app={self.settings.app_name!r} storage={self.storage.describe()}>"
