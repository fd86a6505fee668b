"""``leza check``: configuration, storage and GeoIP database, one line per check.

Exit 1 when a check FAILs; warnings (an old GeoIP file, no secret key) exit 0.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Mapping
from typing import Any

from ..config import Settings
from ..errors import LezaError
from ..storage import (
    JSONLStorage,
    MemoryStorage,
    SQLStorage,
    Storage,
    backends_of,
    open_storage,
)
from .common import Context, iso, missing_sqlite_file

__all__ = ["GEOIP_MAX_AGE_DAYS", "add_arguments", "checks", "run"]

HELP = "check the configuration, the storage and the GeoIP database"

#: MaxMind updates GeoLite2 twice a week; addresses move between networks and
#: countries, so a database older than this gives wrong locations.
GEOIP_MAX_AGE_DAYS = 60

OK, WARN, FAIL = "OK", "WARN", "FAIL"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No options of its own (``--storage`` is common)."""


def run(ctx: Context, args: argparse.Namespace) -> int:
    results = checks(ctx.options)
    for status, name, message in results:
        print(f"{status:<4}  {name:<7}  {message}", file=ctx.stdout)
    failed = sum(status == FAIL for status, _, _ in results)
    warned = sum(status == WARN for status, _, _ in results)
    print(f"{failed} failed, {warned} warning{'s' if warned != 1 else ''}", file=ctx.stdout)
    return 1 if failed else 0


def checks(options: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(status, check, message) of each check, from ``Leza(...)``-style options."""
    try:
        settings = Settings.resolve(options)
    except LezaError as exc:
        return [(FAIL, "config", str(exc))]
    out = [(OK, "config", f"settings load (app_name={settings.app_name!r})")]
    if settings.secret_key is None:
        why = (
            "no secret_key / LEZA_SECRET_KEY: machine and session ids differ across "
            "processes and restarts; `leza verify` cannot run"
        )
        out.append((WARN, "secret", why))
    else:
        out.append((OK, "secret", "secret key set"))
    out.extend(_storage(settings))
    out.append(_geoip(settings))
    return out


def _storage(settings: Settings) -> list[tuple[str, str, str]]:
    try:
        storage = open_storage(settings.storage)
    except LezaError as exc:
        return [(FAIL, "storage", str(exc))]
    out = []
    try:
        for backend in backends_of(storage):  # storage by kind: each of its stores
            reached = _reach(backend)
            out.append(reached)
            if reached[0] != FAIL and isinstance(backend, SQLStorage):
                out.append(_schema(backend))
        return out
    finally:
        storage.close()


def _schema(storage: SQLStorage) -> tuple[str, str, str]:
    """The schema revision against this version's migrations (``leza migrate``)."""
    from ..storage.migrate import HEAD, schema_state

    try:
        state = schema_state(storage)
    except Exception as exc:
        return (FAIL, "schema", f"revision unreadable: {' '.join(str(exc).split())[:300]}")
    if state.fresh:
        return (OK, "schema", f"created at {HEAD} on the first write")
    if not state.known:
        return (WARN, "schema", f"at {state.revision}: newer than this leza-middleware "
                f"({HEAD}); upgrade it where this command runs")  # fmt: skip
    if state.revision != HEAD:
        return (FAIL, "schema", f"at {state.revision}; this leza-middleware needs {HEAD}: "
                "run `leza migrate` (or migrate=True); until then new kinds of events are "
                "spilled")  # fmt: skip
    return (OK, "schema", f"at {HEAD} (head)")


def _reach(storage: Storage) -> tuple[str, str, str]:
    where = storage.describe()
    if isinstance(storage, MemoryStorage):
        return (WARN, "storage", "memory:// lives inside one process: nothing is kept")
    if isinstance(storage, JSONLStorage):
        if not os.path.isdir(storage.directory):
            return (FAIL, "storage", f"{where}: the directory does not exist (yet)")
        return (OK, "storage", f"{where}: directory present")
    if not isinstance(storage, SQLStorage):
        try:
            storage.setup()
        except Exception as exc:
            return (FAIL, "storage", f"{where}: setup failed: {exc}")
        return (OK, "storage", f"{where}: set up")
    from sqlalchemy import inspect

    from ..storage.models import metadata

    missing_file = missing_sqlite_file(storage)
    if missing_file is not None:
        return (FAIL, "storage", f"no database at {missing_file} (the app creates it on its "
                "first request; or a wrong storage URL)")  # fmt: skip
    started = time.monotonic()
    try:
        with storage.engine.connect() as conn:
            tables = set(inspect(conn).get_table_names())
    except Exception as exc:
        return (FAIL, "storage", f"{where}: not reachable: {' '.join(str(exc).split())[:300]}")
    ms = (time.monotonic() - started) * 1000
    wanted = {t.name for t in metadata.sorted_tables}
    absent = sorted(wanted - tables)
    if absent == sorted(wanted):
        return (FAIL, "storage", f"{where}: reachable, but no Leza tables (the app creates them "
                "on its first write)")  # fmt: skip
    if absent:
        return (WARN, "storage", f"{where}: reachable; tables missing: {', '.join(absent)} "
                "(created on the app's next start)")  # fmt: skip
    return (OK, "storage", f"{where}: reachable in {ms:.0f} ms, schema present")


def _geoip(settings: Settings) -> tuple[str, str, str]:
    from ..enrich.geo import GeoResolver, find_default_database

    path = settings.geoip_db
    if path is False:
        return (OK, "geoip", "disabled (geoip_db=off): no locations recorded")
    if path is None:
        path = find_default_database()
        if path is None:
            return (WARN, "geoip", "no database: locations are not recorded (set geoip_db / "
                    "LEZA_GEOIP_DB, or pip install 'leza-middleware[geolite2]')")  # fmt: skip
    try:
        resolver = GeoResolver.open(path)
    except LezaError as exc:
        return (FAIL, "geoip", str(exc))
    try:
        built = resolver.build_epoch
        age = (time.time() - built) / 86_400
        what = f"{resolver.database_type} {resolver.path}, built {iso(built * 1_000_000)[:10]}"
        if age > GEOIP_MAX_AGE_DAYS:
            return (WARN, "geoip", f"{what}: {age:.0f} days old (over {GEOIP_MAX_AGE_DAYS}); "
                    "update it, locations drift")  # fmt: skip
        return (OK, "geoip", f"{what} ({age:.0f} days ago)")
    finally:
        resolver.close()
