"""Automatic audit of SQLModel changes, made through real requests by real users.

(No ``from __future__ import annotations``: SQLModel reads the relationship
annotations at class creation.)
"""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Request
from sqlalchemy import delete, update
from sqlalchemy.orm import sessionmaker
from sqlmodel import Field, Relationship, Session, SQLModel, create_engine, select
from starlette.testclient import TestClient
from test_privacy import sql_texts

from leza_middleware import Leza, LezaMiddleware, Performer


class RolePermission(SQLModel, table=True):
    role_id: int | None = Field(default=None, foreign_key="role.id", primary_key=True)
    permission_id: int | None = Field(default=None, foreign_key="permission.id", primary_key=True)


class Role(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str
    api_token: str = ""
    permissions: list["Permission"] = Relationship(
        back_populates="roles", link_model=RolePermission
    )


class Permission(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str
    roles: list[Role] = Relationship(back_populates="permissions", link_model=RolePermission)


class Note(SQLModel, table=True):  # not watched when models= narrows it down
    id: int | None = Field(default=None, primary_key=True)
    text: str


USERS = {"alice": Performer(id="u-alice", name="Alice"), "bob": Performer(id="u-bob", name="Bob")}


@pytest.fixture
def world(make_leza: Any, tmp_path: Path) -> Iterator[tuple[Leza, Any, TestClient]]:
    engine = create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    SQLModel.metadata.create_all(engine)
    Sessions = sessionmaker(engine, class_=Session, expire_on_commit=False)
    leza = make_leza(performer=lambda request: USERS.get(request.headers.get("x-user", "")))
    watched = leza.audit.watch(Sessions, models=[Role, Permission])

    with Sessions() as db:
        db.add_all([Permission(name="tracking.view"), Permission(name="tracking.edit"),
                    Permission(name="billing.view")])  # fmt: skip
        db.add(Role(name="dispatcher", api_token="secret-token"))
        db.commit()

    app = FastAPI()

    @app.post("/roles/{role_id}/permissions/{perm}")
    def grant(role_id: int, perm: str) -> dict[str, int]:
        with Sessions() as db:
            role = db.get(Role, role_id)
            assert role is not None
            role.permissions.append(
                db.exec(select(Permission).where(Permission.name == perm)).one()
            )
            db.commit()
        return {"ok": 1}

    @app.delete("/roles/{role_id}/permissions/{perm}")
    def revoke(role_id: int, perm: str) -> dict[str, int]:
        with Sessions() as db:
            role = db.get(Role, role_id)
            assert role is not None
            role.permissions = [p for p in role.permissions if p.name != perm]
            db.commit()
        return {"ok": 1}

    @app.put("/roles/{role_id}")
    async def rename(role_id: int, request: Request) -> dict[str, int]:
        body = await request.json()
        with Sessions() as db:
            role = db.get(Role, role_id)
            assert role is not None
            role.name = body["name"]
            db.commit()
        return {"ok": 1}

    app.add_middleware(LezaMiddleware, leza=leza)
    with TestClient(app) as client:
        yield leza, Sessions, client
    watched.stop()
    engine.dispose()


def history(leza: Leza, entity_type: str, entity_id: Any) -> list[dict[str, Any]]:
    assert leza.flush(5)
    return leza.audit.history(entity_type, entity_id)


def test_role_permissions_story(world: tuple[Leza, Any, TestClient]) -> None:
    leza, _, client = world
    assert client.post("/roles/1/permissions/tracking.view", headers={"x-user": "alice"}).is_success
    assert client.post("/roles/1/permissions/tracking.edit", headers={"x-user": "bob"}).is_success
    assert client.delete(
        "/roles/1/permissions/tracking.view", headers={"x-user": "alice"}
    ).is_success
    assert client.put(
        "/roles/1", json={"name": "senior dispatcher"}, headers={"x-user": "bob"}
    ).is_success

    role = history(leza, "role", 1)
    assert [e["action"] for e in role] == ["create", "update", "update", "update", "update"]
    created, first, second, third, renamed = role
    assert created["actor"] is None  # seeded outside any request
    assert created["after"]["name"] == "dispatcher"
    assert created["after"]["api_token"] == "[Filtered]"  # never stored in clear
    assert first["actor"]["id"] == "u-alice"
    assert first["diff"] == {"permissions": {"added": ["1"], "removed": []}}
    assert second["actor"]["id"] == "u-bob"
    assert second["diff"] == {"permissions": {"added": ["2"], "removed": []}}
    assert third["actor"]["id"] == "u-alice"
    assert third["diff"] == {"permissions": {"added": [], "removed": ["1"]}}
    assert renamed["diff"] == {"name": {"before": "dispatcher", "after": "senior dispatcher"}}
    assert renamed["before"] == {"name": "dispatcher"}  # changed columns only
    assert renamed["actor"]["name"] == "Bob"
    # each change is tied to the request that made it, and ordered by time
    assert all(e["request_id"] for e in role[1:])
    assert [e["timestamp"] for e in role] == sorted(e["timestamp"] for e in role)
    # the other side of the many-to-many sees it too
    perm = history(leza, "permission", 1)
    assert [e["diff"].get("roles") for e in perm[1:]] == [
        {"added": ["1"], "removed": []},
        {"added": [], "removed": ["1"]},
    ]
    assert leza.audit.verify()


def test_bulk_update_and_delete_statements(world: tuple[Leza, Any, TestClient]) -> None:
    leza, Sessions, _ = world
    with Sessions() as db:
        db.execute(update(Role).where(Role.name == "dispatcher").values(name="ops"))
        db.execute(delete(Permission).where(Permission.name.like("billing%")))
        db.commit()
    bulk = list(history(leza, "role", "*"))
    assert len(bulk) == 1
    statement = bulk[0]["diff"]["statement"]
    assert bulk[0]["action"] == "bulk_update"
    assert statement["rows"] == 1
    assert "dispatcher" in statement["criteria"]
    assert statement["values"] == {"name": "ops"}
    assert statement["ids"] == ["1"]  # read just before the statement ran
    # ... so the bulk change is part of that role's own history, in order
    assert history(leza, "role", 1)[-1]["action"] == "bulk_update"
    assert all(e["action"] != "bulk_update" for e in history(leza, "role", 2))
    [gone] = history(leza, "permission", "*")
    assert gone["action"] == "bulk_delete"
    assert gone["diff"]["statement"]["rows"] == 1
    assert gone["diff"]["statement"]["ids"] == ["3"]
    assert history(leza, "permission", 3)[-1]["action"] == "bulk_delete"


def test_bulk_criteria_on_a_secret_column_store_no_value(
    world: tuple[Leza, Any, TestClient], tmp_path: Path
) -> None:
    """``WHERE api_token = 'x'`` rendered inline would store the token: the values
    compared with a secret column are filtered, the other conditions kept."""
    from sqlalchemy import func

    leza, Sessions, _ = world
    with Sessions() as db:
        db.execute(
            update(Role)
            .where(Role.api_token == "secret-token", Role.name == "dispatcher")
            .values(api_token="rotated-Secret-1")
        )
        db.execute(update(Role).where(Role.api_token.in_(["rotated-Secret-1", "other-Secret-2"]))
                   .values(name="ops"))  # fmt: skip
        db.execute(delete(Role).where(func.lower(Role.api_token).like("rotated-secret-%")))
        db.commit()
    first, second = history(leza, "role", "*")[:2]
    statement = first["diff"]["statement"]
    assert statement["criteria"] == "role.api_token = '[Filtered]' AND role.name = 'dispatcher'"
    assert statement["values"] == {"api_token": "[Filtered]"}
    assert second["diff"]["statement"]["criteria"] == "role.api_token IN ('[Filtered]')"
    [gone] = [e for e in history(leza, "role", "*") if e["action"] == "bulk_delete"]
    assert gone["diff"]["statement"]["criteria"] == "lower(role.api_token) LIKE '[Filtered]'"
    assert leza.audit.verify()
    secrets = ["secret-token", "rotated-Secret-1", "other-Secret-2", "rotated-secret-%"]
    texts = sql_texts(leza.storage)
    assert [s for s in secrets for t in texts.values() if s.lower() in t.lower()] == []


def test_delete_keeps_the_last_state_and_unwatched_models_are_silent(
    world: tuple[Leza, Any, TestClient],
) -> None:
    leza, Sessions, _ = world
    with Sessions() as db:
        db.add(Note(text="not audited"))
        perm = db.get(Permission, 3)
        db.delete(perm)
        db.commit()
    [*_, deleted] = history(leza, "permission", 3)
    assert deleted["action"] == "delete"
    assert deleted["before"]["name"] == "billing.view"
    assert deleted["after"] is None
    assert leza.query.audit(entity_type="note") == []


def test_engine_level_bulk_statements(make_leza: Any, tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'core.db'}")
    SQLModel.metadata.create_all(engine)
    leza = make_leza()
    watched = leza.audit.watch(engine, models=["note"])
    with engine.begin() as conn:
        conn.execute(Note.__table__.insert(), [{"text": "a"}, {"text": "b"}])  # type: ignore[attr-defined]
        conn.execute(update(Note).values(text="x"))
    watched.stop()
    assert leza.flush(5)
    [event] = leza.query.audit(entity_type="note")
    assert event["action"] == "bulk_update"
    assert event["diff"]["statement"] == {
        "criteria": "(all rows)",
        "rows": 2,
        "values": {"text": "x"},
        "ids": ["1", "2"],
    }
    assert [e["action"] for e in leza.audit.history("note", 2)] == ["bulk_update"]
    engine.dispose()


def test_watch_rejects_what_it_cannot_watch(make_leza: Any) -> None:
    with pytest.raises(TypeError, match="takes a Session"):
        make_leza().audit.watch(object())
