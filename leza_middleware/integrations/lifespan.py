"""ASGI lifespan: write what is queued before the server exits.

uvicorn ends a graceful shutdown by re-raising SIGTERM with its default
action, which kills the process before ``atexit`` hooks run; lifespan's
``shutdown`` is the last moment events still queued can be written. Two users:
``LezaMiddleware`` (around any ASGI app) and Django's ``LezaLifespan``
(Django's handler refuses the lifespan scope).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["answer_lifespan", "flush_off_loop", "lifespan"]

log = logging.getLogger("leza_middleware")


async def flush_off_loop(flush: Callable[[], object]) -> None:
    """Run ``flush`` (it blocks) on a thread, so the event loop keeps going;
    abandoned if the server cancels the shutdown."""
    try:
        import anyio.to_thread

        await anyio.to_thread.run_sync(flush, abandon_on_cancel=True)
    except Exception:
        log.warning("leza: flush at lifespan shutdown failed", exc_info=True)


async def answer_lifespan(
    receive: Receive,
    send: Send,
    flush: Callable[[], object],
    *,
    startup_seen: bool = False,
    on_startup: Callable[[], object] | None = None,
) -> None:
    """Speak the lifespan protocol for an app that does not; ``flush`` at shutdown."""
    if startup_seen:
        await send({"type": "lifespan.startup.complete"})
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            if on_startup is not None:
                on_startup()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await flush_off_loop(flush)
            await send({"type": "lifespan.shutdown.complete"})
            return


async def lifespan(
    app: ASGIApp, scope: Scope, receive: Receive, send: Send, flush: Callable[[], object]
) -> None:
    """Pass lifespan through to ``app``, flushing before its shutdown completes.

    An app that does not speak lifespan (plain ASGI apps often raise on a
    scope type they do not know) is answered for, so the queue is still
    written when the server stops.
    """
    received: list[str] = []
    answered = False

    async def receive_wrapper() -> Message:
        message: Any = await receive()
        received.append(message["type"])
        return message  # type: ignore[no-any-return]

    async def send_wrapper(message: Message) -> None:
        nonlocal answered
        answered = True
        if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
            await flush_off_loop(flush)
        await send(message)

    try:
        await app(scope, receive_wrapper, send_wrapper)
    except Exception:
        if answered:
            raise
        log.debug("leza: the app has no lifespan support; answering it", exc_info=True)
        await answer_lifespan(receive, send, flush, startup_seen="lifespan.startup" in received)
