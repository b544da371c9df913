"""The HTTP long-polling transport: GET waits for packets, POST sends them.

Any web process serves any request: the session's state and mailbox are in
Redis (sessions.py) and its owner listens on a channel any process can send
to (owner.py). Only the handshake starts an owner, in the process it lands on.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import parse_qs

from channels.exceptions import StopConsumer
from channels.generic.http import AsyncHttpConsumer
from channels.layers import get_channel_layer
from django.conf import settings
from redis.exceptions import RedisError

from config import errors
from realtime import security
from realtime.socketio import limits, owner, packets, sessions

logger = logging.getLogger(__name__)


def origin_allowed(scope: dict[str, Any]) -> bool:
    """Apply the WebSocket handshake's Origin policy to a polling request.

    The one place the polling transport decides on origins. A request
    without Origin passes: browsers send one with every cross-origin XHR
    and every POST, so its absence means a same-origin GET or a non-browser
    client; a cross-site page's no-cors GET (an image, a script) cannot read
    the session id it would open.
    """
    if _header(scope, b"origin") is None:
        return security.host_allowed(scope)
    return security.origin_allowed(scope)


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


#: Polling sessions each client address opened in this process, held until
#: the session's owner closes (SOCKETIO_MAX_SESSIONS_PER_CLIENT).
_sessions = security.ClientSlots()


class RequestError(Exception):
    """Answer the request with ``status`` and the API's error shape."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class PollingConsumer(AsyncHttpConsumer):
    """Serve ``/socket.io/?EIO=4&transport=polling``."""

    # No channel of its own: a request reads the mailbox and sends to the
    # owner's channel. Channels would otherwise make one per request, on the
    # pub/sub layer a SUBSCRIBE and an UNSUBSCRIBE round trip for every poll.
    channel_layer_alias = None

    async def http_request(self, message: dict[str, Any]) -> None:
        # Refuse an oversize POST from its Content-Length, before the body
        # is read, and a body without one as soon as it grows past the limit.
        if getattr(self, "answered", False):
            return
        limit = settings.SOCKETIO_MAX_PAYLOAD
        length = _header(self.scope, b"content-length")
        received = sum(map(len, self.body)) + len(message.get("body", b""))
        # ASCII digits only: str.isdigit() takes "²", which int() refuses.
        declared_too_long = length is not None and not (
            length.isascii() and length.isdigit() and int(length) <= limit
        )
        if declared_too_long or received > limit:
            self.answered = True
            await self.send_error(
                RequestError(413, "payload_too_large", f"body: at most {limit} bytes.")
            )
            raise StopConsumer()
        await super().http_request(message)

    async def handle(self, body: bytes) -> None:
        try:
            await self.serve(body)
        except RequestError as error:
            await self.send_error(error)
        except (RedisError, OSError) as exc:
            logger.warning("socket.io polling: Redis unreachable: %r", exc)
            await self.send_error(
                RequestError(
                    503,
                    "service_unavailable",
                    "session: the session store is unreachable.",
                )
            )

    async def serve(self, body: bytes) -> None:
        method = self.scope["method"]
        if not origin_allowed(self.scope):
            raise RequestError(403, "origin_not_allowed", "Origin: not allowed.")
        if method == "OPTIONS":
            await self.send_response(
                204,
                b"",
                headers=[
                    *self.cors_headers(),
                    (b"Access-Control-Allow-Methods", b"GET, POST, OPTIONS"),
                    (b"Access-Control-Allow-Headers", b"content-type"),
                    (b"Access-Control-Max-Age", b"600"),
                ],
            )
            return
        query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))

        def param(name: str) -> str | None:
            values = query.get(name)
            return values[-1] if values else None

        if param("EIO") != "4":
            raise RequestError(400, "bad_request", "EIO: must be 4.")
        if param("transport") != "polling":
            raise RequestError(
                400, "bad_request", "transport: must be polling or websocket."
            )
        if method not in ("GET", "POST"):
            raise RequestError(400, "bad_request", "method: must be GET or POST.")
        sid = param("sid")
        if sid is None:
            if method != "GET":
                raise RequestError(400, "bad_request", "sid: required for a POST.")
            await self.open_session()
            return
        if not sessions.valid_sid(sid):
            raise RequestError(400, "unknown_sid", "sid: unknown session.")
        store = sessions.SessionStore(sid)
        state = await store.state()
        if state is None:
            raise RequestError(400, "unknown_sid", "sid: unknown session.")
        if state.get("upgraded"):
            raise RequestError(
                400, "bad_request", "transport: the session moved to websocket."
            )
        if method == "GET":
            await self.poll(store, state)
        else:
            await self.post(store, state, body)

    async def open_session(self) -> None:
        address = security.client_address(self.scope)
        limit = settings.SOCKETIO_MAX_SESSIONS_PER_CLIENT
        if address is not None and not _sessions.take(address, limit):
            logger.info("socket.io session refused: %s holds its cap", address)
            raise RequestError(
                429,
                "too_many_sessions",
                f"sid: at most {limit} sessions per client; close one first.",
            )

        async def release() -> None:
            if address is not None:
                _sessions.release(address)

        sid = sessions.new_sid()
        store = sessions.SessionStore(sid)
        session = owner.SessionOwner(
            sid=sid, user=self.scope.get("user"), store=store, on_close=release
        )
        try:
            await session.start()
            await store.create(owner=session.channel)
        except BaseException:
            await session.close("handshake failed")
            raise
        await self.send_packets(
            [
                packets.open_packet(
                    sid=sid,
                    upgrades=["websocket"],
                    ping_interval=settings.SOCKETIO_PING_INTERVAL,
                    ping_timeout=settings.SOCKETIO_PING_TIMEOUT,
                    max_payload=limits.max_payload(),
                )
            ]
        )

    async def poll(self, store: sessions.SessionStore, state: dict[str, str]) -> None:
        if not await store.acquire(sessions.GET):
            await self.end_session(state, "a second GET")
            raise RequestError(
                400, "bad_request", "sid: one GET at a time; the session is closed."
            )
        try:
            items = await store.pop()
        finally:
            await store.release(sessions.GET)
        # Nothing within pingInterval + pingTimeout: the owner is gone.
        await self.send_packets(items or [packets.CLOSE])

    async def post(
        self, store: sessions.SessionStore, state: dict[str, str], body: bytes
    ) -> None:
        if not await store.acquire(sessions.POST):
            await self.end_session(state, "a second POST")
            raise RequestError(
                400, "bad_request", "sid: one POST at a time; the session is closed."
            )
        try:
            try:
                text = body.decode()
            except UnicodeDecodeError:
                raise RequestError(
                    400, "bad_request", "body: must be UTF-8 text."
                ) from None
            items = packets.decode_payload(text)
            if any(item.startswith("b") for item in items):
                # Binary attachments are not supported; their events were
                # refused already (owner.py). Drop them, keep the rest.
                items = [item for item in items if not item.startswith("b")]
            await get_channel_layer().send(
                state["owner"], {"type": owner.PACKETS_TYPE, "packets": items}
            )
        finally:
            await store.release(sessions.POST)
        await self.send_response(
            200, b"ok", headers=[*self.cors_headers(), *self.text_headers()]
        )

    async def end_session(self, state: dict[str, str], reason: str) -> None:
        await get_channel_layer().send(
            state["owner"], {"type": owner.CLOSE_TYPE, "reason": reason}
        )

    # Responses -------------------------------------------------------------------

    def cors_headers(self) -> list[tuple[bytes, bytes]]:
        origin = _header(self.scope, b"origin")
        if origin is None:
            return []
        headers = [
            (b"Access-Control-Allow-Origin", origin.encode("latin-1")),
            (b"Vary", b"Origin"),
        ]
        if settings.SOCKETIO_CORS_CREDENTIALS:
            headers.append((b"Access-Control-Allow-Credentials", b"true"))
        return headers

    def text_headers(self) -> list[tuple[bytes, bytes]]:
        return [
            (b"Content-Type", b"text/plain; charset=UTF-8"),
            (b"Cache-Control", b"no-store"),
        ]

    async def send_packets(self, items: list[str]) -> None:
        await self.send_response(
            200,
            packets.encode_payload(items).encode(),
            headers=[*self.cors_headers(), *self.text_headers()],
        )

    async def send_error(self, error: RequestError) -> None:
        body = errors.error_json(error.code, error.message)
        headers = [
            (b"Content-Type", b"application/json"),
            (b"Cache-Control", b"no-store"),
        ]
        if error.status != 403:
            headers += self.cors_headers()
        await self.send_response(error.status, body, headers=headers)
