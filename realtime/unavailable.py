"""A clean answer when Redis is away, in place of daphne's 500 and traceback.

Channels' consumers ask the channel layer for their channel name before any
handler runs (``AsyncConsumer.__call__``), so with Redis unreachable a
Socket.IO request fails outside the consumer's own error handling: daphne
logs the traceback at ERROR and answers 500. Wrapped here, the same failure
is one warning line and a ``503 service_unavailable`` (HTTP, with
``Retry-After``) or a close (WebSocket: 403 at the handshake, 1011 after).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from redis.exceptions import RedisError

from config import errors

logger = logging.getLogger(__name__)

INTERNAL_ERROR = 1011
RETRY_AFTER = b"5"


class RedisUnavailable:
    """ASGI middleware: a Redis error out of ``inner`` becomes a clean refusal."""

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
        except (RedisError, OSError) as exc:
            logger.warning("%s: Redis unreachable, refused: %r", self.name, exc)
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
        body = errors.error_json(
            "service_unavailable", "server: Redis is unreachable; retry shortly."
        )
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
