"""A session's Socket.IO side: namespace, groups, subscriptions, heartbeat.

It runs in the web process that opened the session (the "owner"), for as
long as the session lives, whichever process serves the session's later
requests: it holds the session's channel-layer channel, joined to
``socket.<namespace sid>``, ``user.<id>`` and ``payment.<id>`` groups, so
status changes reach it on any channel layer (the pub/sub one delivers only
to a listening process); it turns them into packets for the client
(``deliver``: the mailbox in Redis, or the WebSocket itself when the session
opened on one) and takes the client's packets, which other processes send to
its channel. It also sends the pings: a client whose owner died stops
hearing them and reconnects by itself.

No session holds a Redis connection of its own once on a WebSocket: the
owner of a session opened on one listens on the consumer's channel, and an
upgraded session's packets go to the upgraded consumer's channel (both
process-local channels, which channels-redis multiplexes over one connection
per process) instead of the mailbox, which only a pending GET reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from channels.layers import get_channel_layer
from django.conf import settings

from ops.metrics import FRAMES_SENT, socketio_sessions_count
from realtime import groups, notify, ratelimit
from realtime.layers import LOST_MESSAGE_TYPE
from realtime.ratelimit import FrameRateLimit
from realtime.socketio import packets
from realtime.socketio.packets import PacketError
from realtime.socketio.sessions import MAILBOX_CAPACITY, SessionStore
from realtime.subscriptions import PaymentSubscriptions, SubscriptionRefusedError

logger = logging.getLogger(__name__)

#: Channel-layer message types the owner's channel receives.
PACKETS_TYPE = "sio.packets"  # {"packets": [engine packet, ...]} from the client
CLOSE_TYPE = "sio.close"  # the client's transport is gone, or misbehaved
UPGRADE_TYPE = "sio.upgrade"  # {"channel": the upgraded consumer's channel}
#: The upgraded consumer's rate limit: {"code", "message"} to tell the client
#: (the first refusal), {"data": a refused Socket.IO packet, "code", "message"}.
ERROR_TYPE = "sio.error"
REFUSED_TYPE = "sio.refused"
#: What the upgraded consumer's channel receives: {"packets": [...]} for the client.
DELIVER_TYPE = "sio.deliver"

# Owners alive in this process: tasks need a strong reference.
_owners: set[SessionOwner] = set()
socketio_sessions_count(lambda: len(_owners))


class SessionOwner:
    """Serve one Engine.IO session's default namespace from this process."""

    def __init__(
        self,
        *,
        sid: str,
        user: Any,
        store: SessionStore | None = None,
        deliver: Callable[[list[str]], Awaitable[None]] | None = None,
        on_close: Callable[[], Awaitable[None]] | None = None,
        channel: str = "",
    ) -> None:
        """Deliver through ``deliver`` if given (a WebSocket), else ``store``.

        With ``channel`` (the WebSocket consumer's own) the owner listens on
        no channel of its own: the consumer passes it its messages
        (``dispatch``).
        """
        self.sid = sid
        self.user = user
        self.store = store
        self._deliver = deliver
        self._on_close = on_close
        self.layer = get_channel_layer()
        self.channel = channel
        self._own_channel = not channel
        # The upgraded consumer's channel, once the session moved to it
        # (moving_to: from the start of the move); the lock keeps a delivery
        # from landing in the mailbox after it was drained for the move.
        self.upgraded_to = ""
        self.moving_to = ""
        self._delivering = asyncio.Lock()
        self.namespace_sid: str | None = None
        self.joined: set[str] = set()
        self.subscriptions = PaymentSubscriptions(join=self._join, leave=self._leave)
        self.rate_limit = FrameRateLimit.from_settings()
        self.pong = asyncio.Event()
        self.closed = False
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        """Take a channel and start listening and pinging."""
        _owners.add(self)
        self._tasks = [
            asyncio.create_task(self._ping_loop(), name=f"sio-ping-{self.sid}")
        ]
        if self._own_channel:
            # The layer's own prefix: the core layer serves every channel of
            # a process from one Redis key per prefix, one receiver at a time,
            # so a channel of another prefix ("sio.") waited behind the
            # consumers' ("specific.") and the owner heard no packet.
            self.channel = await self.layer.new_channel()
            self._tasks.append(
                asyncio.create_task(
                    self._receive_loop(), name=f"sio-receive-{self.sid}"
                )
            )

    async def close(self, reason: str) -> None:
        """End the session: leave the groups, tell the client, stop the tasks."""
        if self.closed:
            return
        self.closed = True
        logger.debug("socket.io session closed (%s)", reason)
        for group in list(self.joined):
            with contextlib.suppress(Exception):
                await self.layer.group_discard(group, self.channel)
        self.joined.clear()
        # Before the store: once the client can see the close, what the
        # session held (its per-client slot) is free; and apart, so Redis
        # away does not keep it.
        if self._on_close is not None:
            with contextlib.suppress(Exception):
                await self._on_close()
        if self.moving_to:
            # Not through deliver(): close() may run inside it, holding its lock.
            with contextlib.suppress(Exception):
                await self.layer.send(
                    self.moving_to, {"type": DELIVER_TYPE, "packets": [packets.CLOSE]}
                )
        if self.store is not None:
            with contextlib.suppress(Exception):
                await self.store.close(read=not self.upgraded_to)
        _owners.discard(self)
        # Last, as it may cancel the task running this: a receive cancelled
        # is how the pub/sub layer drops the channel's subscription.
        for task in self._tasks:
            task.cancel()

    async def deliver(self, items: list[str]) -> None:
        if self.closed or not items:
            return
        if self._deliver is not None:
            await self._deliver(items)
            return
        assert self.store is not None
        async with self._delivering:
            if self.closed:
                # Closed while this waited for the hand-over: the close
                # packet went out already, nothing may follow it.
                return
            if self.upgraded_to:
                await self.layer.send(
                    self.upgraded_to, {"type": DELIVER_TYPE, "packets": items}
                )
                return
            full = await self.store.push(*items) > MAILBOX_CAPACITY
        if full:
            await self.close("mailbox full: the client does not read")

    async def move_to(self, channel: str) -> None:
        """Deliver to the upgraded consumer's ``channel`` from now on.

        What the mailbox holds goes first, in one message: everything sent
        before the move, in order, and nothing after it is left behind.
        """
        if self.store is None or self.upgraded_to or self.moving_to:
            return
        # Before the take-all: a close() from here on tells this channel. It
        # cannot count on the move finishing (close() cancels the task
        # running it), and a close packet pushed to the mailbox after the
        # take-all reaches no one: the socket would wait for its watchdog
        # (pingInterval + pingTimeout).
        self.moving_to = channel
        async with self._delivering:
            queued = await self.store.take_all()
            self.upgraded_to = channel
            if queued:
                await self.layer.send(
                    channel, {"type": DELIVER_TYPE, "packets": queued}
                )

    # Loops --------------------------------------------------------------------

    async def _receive_loop(self) -> None:
        try:
            while True:
                message = await self.layer.receive(self.channel)
                await self.dispatch(message)
        except asyncio.CancelledError:
            raise
        except Exception:
            # The channel layer failed (Redis away): events may be lost, so
            # the session ends and the client reconnects and subscribes.
            logger.warning("socket.io owner lost its channel layer", exc_info=True)
            await self.close("channel layer error")

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Act on a message of the session's channel."""
        kind = message.get("type")
        if kind == notify.MESSAGE_TYPE:
            await self._send_status(message["payment"])
        elif kind == PACKETS_TYPE:
            await self.handle(message["packets"], limited=message.get("limited", False))
        elif kind == ERROR_TYPE:
            await self.emit_error(message["code"], message["message"])
        elif kind == REFUSED_TYPE:
            await self.refused(message["data"], message["code"], message["message"])
        elif kind == UPGRADE_TYPE:
            await self.move_to(message["channel"])
        elif kind == CLOSE_TYPE:
            await self.close(message.get("reason", "transport closed"))
        elif kind == LOST_MESSAGE_TYPE:
            await self.close("channel layer subscription lost")

    async def _ping_loop(self) -> None:
        # Engine.IO v4: the server pings every pingInterval and the client
        # must answer within pingTimeout; the interval runs from the pong.
        interval = settings.SOCKETIO_PING_INTERVAL
        timeout = settings.SOCKETIO_PING_TIMEOUT
        try:
            while not self.closed:
                await asyncio.sleep(interval)
                if self.store is not None and not await self.store.renew():
                    await self.close("session gone from Redis")
                    return
                self.pong.clear()
                await self.deliver([packets.PING])
                try:
                    await asyncio.wait_for(self.pong.wait(), timeout)
                except TimeoutError:
                    await self.close("ping timeout")
                    return
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.warning("socket.io heartbeat failed", exc_info=True)
            await self.close("heartbeat error")

    # Client packets -----------------------------------------------------------

    async def handle(self, items: list[str], *, limited: bool = False) -> None:
        """Act on Engine.IO packets from the client, in order.

        ``limited``: the transport applied the rate limit to them already
        (the WebSocket consumer, to every frame).
        """
        for item in items:
            if self.closed:
                return
            try:
                kind, data = packets.decode_engine(item)
            except PacketError:
                await self.close("invalid Engine.IO packet")
                return
            if kind == packets.PONG:
                self.pong.set()
            elif kind == packets.CLOSE:
                await self.close("client closed")
            elif kind == packets.MESSAGE:
                if limited or await self._allowed(data):
                    await self._handle_socket(data)
            # Pings, upgrades and noops from the client need no answer here.

    async def _allowed(self, data: str) -> bool:
        async def refuse(code: str, message: str) -> None:
            await self.refused(data, code, message)

        return await ratelimit.admit(
            self.rate_limit,
            unit="packet",
            holder="session",
            warn=self.emit_error,
            close=self._close_flooding,
            refuse=refuse,
        )

    async def refused(self, data: str, code: str, message: str) -> None:
        """Answer a Socket.IO packet (``data``) the rate limit refused, if it must be.

        A CONNECT is answered CONNECT_ERROR: the client waits for the answer
        to its CONNECT, without a timeout, and may read nothing else of the
        namespace first (an error event before the namespace's CONNECT is
        not the protocol). Other packets refused before the CONNECT go
        unanswered (emit_error); a flood closes the session either way.
        """
        try:
            packet = packets.decode_socket(data)
        except PacketError:
            return
        if packet.type != packets.CONNECT or (
            packet.namespace == packets.DEFAULT_NAMESPACE
            and self.namespace_sid is not None
        ):
            return
        await self.deliver(
            [
                packets.encode_socket(
                    packets.CONNECT_ERROR,
                    {"message": message, "data": {"code": code}},
                    namespace=packet.namespace,
                )
            ]
        )

    async def _close_flooding(self) -> None:
        await self.close("flooding")

    async def _handle_socket(self, data: str) -> None:
        try:
            packet = packets.decode_socket(data)
        except PacketError as exc:
            await self.emit_error("invalid_packet", str(exc))
            return
        if packet.namespace != packets.DEFAULT_NAMESPACE:
            if packet.type == packets.CONNECT:
                await self.deliver(
                    [
                        packets.encode_socket(
                            packets.CONNECT_ERROR,
                            {"message": "Invalid namespace"},
                            namespace=packet.namespace,
                        )
                    ]
                )
            return
        if packet.type == packets.CONNECT:
            await self._connect()
        elif packet.type == packets.DISCONNECT:
            await self._disconnect()
        elif packet.type == packets.EVENT and self.namespace_sid is not None:
            await self._event(packet.data)
        elif packet.type in (packets.BINARY_EVENT, packets.BINARY_ACK):
            await self.emit_error(
                "binary_not_supported", "packet: binary events are not supported."
            )
        # ACKs (we never ask for one) and events before CONNECT are ignored.

    async def _connect(self) -> None:
        if self.namespace_sid is not None:
            return
        self.namespace_sid = groups.new_socket_id()
        await self._join(groups.socket_group(self.namespace_sid))
        user = self.user
        if user is not None and user.is_authenticated:
            await self._join(groups.user_group(user.pk))
        await self.deliver(
            [
                packets.encode_socket(packets.CONNECT, {"sid": self.namespace_sid}),
                packets.event("socket-id", self.namespace_sid),
            ]
        )

    async def _disconnect(self) -> None:
        for group in list(self.joined):
            await self._leave(group)
        self.namespace_sid = None
        self.subscriptions = PaymentSubscriptions(join=self._join, leave=self._leave)

    async def _event(self, data: Any) -> None:
        if not isinstance(data, list) or not data or not isinstance(data[0], str):
            await self.emit_error(
                "invalid_packet", "event: must be an array starting with its name."
            )
            return
        name, args = data[0], data[1:]
        content = args[0] if args and isinstance(args[0], dict) else {}
        try:
            if name == "subscribe":
                snapshot = await self.subscriptions.subscribe(content, self.user)
                if snapshot is not None:
                    await self._send_status(snapshot)
            elif name == "unsubscribe":
                await self.subscriptions.unsubscribe(content)
            else:
                await self.emit_error(
                    "unknown_event", "event: must be subscribe or unsubscribe."
                )
        except SubscriptionRefusedError as refused:
            await self.emit_error(refused.code, refused.message)

    # Server packets -------------------------------------------------------------

    async def _send_status(self, payment: dict[str, Any]) -> None:
        if self.namespace_sid is not None and self.subscriptions.is_new(payment):
            FRAMES_SENT.labels("socketio").inc()
            await self.deliver([packets.event("payment-status", payment)])

    async def emit_error(self, code: str, message: str) -> None:
        """Tell the client of a refused packet, as the JSON protocol's error frame."""
        if self.namespace_sid is not None:
            await self.deliver(
                [packets.event("error", {"code": code, "message": message})]
            )

    async def _join(self, group: str) -> None:
        # close() runs in the ping task, maybe while a subscribe waits on the
        # database: a group joined after it had left the others would be
        # kept (and its Redis subscription) for the life of the process.
        if self.closed:
            return
        self.joined.add(group)
        await self.layer.group_add(group, self.channel)
        if self.closed:  # during the add, which close() could not undo
            with contextlib.suppress(Exception):
                await self.layer.group_discard(group, self.channel)

    async def _leave(self, group: str) -> None:
        await self.layer.group_discard(group, self.channel)
        self.joined.discard(group)
