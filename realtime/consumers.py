"""The payments socket: /ws/payments/ (frames documented in the README)."""

from __future__ import annotations

import contextlib
import logging
from typing import Any
from urllib.parse import parse_qs

from channels.consumer import get_handler_name
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings
from redis.exceptions import RedisError

from ops.metrics import FRAMES_SENT, WEBSOCKETS_OPEN
from realtime import frames, groups, ratelimit
from realtime.frames import FrameError
from realtime.ratelimit import FrameRateLimit
from realtime.subscriptions import PaymentSubscriptions

logger = logging.getLogger(__name__)

# Close codes (RFC 6455 §7.4.1).
POLICY_VIOLATION = 1008
MESSAGE_TOO_BIG = 1009
INTERNAL_ERROR = 1011


def _asks_for_staff_feed(scope: dict[str, Any]) -> bool:
    """Tell whether the socket was opened with ?feed=staff (the live admin).

    Opt-in: a staff user's other pages (the page at /) are not sent every
    payment in the system.
    """
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    return query.get("feed") == ["staff"]


# Channel-layer messages whose handlers touch no database.
_NO_DATABASE = frozenset({"payment.status", "layer.lost"})


class PaymentConsumer(AsyncJsonWebsocketConsumer):
    """Give each connection a socket id and push payment-status frames to it."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        except (RedisError, OSError) as exc:
            # The channel layer is gone (Redis restarting): without it this
            # socket can be pushed nothing, so close it and let the client
            # reconnect and subscribe; a warning, not a traceback per socket.
            logger.warning("channel layer unreachable, socket closed (1011): %r", exc)
            with contextlib.suppress(Exception):
                await send({"type": "websocket.close", "code": INTERNAL_ERROR})
        finally:
            # Channels calls no disconnect() when a handler raises or the
            # server cancels the consumer: leave the groups here, or the
            # pub/sub layer keeps them (and their Redis subscriptions) for
            # the life of the process, and uncount the socket.
            self._uncount()
            await self._leave_all()

    async def dispatch(self, message: dict[str, Any]) -> None:
        if message["type"] in _NO_DATABASE:
            # Channels closes stale database connections before every
            # handler: a hop to a worker thread per frame, 3-10 % of the web
            # process's loop under fan-out. These handlers read no database.
            await getattr(self, get_handler_name(message))(message)
        else:
            await super().dispatch(message)

    async def connect(self) -> None:
        self.closing = False
        self.socket_id = groups.new_socket_id()
        self.joined: set[str] = set()
        self.subscriptions = PaymentSubscriptions(join=self._join, leave=self._leave)
        self.rate_limit = FrameRateLimit.from_settings()
        await self._join(groups.socket_group(self.socket_id))
        user = self.scope.get("user")
        if user is not None and user.is_authenticated:
            await self._join(groups.user_group(user.pk))
            if user.is_staff and _asks_for_staff_feed(self.scope):
                await self._join(groups.STAFF_GROUP)
        await self.accept()
        WEBSOCKETS_OPEN.inc()
        self.counted = True
        await self.send_json({"event": "socket-id", "data": self.socket_id})

    async def disconnect(self, code: int) -> None:
        self._uncount()
        await self._leave_all()

    def _uncount(self) -> None:
        if getattr(self, "counted", False):
            self.counted = False
            WEBSOCKETS_OPEN.dec()

    async def _leave_all(self) -> None:
        joined = getattr(self, "joined", set())
        while joined:
            group = joined.pop()
            # One failure (Redis away) must not keep the other groups.
            with contextlib.suppress(Exception):
                await self.channel_layer.group_discard(group, self.channel_name)

    async def close(
        self, code: int | bool | None = None, reason: str | None = None
    ) -> None:
        # Frames queued behind the close (a flood's backlog) and status changes
        # still on their way go unanswered: a send on a closing socket fails
        # inside the server.
        self.closing = True
        await super().close(code, reason)

    async def _join(self, group: str) -> None:
        # Recorded first: a join that fails half-way is left again on close.
        self.joined.add(group)
        await self.channel_layer.group_add(group, self.channel_name)

    async def _leave(self, group: str) -> None:
        await self.channel_layer.group_discard(group, self.channel_name)
        self.joined.discard(group)

    # Client frames ----------------------------------------------------------

    async def receive(
        self, text_data: str | None = None, bytes_data: bytes | None = None
    ) -> None:
        if self.closing:
            return
        size = (
            len(text_data.encode()) if text_data is not None else len(bytes_data or b"")
        )
        if size > settings.REALTIME_MAX_FRAME_BYTES:
            # realtime.server refuses these already (its message size limit);
            # this covers other servers.
            await self.close(code=MESSAGE_TOO_BIG)
            return
        if await ratelimit.admit(
            self.rate_limit,
            unit="frame",
            holder="socket",
            warn=self.send_error,
            close=self._close_flooding,
        ):
            await self.receive_json(text_data if text_data is not None else bytes_data)

    async def _close_flooding(self) -> None:
        logger.warning("closing a socket that kept flooding (1008)")
        await self.close(code=POLICY_VIOLATION)

    async def receive_json(self, content: str | bytes, **kwargs: Any) -> None:
        """Answer one client frame; every refusal is a FrameError, sent here."""
        try:
            frame = frames.parse(content)
            action = frame["action"]
            if action == "ping":
                await self.send_json({"event": "pong"})
            elif action == "subscribe":
                await self.subscribe(frame)
            else:
                await self.unsubscribe(frame)
        except FrameError as error:
            await self.send_error(error.code, error.message)

    async def subscribe(self, content: dict[str, Any]) -> None:
        snapshot = await self.subscriptions.subscribe(content, self.scope.get("user"))
        if snapshot is not None:
            await self._send_status(snapshot)

    async def unsubscribe(self, content: dict[str, Any]) -> None:
        await self.subscriptions.unsubscribe(content)

    # Channel-layer handlers ---------------------------------------------------

    async def payment_status(self, event: dict[str, Any]) -> None:
        await self._send_status(event["payment"])

    async def layer_lost(self, event: dict[str, Any]) -> None:
        # The pub/sub layer lost Redis for a moment (realtime.layers): frames
        # meant for this socket may be gone. Closing makes the client
        # reconnect and subscribe, and the snapshot is the truth.
        logger.debug("channel layer subscription lost, socket closed (1011)")
        await self.close(code=INTERNAL_ERROR)

    # Sending --------------------------------------------------------------------

    async def _send_status(self, payment: dict[str, Any]) -> None:
        if self.closing:
            return
        if self.subscriptions.is_new(payment):
            FRAMES_SENT.labels("json").inc()
            await self.send_json({"event": "payment-status", "data": payment})

    async def send_error(self, code: str, message: str) -> None:
        await self.send_json(
            {"event": "error", "data": {"code": code, "message": message}}
        )
