"""Automatic audit of Django model changes on a real project (tests/djangoproject).

Models are audited because ``settings.LEZA["audit_models"]`` names them
(``auth.Group``, ``auth.User``) or because they are decorated with
``@audited`` (``djangoproject.models.Document``). Changes are made through real
requests by logged-in users, and read back with ``leza.audit.history()``.
Django is set up the way tests/test_django.py does it.
"""

from __future__ import annotations

import itertools
import logging
import re
import sqlite3
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from decimal import Decimal
from io import StringIO
from pathlib import Path
from typing import Any

import django
import pytest
from django.conf import settings
from django.test import AsyncClient, Client, override_settings

from leza_middleware import Leza, LezaConfigError
from leza_middleware.django import audited, get_leza
from leza_middleware.django.middleware import forget_roles

PASSWORD = "correct horse battery staple"
_names = itertools.count()


@pytest.fixture(scope="module", autouse=True)
def _django() -> None:
    from django.core.management import call_command

    if not settings.configured:
        from djangoproject import settings as project

        settings.configure(**{k: getattr(project, k) for k in dir(project) if k.isupper()})
        django.setup()
    call_command("migrate", run_syncdb=True, verbosity=0)


@pytest.fixture(autouse=True)
def _fresh_roles() -> None:
    forget_roles()


