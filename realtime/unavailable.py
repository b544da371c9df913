"""A clean answer when Redis or the database is away, not daphne's 500.

Channels' consumers ask the channel layer for their channel name before any
handler runs (``AsyncConsumer.__call__``), and Channels' AuthMiddleware reads
a session cookie's user from the database before the consumer exists, so
with either unreachable a Socket.IO request or a WebSocket handshake fails
outside the consumer's own error handling: daphne logs the traceback at
ERROR and answers 500. Wrapped here, the same failure is one warning line
and a ``503 service_unavailable`` (HTTP, with ``Retry-After``) or a close
(WebSocket: 403 at the handshake, 1011 after).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from django.db import OperationalError
from redis.exceptions import RedisError

from config import errors

logger = logging.getLogger(__name__)

INTERNAL_ERROR = 1011
RETRY_AFTER = b"%d" % errors.DATABASE_RETRY_AFTER


class Unavailable:
    """ASGI middleware: one of ``caught`` out of ``inner`` becomes a clean refusal."""

    caught: tuple[type[BaseException], ...] = ()
    #: Said in the log line, then in the 503's body.
    unreachable = ""
    message = ""

    def __init__(self, inner: Any, *, name: str) -> None:
        self.inner = inner
        self.name = name

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        started = False

        async def tracked_send(message: dict[str, Any]) -> None:
            nonlocal started
            if message["type"] in ("http.response.start", "websocket.accept"):
                started = True
            await send(message)

        try:
            await self.inner(scope, receive, tracked_send)
        except self.caught as exc:
            logger.warning("%s: %s, refused: %r", self.name, self.unreachable, exc)
            with contextlib.suppress(Exception):
                await self.refuse(scope["type"], started, send)

    async def refuse(self, kind: str, started: bool, send: Any) -> None:
        if kind == "websocket":
            await send(
                {"type": "websocket.close", "code": INTERNAL_ERROR}
                if started
                else {"type": "websocket.close"}
            )
            return
        if started:
            # The status is out: end the body, there is nothing else to say.
            await send({"type": "http.response.body", "body": b""})
            return
        body = errors.error_json("service_unavailable", self.message)
        await send(
            {
                "type": "http.response.start",
                "status": 503,
                "headers": [
                    (b"Content-Type", b"application/json"),
                    (b"Content-Length", b"%d" % len(body)),
                    (b"Cache-Control", b"no-store"),
                    (b"Retry-After", RETRY_AFTER),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class RedisUnavailable(Unavailable):
    caught = (RedisError, OSError)
    unreachable = "Redis unreachable"
    message = "server: Redis is unreachable; retry shortly."


class DatabaseUnavailable(Unavailable):
    caught = (OperationalError,)
    unreachable = "database unavailable"
    message = errors.DATABASE_UNAVAILABLE[1]
