"""A FastAPI app whose every request is recorded by leza-middleware.

Run it from the repository root (needs the ``fastapi`` extra):

    python examples/fastapi_app/app.py

then, in another shell:

    curl -H 'Authorization: Bearer alice' localhost:8000/items/42
    curl localhost:8000/admin                 # 403: recorded as "denied"
    curl localhost:8000/leza/recent           # the newest access events, as JSON
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request

from leza_middleware import Leza, LezaMiddleware, Performer

HERE = Path(__file__).resolve().parent
USERS = {
    "alice": Performer(id="u-1", name="Alice", email="alice@example.com", role_name="admin"),
    "bob": Performer(id="u-2", name="Bob", email="bob@example.com", role_name="viewer"),
}


def who(request: Request) -> Performer | None:
    """A custom performer: here a toy bearer token naming a user."""
    token = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
    return USERS.get(token)


leza = Leza(
    storage=os.environ.get("LEZA_STORAGE", f"sqlite:///{HERE / 'leza-example.db'}"),
    performer=who,
    app_name="fastapi-example",
)

app = FastAPI(title="leza example")
app.add_middleware(LezaMiddleware, leza=leza)  # <- the one line


@app.get("/items/{item_id}")
async def item(item_id: int) -> dict[str, int]:
    return {"item": item_id}


@app.get("/admin")
async def admin(request: Request) -> dict[str, str]:
    performer = who(request)
    if performer is None or performer.role_name != "admin":
        raise HTTPException(status_code=403, detail="admins only")
    return {"hello": performer.name}


@app.get("/leza/recent")
async def recent() -> list[dict[str, Any]]:
    leza.flush(2)  # a demo nicety: show what was just recorded
    return leza.query.access(limit=10)


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
