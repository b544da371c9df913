"""The payments socket: /ws/payments/ (frames documented in the README)."""

from __future__ import annotations

import contextlib
import json
import logging
import uuid
from typing import Any
from urllib.parse import parse_qs

from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings
from redis.exceptions import RedisError

from payments import selectors
from realtime import groups
from realtime.ratelimit import TokenBucket

logger = logging.getLogger(__name__)

# Close codes (RFC 6455 §7.4.1).
POLICY_VIOLATION = 1008
MESSAGE_TOO_BIG = 1009
INTERNAL_ERROR = 1011
# Payments whose last sent version a socket remembers. A staff socket
# (staff.payments) sees every payment, so without a bound the dict grows for
# as long as the admin stays open; past it the oldest is forgotten, and only
# a re-push of that old a payment could reach the socket twice.
MAX_TRACKED_VERSIONS = 10_000


@database_sync_to_async
def _payment_visible(payment_id: str, client_secret: str, user: Any) -> bool:
    payment = selectors.payment_get_visible(
        payment_id=payment_id, client_secret=client_secret, user=user
    )
    return payment is not None


@database_sync_to_async
def _payment_snapshot(payment_id: str, client_secret: str, user: Any) -> dict | None:
    return selectors.payment_public_data(
        payment_id=payment_id, client_secret=client_secret, user=user
    )


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
            # Channels calls no disconnect() after a crash: leave the groups
            # here, or the pub/sub layer would keep them (and their Redis
            # subscriptions) for the life of the process.
            for group in getattr(self, "joined", ()):
                with contextlib.suppress(Exception):
                    await self.channel_layer.group_discard(group, self.channel_name)

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
        self.subscriptions: set[str] = set()
        # payment id → highest version sent, so a change that reaches this
        # socket through two groups (or a snapshot and a live frame) goes once.
        self.sent_versions: dict[str, int] = {}
        # Bursts big enough for a reconnecting client to subscribe again to
        # every payment it may follow at once.
        self.bucket = TokenBucket(
            rate=settings.REALTIME_RATE_LIMIT,
            burst=max(
                2 * settings.REALTIME_RATE_LIMIT, settings.REALTIME_MAX_SUBSCRIPTIONS
            ),
        )
        # Frames refused by the rate limit since the client last calmed down
        # (let the bucket fill); a burst's worth of them closes.
        self.refused = 0
        await self._join(groups.socket_group(self.socket_id))
        user = self.scope.get("user")
        if user is not None and user.is_authenticated:
            await self._join(groups.user_group(user.pk))
            if user.is_staff and _asks_for_staff_feed(self.scope):
                await self._join(groups.STAFF_GROUP)
        await self.accept()
        await self.send_json({"event": "socket-id", "data": self.socket_id})

    async def disconnect(self, code: int) -> None:
        for group in getattr(self, "joined", ()):
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
        if not self.bucket.take():
            self.refused += 1
            if self.refused == 1:
                await self.send_error(
                    "rate_limited",
                    f"frame: at most {settings.REALTIME_RATE_LIMIT:g} frames a "
                    "second; slow down or the socket is closed.",
                )
            elif self.refused >= 2 * settings.REALTIME_RATE_LIMIT:
                logger.warning("closing a socket that kept flooding (1008)")
                await self.close(code=POLICY_VIOLATION)
            return
        if self.bucket.tokens >= self.bucket.burst - 1:
            # The bucket was full: the client calmed down, the count starts
            # over. Not on any frame let through, or a flood that waits for
            # each refilled token (every 1/rate s) would never be closed.
            self.refused = 0
        if text_data is None:
            await self.send_error(
                "binary_not_supported", "frame: send JSON text frames."
            )
            return
        try:
            content = json.loads(text_data)
        except (ValueError, RecursionError):
            await self.send_error("invalid_json", "frame: not valid JSON.")
            return
        if not isinstance(content, dict):
            await self.send_error("invalid_frame", "frame: must be a JSON object.")
            return
        await self.receive_json(content)

    async def receive_json(self, content: dict[str, Any], **kwargs: Any) -> None:
        action = content.get("action")
        if action == "ping":
            await self.send_json({"event": "pong"})
        elif action == "subscribe":
            await self.subscribe(content)
        elif action == "unsubscribe":
            await self.unsubscribe(content)
        else:
            await self.send_error(
                "unknown_action",
                "action: must be one of subscribe, unsubscribe, ping.",
            )

    async def subscribe(self, content: dict[str, Any]) -> None:
        payment_id = content.get("payment_id")
        client_secret = content.get("client_secret", "")
        if not isinstance(payment_id, str) or not payment_id:
            await self.send_error("invalid_frame", "payment_id: must be a string.")
            return
        if not isinstance(client_secret, str):
            await self.send_error("invalid_frame", "client_secret: must be a string.")
            return
        try:
            payment_id = str(uuid.UUID(payment_id))
        except ValueError:
            await self._not_found()
            return
        if (
            payment_id not in self.subscriptions
            and len(self.subscriptions) >= settings.REALTIME_MAX_SUBSCRIPTIONS
        ):
            await self.send_error(
                "too_many_subscriptions",
                f"payment_id: at most {settings.REALTIME_MAX_SUBSCRIPTIONS} "
                "subscriptions per socket; unsubscribe first.",
            )
            return
        user = self.scope.get("user")
        # Check before joining: a socket that joined the payment's group for
        # a refused subscribe, even for a moment, could be sent a status
        # change committed in that moment, and the frame would reach it.
        if not await _payment_visible(payment_id, client_secret, user):
            await self._not_found()
            return
        # Join before reading: a change committed after the read arrives as a
        # live frame, one committed before it is in the snapshot, and
        # _send_status drops whichever copy comes second. (On the pub/sub
        # layer the join is a SUBSCRIBE written before the read; Redis runs
        # it first unless the packet itself is delayed past the worker's
        # PUBLISH, which a loopback or LAN link does not do.)
        group = groups.payment_group(payment_id)
        await self._join(group)
        self.subscriptions.add(payment_id)
        snapshot = await _payment_snapshot(payment_id, client_secret, user)
        if snapshot is not None:  # it was visible a moment ago and stays so
            await self._send_status(snapshot)

    async def _not_found(self) -> None:
        await self.send_error(
            "payment_not_found",
            "payment_id: no payment with this id is visible to you.",
        )

    async def unsubscribe(self, content: dict[str, Any]) -> None:
        payment_id = content.get("payment_id")
        try:
            # The same spelling subscribe stored, whatever case the client uses.
            payment_id = str(uuid.UUID(payment_id))
        except (TypeError, ValueError, AttributeError):
            payment_id = None
        if payment_id not in self.subscriptions:
            await self.send_error(
                "not_subscribed", "payment_id: this socket does not follow it."
            )
            return
        self.subscriptions.discard(payment_id)
        await self._leave(groups.payment_group(payment_id))

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
        payment_id, version = str(payment["id"]), int(payment["version"])
        if version <= self.sent_versions.get(payment_id, 0):
            return
        self.sent_versions.pop(payment_id, None)  # re-inserted as the newest
        self.sent_versions[payment_id] = version
        if len(self.sent_versions) > MAX_TRACKED_VERSIONS:
            del self.sent_versions[next(iter(self.sent_versions))]
        await self.send_json({"event": "payment-status", "data": payment})

    async def send_error(self, code: str, message: str) -> None:
        await self.send_json(
            {"event": "error", "data": {"code": code, "message": message}}
        )