@pytest.fixture(autouse=True)
def _no_capture_failures(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """A receiver that fails only logs (the app's write goes on): fail the test instead."""
    yield
    failures = [
        r.getMessage()
        for r in caplog.records
        if r.name == "leza_middleware" and r.levelno >= logging.WARNING
    ]
    assert failures == []


@pytest.fixture
def leza_conf(tmp_path: Path) -> dict[str, Any]:
    return {
        "storage": f"sqlite:///{tmp_path / 'leza.db'}",
        "geoip_db": False,
        "spill_dir": str(tmp_path / "spill"),
        "flush_interval": 0.05,
        "app_name": "djangoproject",
        # last_login changes at every login (and Client.force_login): not a change to audit
        "audit_models": {"auth.Group": {}, "auth.User": {"exclude": ["last_login"]}},
    }


@pytest.fixture
def configure(leza_conf: dict[str, Any]) -> Iterator[Callable[..., Leza]]:
    """settings.LEZA = leza_conf + overrides; the Leza built from it."""
    made: list[Leza] = []
    overrides: list[Any] = []

    def make(**options: Any) -> Leza:
        if overrides:
            overrides.pop().disable()
        override = override_settings(LEZA={**leza_conf, **options})
        override.enable()
        overrides.append(override)
        leza = get_leza()
        made.append(leza)
        return leza

    try:
        yield make
    finally:
        for override in overrides:
            override.disable()
        for leza in made:
            leza.shutdown(timeout=2)


@pytest.fixture
def leza(configure: Callable[..., Leza]) -> Leza:
    return configure()


def unique(prefix: str) -> str:
    """Names unique in the session: the in-memory database is shared by the test files."""
    return f"{prefix}-{next(_names)}"


def make_user(first: str, last: str = "Tester") -> Any:
    from django.contrib.auth.models import User

    return User.objects.create_user(
        unique(first.lower()), password=PASSWORD, first_name=first, last_name=last
    )


def signed_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def perm(codename: str) -> Any:
    from django.contrib.auth.models import Permission

    return Permission.objects.get(codename=codename)


def pid(codename: str) -> str:
    return str(perm(codename).pk)


def audits(leza: Leza, **filters: Any) -> list[dict[str, Any]]:
    """Every audit record (oldest first)."""
    assert leza.flush(5)
    return list(reversed(leza.query.audit(limit=10_000, **filters)))


def history(leza: Leza, entity_type: str, entity_id: Any) -> list[dict[str, Any]]:
    assert leza.flush(5)
    return leza.audit.history(entity_type, entity_id)


def actor_id(event: dict[str, Any]) -> str | None:
    return None if event["actor"] is None else event["actor"]["id"]


# --------------------------------------------------------------------------- the story


def test_role_permissions_story_end_to_end(leza: Leza) -> None:
    """A role's permissions changed twice by two users, then renamed: the whole history."""
    from django.contrib.auth.models import Group

    alice, bob = make_user("Alice", "Liddell"), make_user("Bob", "Dylan")
    role = Group.objects.create(name=unique("support"))  # no request: no actor
    name = role.name
    as_alice, as_bob = signed_in(alice), signed_in(bob)

    r1 = as_alice.post(f"/roles/{role.pk}/permissions/", {"add": ["view_user", "change_user"]})
    assert r1.json() == {"permissions": ["change_user", "view_user"]}
    r2 = as_bob.post(
        f"/roles/{role.pk}/permissions/", {"remove": ["change_user"], "add": ["delete_user"]}
    )
    assert r2.json() == {"permissions": ["delete_user", "view_user"]}
    r3 = as_alice.post(f"/roles/{role.pk}/rename/", {"name": name + "-desk"})
    assert r3.status_code == 200

    events = history(leza, "auth.group", role.pk)
    assert [(e["action"], actor_id(e)) for e in events] == [
        ("create", None),
        ("update", str(alice.pk)),
        ("update", str(bob.pk)),
        ("update", str(bob.pk)),
        ("update", str(alice.pk)),
    ]
    created, first, removal, addition, rename = events
    assert all(e["entity_type"] == "auth.group" for e in events)
    assert all(e["entity_id"] == str(role.pk) for e in events)

    assert created["before"] is None
    assert created["after"] == {"id": role.pk, "name": name}
    assert created["diff"] == {
        "id": {"before": None, "after": role.pk},
        "name": {"before": None, "after": name},
    }
    assert created["request_id"] is None

    added = sorted([pid("view_user"), pid("change_user")], key=int)
    assert first["diff"] == {"permissions": {"added": added, "removed": []}}
    assert first["actor"]["name"] == "Alice Liddell"
    assert first["request_id"] == r1.headers["X-Request-ID"]
    assert first["ip"] == "127.0.0.1"
    assert removal["diff"] == {"permissions": {"added": [], "removed": [pid("change_user")]}}
    assert addition["diff"] == {"permissions": {"added": [pid("delete_user")], "removed": []}}
    assert removal["actor"]["name"] == addition["actor"]["name"] == "Bob Dylan"
    assert removal["request_id"] == addition["request_id"] == r2.headers["X-Request-ID"]

    assert rename["before"] == {"name": name}
    assert rename["after"] == {"name": name + "-desk"}
    assert rename["diff"] == {"name": {"before": name, "after": name + "-desk"}}
    assert rename["request_id"] == r3.headers["X-Request-ID"]

    times = [datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")) for e in events]
    assert times == sorted(times)
    assert all(t.tzinfo is not None for t in times)
    # across entity types too, newest first
    assert [e["_id"] for e in leza.query.audit(entity_type="auth.group", limit=5)] == [
        e["_id"] for e in reversed(events)
    ]
    assert leza.query.audit(actor_id=str(bob.pk), entity_type="auth.group")[0] == addition
    result = leza.audit.verify()
    assert result, result.reason


@pytest.mark.anyio
async def test_async_view_is_attributed_to_its_user(leza: Leza) -> None:
    from asgiref.sync import sync_to_async
    from django.contrib.auth.models import Group

    carol = await sync_to_async(make_user)("Carol")
    role = await Group.objects.acreate(name=unique("async-role"))
    client = AsyncClient()
    await client.aforce_login(carol)
    r = await client.post(f"/roles/{role.pk}/apermissions/", {"add": ["view_group"]})
    assert r.json() == {"added": 1}
    *_, event = history(leza, "auth.group", role.pk)
    assert event["actor"]["id"] == str(carol.pk)
    assert event["request_id"] == r.headers["X-Request-ID"]
    view_group = await sync_to_async(pid)("view_group")
    assert event["diff"] == {"permissions": {"added": [view_group], "removed": []}}


# ------------------------------------------------------------------ many-to-many sides


def test_permission_side_changes_are_recorded_on_the_role(leza: Leza) -> None:
    """``perm.group_set.add(group)`` changes the role: the record is on the role."""
    from django.contrib.auth.models import Group

    admin = make_user("Dana")
    role = Group.objects.create(name=unique("auditors"))
    r = signed_in(admin).post("/permissions/view_group/grant/", {"group": role.pk})
    assert r.status_code == 200
    *_, event = history(leza, "auth.group", role.pk)
    assert event["action"] == "update"
    assert event["diff"] == {"permissions": {"added": [pid("view_group")], "removed": []}}
    assert event["actor"]["id"] == str(admin.pk)
    # Permission is not audited: nothing is recorded on it
    assert audits(leza, entity_type="auth.permission") == []
    # the same change from the role's side has the same shape
    perm("view_group").group_set.remove(role)
    *_, event = history(leza, "auth.group", role.pk)
    assert event["diff"] == {"permissions": {"added": [], "removed": [pid("view_group")]}}
    assert event["actor"] is None  # no request


@pytest.mark.parametrize("side", ["user", "group"])
def test_membership_is_recorded_on_both_audited_sides(leza: Leza, side: str) -> None:
    """``user.groups.add(g)`` and ``g.user_set.add(u)`` record the same events."""
    from django.contrib.auth.models import Group

    admin, member = make_user("Erin"), make_user("Frank")
    role = Group.objects.create(name=unique("members"))
    client = signed_in(admin)
    for verb in ("add", "remove"):
        r = client.post(
            "/membership/", {"user": member.pk, "group": role.pk, "side": side, "verb": verb}
        )
        assert r.status_code == 200

    on_user = [e for e in history(leza, "auth.user", member.pk) if e["action"] == "update"]
    assert [e["diff"] for e in on_user] == [
        {"groups": {"added": [str(role.pk)], "removed": []}},
        {"groups": {"added": [], "removed": [str(role.pk)]}},
    ]
    on_group = history(leza, "auth.group", role.pk)[1:]  # after its creation
    assert [e["diff"] for e in on_group] == [
        {"user_set": {"added": [str(member.pk)], "removed": []}},
        {"user_set": {"added": [], "removed": [str(member.pk)]}},
    ]
    assert {actor_id(e) for e in on_user + on_group} == {str(admin.pk)}
    assert all(e["before"] is None and e["after"] is None for e in on_user + on_group)


def test_clear_records_the_ids_that_were_there(leza: Leza) -> None:
    from django.contrib.auth.models import Group

    admin = make_user("Gina")
    role = Group.objects.create(name=unique("cleared"))
    role.permissions.add(perm("view_user"), perm("add_user"))
    role.permissions.remove(perm("delete_user"))  # was not there: nothing to record
    role.permissions.add(perm("view_user"))  # already there: nothing either
    r = signed_in(admin).post(f"/roles/{role.pk}/permissions/", {"clear": "1"})
    assert r.json() == {"permissions": []}
    role.permissions.clear()  # already empty

    events = history(leza, "auth.group", role.pk)
    assert [e["action"] for e in events] == ["create", "update", "update"]
    both = sorted([pid("view_user"), pid("add_user")], key=int)
    assert events[1]["diff"] == {"permissions": {"added": both, "removed": []}}
    assert events[2]["diff"] == {"permissions": {"added": [], "removed": both}}
    assert actor_id(events[2]) == str(admin.pk)


def test_clear_and_set_from_the_reverse_side(leza: Leza) -> None:
    from django.contrib.auth.models import Group

    member = make_user("Hugo")
    one, two = (Group.objects.create(name=unique("g")) for _ in range(2))
    member.groups.set([one, two])
    one.user_set.clear()  # reverse side: the user loses group one
    events = [e for e in history(leza, "auth.user", member.pk) if e["action"] == "update"]
    assert [e["diff"]["groups"] for e in events] == [
        {"added": sorted([str(one.pk), str(two.pk)], key=int), "removed": []},
        {"added": [], "removed": [str(one.pk)]},
    ]
    assert history(leza, "auth.group", one.pk)[-1]["diff"] == {
        "user_set": {"added": [], "removed": [str(member.pk)]}
    }


# ------------------------------------------------------------------------ bulk changes


def test_queryset_update_is_one_bulk_update_event(leza: Leza) -> None:
    from django.contrib.auth.models import User

    admin = make_user("Ivy")
    prefix = unique("temp")
    targets = [User.objects.create_user(f"{prefix}-{i}") for i in range(3)]
    r = signed_in(admin).post("/users/deactivate/", {"prefix": prefix})
    assert r.json() == {"rows": 3}

    [event] = audits(leza, action="bulk_update")
    assert event["entity_type"] == "auth.user"
    assert event["entity_id"] == "*"
    assert event["actor"]["id"] == str(admin.pk)
    assert event["request_id"] == r.headers["X-Request-ID"]
    statement = event["diff"]["statement"]
    assert statement["rows"] == 3
    assert statement["values"] == {"is_active": False}
    assert statement["ids"] == [str(u.pk) for u in targets]
    # the bulk change is in each matched user's own history
    assert leza.audit.history("auth.user", targets[0].pk)[-1]["action"] == "bulk_update"
    assert re.fullmatch(
        rf"""["`]?auth_user["`]?\.["`]?username["`]? LIKE '{prefix}%' ESCAPE .+""",
        statement["criteria"],
    ), statement["criteria"]
    assert event["before"] is None
    assert event["after"] is None
    # one event, not one per row
    assert [e["action"] for e in audits(leza, entity_type="auth.user")].count("update") == 0


def test_bulk_update_and_bulk_create_record_each_object(leza: Leza) -> None:
    from djangoproject.models import Document

    docs = Document.objects.bulk_create(
        [Document(title=unique("bulk"), price=Decimal("1.50")) for _ in range(2)]
    )
    for doc in docs:
        doc.price = Decimal("2")
    docs[0].title = "renamed"
    Document.objects.bulk_update(docs, ["title", "price"])
    Document.objects.bulk_update(docs, ["price"])  # no change: nothing recorded

    first = history(leza, "djangoproject.document", docs[0].pk)
    assert [e["action"] for e in first] == ["create", "update"]
    assert first[0]["after"]["price"] == "1.50"
    assert first[1]["diff"] == {
        "price": {"before": "1.50", "after": "2.00"},
        "title": {"before": first[0]["after"]["title"], "after": "renamed"},
    }
    second = history(leza, "djangoproject.document", docs[1].pk)
    assert [e["diff"] for e in second[1:]] == [{"price": {"before": "1.50", "after": "2.00"}}]
    assert audits(leza, action="bulk_update") == []  # bulk_update's own update() calls

    Document.objects.bulk_create([Document(title="maybe")], ignore_conflicts=True)
    [unknown] = audits(leza, action="bulk_create")  # which rows went in is not known
    assert unknown["entity_id"] == "*"
    assert unknown["diff"]["statement"] == {"rows": 1, "conflicts": "ignore", "ids": []}


def test_update_of_everything_and_of_nothing(leza: Leza) -> None:
    from djangoproject.models import Document

    Document.objects.create(title=unique("all"))
    rows = Document.objects.update(body="x")
    assert Document.objects.filter(pk__in=[]).update(body="y") == 0
    first, second = audits(leza, action="bulk_update")
    assert first["diff"]["statement"]["criteria"] == "(all rows)"
    assert first["diff"]["statement"]["rows"] == rows
    assert second["diff"]["statement"]["criteria"] == "FALSE"
    assert second["diff"]["statement"]["rows"] == 0
    assert second["diff"]["statement"]["ids"] == []


# ------------------------------------------------------------------------ deletes


def test_delete_records_the_last_state_and_the_links_it_took(leza: Leza) -> None:
    from django.contrib.auth.models import Group

    admin, member = make_user("Jack"), make_user("Kim")
    role = Group.objects.create(name=unique("doomed"))
    role.permissions.add(perm("view_user"))
    member.groups.add(role)
    r = signed_in(admin).post(f"/roles/{role.pk}/delete/")
    assert r.status_code == 200

    *_, deleted = history(leza, "auth.group", role.pk)
    assert deleted["action"] == "delete"
    assert deleted["before"] == {"id": role.pk, "name": role.name}
    assert deleted["after"] is None
    assert deleted["diff"]["name"] == {"before": role.name, "after": None}
    assert deleted["actor"]["id"] == str(admin.pk)
    # the member lost the group with it, though no m2m_changed was sent
    *_, lost = history(leza, "auth.user", member.pk)
    assert lost["diff"] == {"groups": {"added": [], "removed": [str(role.pk)]}}
    assert lost["actor"]["id"] == str(admin.pk)


def test_queryset_delete_records_each_row(leza: Leza) -> None:
    from django.contrib.auth.models import Group

    prefix = unique("batch")
    groups = [Group.objects.create(name=f"{prefix}-{i}") for i in range(2)]
    Group.objects.filter(name__startswith=prefix).delete()
    for group in groups:
        assert [e["action"] for e in history(leza, "auth.group", group.pk)] == ["create", "delete"]


# ------------------------------------------------------------------------ secrets


def test_masked_fields_are_never_stored_in_clear(leza: Leza, tmp_path: Path) -> None:
    from django.contrib.auth.models import User

    admin = make_user("Lena")
    username = unique("newcomer")
    r = signed_in(admin).post(
        "/users/sign-up/",
        {"username": username, "password": "first-Secret-1", "new_password": "second-Secret-2"},
    )
    user = User.objects.get(pk=r.json()["id"])
    stored_hash = user.password
    User.objects.filter(pk=user.pk, password=stored_hash).update(password="unusable-Secret-3")

    created, changed, bulk = history(leza, "auth.user", user.pk)
    assert created["after"]["password"] == "[Filtered]"
    assert created["after"]["username"] == username
    # the password changed: the record says so, without the value
    assert changed["diff"] == {"password": {"before": "[Filtered]", "after": "[Filtered]"}}
    assert changed["actor"]["id"] == str(admin.pk)
    assert [bulk] == audits(leza, action="bulk_update")
    statement = bulk["diff"]["statement"]
    assert statement["values"] == {"password": "[Filtered]"}
    assert "[Filtered]" in statement["criteria"]
    assert str(user.pk) in statement["criteria"]  # the other condition is kept

    assert leza.flush(5)
    leza.shutdown(2)
    secrets = [b"first-Secret-1", b"second-Secret-2", b"unusable-Secret-3", stored_hash.encode()]
    for path in tmp_path.glob("leza.db*"):
        data = path.read_bytes()
        assert not [s for s in secrets if s in data], path
    with sqlite3.connect(tmp_path / "leza.db") as db:
        dump = "\n".join(db.iterdump())
    assert not [s for s in secrets if s.decode() in dump]


def test_secrets_in_text_fields_and_the_request_are_filtered(leza: Leza, tmp_path: Path) -> None:
    """A text field holding a secret (a pasted URL, a config line) is scrubbed
    like a log message; the request's nested query keys are filtered too."""
    from djangoproject.models import Document

    doc = Document.objects.create(
        title=unique("pasted"),
        body="callback https://a.example/cb?code=Body-Secret-1 and password: Body-Secret-2",
        api_token="Token-Secret-3",
    )
    r = Client().get("/items/7/?user[password]=Query-Secret-4&next=%2Fcb%3Ftoken%3DQuery-Secret-5")
    assert r.status_code == 200
    [created] = history(leza, "djangoproject.document", doc.pk)
    assert created["after"]["body"] == (
        "callback https://a.example/cb?code=[Filtered] and password: [Filtered]"
    )
    assert created["after"]["api_token"] == "[Filtered]"
    endpoints = [e["endpoint"] for e in leza.query.access()]
    assert "/items/7/?user[password]=[Filtered]&next=%2Fcb%3Ftoken%3D[Filtered]" in endpoints
    assert leza.audit.verify()
    leza.shutdown(2)
    for path in tmp_path.glob("leza.db*"):
        data = path.read_bytes()
        assert not [n for n in range(1, 6) if f"Secret-{n}".encode() in data], path


# ------------------------------------------------------------------------ decorated


def test_decorated_model_values_as_stored(leza: Leza) -> None:
    from djangoproject.models import Document

    owner = make_user("Max")
    doc = Document.objects.create(
        title=unique("spec"),
        owner=owner,
        price="12.5",  # a string, stored as 12.50
        published_at=datetime(2024, 5, 1, 12, 30, tzinfo=timezone.utc),
        api_token="tok-abc-123",
    )
    doc.save()  # nothing changed (updated_at is excluded): nothing recorded
    doc.refresh_from_db()
    doc.owner = None
    doc.price = Decimal("12.50")  # the same value
    doc.api_token = "tok-def-456"
    doc.save()

    created, updated = history(leza, "djangoproject.document", doc.pk)
    assert created["after"] == {
        "id": doc.pk,
        "title": doc.title,
        "owner": owner.pk,  # the foreign key's id, under the field's name
        "price": "12.50",
        "published_at": "2024-05-01T12:30:00+00:00",
        "api_token": "[Filtered]",
        "body": "",
    }
    assert updated["before"] == {"owner": owner.pk, "api_token": "[Filtered]"}
    assert updated["after"] == {"owner": None, "api_token": "[Filtered]"}
    assert updated["diff"] == {
        "api_token": {"before": "[Filtered]", "after": "[Filtered]"},
        "owner": {"before": owner.pk, "after": None},
    }
    assert leza.flush(5)


def test_decorated_model_many_to_many(leza: Leza) -> None:
    from djangoproject.models import Document, Tag

    doc, other = (Document.objects.create(title=unique("m2m")) for _ in range(2))
    tag = Tag.objects.create(name=unique("tag"))
    tag_id = str(tag.pk)
    tag.documents.add(doc)  # from the side that is not audited
    doc.related.add(other)  # symmetrical: both documents changed
    tag.delete()  # the link goes with the tag

    assert [e["diff"] for e in history(leza, "djangoproject.document", doc.pk)[1:]] == [
        {"tags": {"added": [tag_id], "removed": []}},
        {"related": {"added": [str(other.pk)], "removed": []}},
        {"tags": {"added": [], "removed": [tag_id]}},
    ]
    assert [e["diff"] for e in history(leza, "djangoproject.document", other.pk)[1:]] == [
        {"related": {"added": [str(doc.pk)], "removed": []}},
    ]
    assert audits(leza, entity_type="djangoproject.tag") == []


def test_update_fields_and_deferred_fields(leza: Leza) -> None:
    from djangoproject.models import Document

    title = unique("partial")
    doc = Document.objects.create(title=title, body="old")
    doc.title, doc.body = "new title", "new body"
    doc.save(update_fields=["body"])  # only body is written
    loaded = Document.objects.only("id", "title").get(pk=doc.pk)
    loaded.title = "deferred"
    loaded.save()  # body is deferred: not written, not read
    *_, by_fields, by_deferred = history(leza, "djangoproject.document", doc.pk)
    assert by_fields["diff"] == {"body": {"before": "old", "after": "new body"}}
    # the before state is the database's, not the instance's unsaved "new title"
    assert by_deferred["diff"] == {"title": {"before": title, "after": "deferred"}}


# ------------------------------------------------------------------ what is not recorded


def test_models_not_audited_record_nothing(configure: Callable[..., Leza]) -> None:
    from django.contrib.auth.models import Group, Permission
    from djangoproject.models import Note

    leza = configure(audit_models=[])  # Group and User no longer named
    note = Note.objects.create(text="hello")
    note.text = "bye"
    note.save()
    Note.objects.filter(pk=note.pk).update(text="again")
    note.delete()
    group = Group.objects.create(name=unique("plain"))
    group.permissions.add(Permission.objects.first())
    group.delete()
    assert audits(leza) == []


def test_rolled_back_changes_record_nothing(leza: Leza) -> None:
    from django.contrib.auth.models import Group
    from django.db import transaction

    class Rollback(Exception):
        pass

    name = unique("ghost")

    def change_then_fail() -> None:
        with transaction.atomic():
            group = Group.objects.create(name=name)
            group.permissions.add(perm("view_user"))
            raise Rollback

    with pytest.raises(Rollback):
        change_then_fail()
    kept = Group.objects.create(name=unique("kept"))
    with transaction.atomic():
        kept.name = kept.name + "-renamed"
        kept.save()
        assert audits(leza) == [audits(leza)[0]]  # only the create: not committed yet
    assert [e["action"] for e in audits(leza)] == ["create", "update"]
    assert all(e["entity_id"] == str(kept.pk) for e in audits(leza))


# ----------------------------------------------------------------- outside requests


def test_management_command_has_no_actor(leza: Leza) -> None:
    from django.contrib.auth.models import Group
    from django.core.management import call_command

    group = Group.objects.create(name=unique("cli"))
    call_command("rename_group", str(group.pk), group.name + "-cli", stdout=StringIO())
    *_, event = history(leza, "auth.group", group.pk)
    assert event["action"] == "update"
    assert event["actor"] is None
    assert event["request_id"] is None
    assert event["ip"] is None
    assert event["diff"] == {"name": {"before": group.name, "after": group.name + "-cli"}}


def test_explicit_record_still_names_its_actor(leza: Leza) -> None:
    event = leza.audit.record(
        action="approve",
        entity_type="auth.group",
        entity_id="1",
        actor={"id": "ops", "name": "Ops"},
    )
    assert event.actor is not None
    assert event.actor.id == "ops"


# ------------------------------------------------------------------ configuration


def test_decorator_needs_a_concrete_model() -> None:
    with pytest.raises(TypeError, match="Django model"):
        audited(object)
    with pytest.raises(LezaConfigError, match="field names"):
        audited(exclude="title")  # type: ignore[arg-type]


def test_checks_report_bad_audit_models(leza_conf: dict[str, Any]) -> None:
    from leza_middleware.django.checks import check_audit_models, check_settings
    from leza_middleware.django.conf import leza_options

    assert check_audit_models() == []
    with override_settings(LEZA=leza_conf):
        assert check_settings() == []  # not an unknown key
        assert "audit_models" not in leza_options(leza_conf)
    bad = {"auth.Group": {"exclude": ["nope"]}, "shop.Order": None}
    with override_settings(LEZA={**leza_conf, "audit_models": bad}):
        errors = check_audit_models()
    assert [e.id for e in errors] == ["leza.E005", "leza.E005"]
    assert "auth.Group has no field 'nope'" in errors[0].msg
    assert "no installed model 'shop.order'" in errors[1].msg
    for value in ("auth", 42, {"auth.Group": {"only": ["x"]}}, ["auth.Group", 3]):
        with override_settings(LEZA={**leza_conf, "audit_models": value}):
            [error] = check_audit_models()
        assert error.id == "leza.E005"
    # names the reverse side of a relation may be excluded too
    with override_settings(
        LEZA={**leza_conf, "audit_models": {"auth.Group": {"exclude": ["user_set"]}}}
    ):
        assert check_audit_models() == []


def test_on_delete_set_null_is_a_bulk_update(leza: Leza) -> None:
    """Django's collector nulls the references with one ``QuerySet.update()``."""
    from djangoproject.models import Document

    owner = make_user("Nina")
    docs = [Document.objects.create(title=unique("owned"), owner=owner) for _ in range(2)]
    owner_id = owner.pk
    owner.delete()
    [bulk] = audits(leza, action="bulk_update")
    assert bulk["entity_type"] == "djangoproject.document"
    statement = bulk["diff"]["statement"]
    assert statement["values"] == {"owner": None}
    assert statement["rows"] == 2
    assert statement["ids"] == [str(d.pk) for d in docs]
    assert f"IN ({owner_id})" in statement["criteria"]
    [deleted] = audits(leza, action="delete")
    assert deleted["entity_id"] == str(owner_id)


def test_decorating_after_start_up_connects_the_model(
    leza: Leza, monkeypatch: pytest.MonkeyPatch
) -> None:
    from djangoproject.models import Note

    from leza_middleware.django import audit

    monkeypatch.setattr(audit, "_decorated", dict(audit._decorated))  # undone after the test
    assert audited(exclude=["text"])(Note) is Note
    note = Note.objects.create(text="secret plans")
    [created] = audits(leza)
    assert created["entity_type"] == "djangoproject.note"
    assert created["after"] == {"id": note.pk}  # text is excluded


def test_audit_models_without_the_app_installed_warns(
    leza_conf: dict[str, Any], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from django.apps import apps

    from leza_middleware.django.conf import _warn_unconnected_audit

    _warn_unconnected_audit(leza_conf)
    assert caplog.records == []
    monkeypatch.setattr(apps, "is_installed", lambda name: False)
    _warn_unconnected_audit(leza_conf)
    [record] = caplog.records
    assert "not in INSTALLED_APPS, so no model change is audited" in record.getMessage()
    caplog.clear()
