"""Subsystems built from the parts they use, without a ``Leza`` (issue 16, item 2).

Each test builds one subsystem by hand from real parts (a real MemoryStorage,
real settings, a real keyring) and checks what it does, the way a contributor
would test a change to it on its own.
"""

from __future__ import annotations

from typing import Any

import pytest

from leza_middleware import Leza, LezaConfigError
from leza_middleware.audit.api import Audit
from leza_middleware.config import Settings
from leza_middleware.core.hooks import Faults, Hooks
from leza_middleware.enrich.clientip import ProxyTrust
from leza_middleware.events import AuditEvent, Event
from leza_middleware.privacy import Erasure, Retention
from leza_middleware.ready import ReadyStorage
from leza_middleware.redact import Redactor
from leza_middleware.sessions.cookies import Keyring
from leza_middleware.sessions.registry import Sessions
from leza_middleware.storage.memory import MemoryStorage

KEY = "parts-secret-key-0123456789"


def settings(**given: Any) -> Settings:
    return Settings.resolve({"storage": "memory://", "secret_key": KEY, **given}, environ={})


def audit_of(storage: MemoryStorage, queued: list[Event]) -> Audit:
    s = settings()
    return Audit(
        app_name="parts",
        keyring=Keyring(KEY),
        redactor=Redactor(),
        record=queued.append,
        storage=ReadyStorage(storage),
        hooks=Hooks(None, None, Faults()),
        proxies=ProxyTrust(s.trusted_proxies),
    )


def test_audit_records_chains_and_verifies_without_a_leza() -> None:
    storage = MemoryStorage()
    queued: list[Event] = []
    audit = audit_of(storage, queued)
    audit.record(action="update", entity_type="role", entity_id=7, before={"a": 1}, after={"a": 2},
                 actor={"id": "u1"})  # fmt: skip
    [event] = queued
    assert isinstance(event, AuditEvent)
    assert event.app == "parts"
    audit.link([event])  # what the recorder's pipeline does before writing
    storage.write([event])
    assert [h["after"] for h in audit.history("role", 7)] == [{"a": 2}]
    assert audit.verify().ok
    event.after = {"a": 3}  # tampered after it was written
    assert not audit.verify()


def test_sessions_revoke_through_their_storage_without_a_leza() -> None:
    storage = MemoryStorage()
    sessions = Sessions(settings(), ReadyStorage(storage))
    assert sessions.active() == []
    assert sessions.revoke_all("nobody") == 0
    assert sessions.blocklist.stats()["state"] == "not loaded"
    sessions.blocklist.read()
    assert sessions.blocklist.stats()["state"] == "loaded"


def test_retention_and_erasure_take_callables_not_a_leza() -> None:
    storage = MemoryStorage()
    purged_audit: list[int] = []

    def purge_audit(before: int, batch: int) -> Any:
        purged_audit.append(before)
        return iter([2])

    retention = Retention(settings(retention="audit=1d").retention, 3600.0, storage, purge_audit)
    assert "audit" in retention.kinds
    assert retention.run()["audit"] == 2
    assert len(purged_audit) == 1
    assert not retention.running

    flushed: list[float] = []
    revoked: list[str] = []
    erasure = Erasure(
        flush=lambda timeout: flushed.append(timeout) or True,
        storage=ReadyStorage(storage),
        keyring=Keyring(KEY),
        audit_key=Keyring(KEY).subkey(b"audit"),
        revoke_all=lambda pid: revoked.append(pid) or 0,
    )
    report = erasure.forget("u-42", timeout=1.0)
    assert (flushed, revoked, report.access) == ([1.0], ["u-42"], 0)
    with pytest.raises(ValueError, match="performer id"):
        erasure.forget("  ")


def test_a_leza_builds_its_parts_at_first_use(make_leza: Any) -> None:
    leza = make_leza()
    assert "recorder" not in vars(leza)  # nothing built by Leza(...)
    assert leza.flush(1)
    assert leza.shutdown(1)
    other = make_leza()
    assert other.query is other.query
    assert "recorder" in vars(other)
    # Built, even without a recorded event: its settings are final.
    from flask import Flask

    app = Flask("parts")
    app.config["LEZA_APP_NAME"] = "moved"
    with pytest.raises(LezaConfigError, match="already in use"):
        other.init_app(app)
    assert other.settings.app_name == "app"
    assert "leza" not in app.extensions


def test_bad_values_still_fail_at_construction() -> None:
    with pytest.raises(LezaConfigError, match="nosuchdb"):
        Leza(storage="nosuchdb://x")
    with pytest.raises(LezaConfigError, match="trusted"):
        Leza(storage="memory://", trusted_proxies="*")
