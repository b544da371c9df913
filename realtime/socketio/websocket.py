"""The WebSocket transport: a session opened on it, or upgraded to it from polling.

Opened on a WebSocket, the session's owner lives in this consumer, listens
on the consumer's channel and writes to the socket directly. Upgraded from
polling, the owner stays where the session opened: this consumer answers the
probe, releases the pending GET (a noop through the mailbox, wherever that
GET is held), then asks the owner to deliver to this consumer's channel (the
owner drains the mailbox into it first) and sends the client's packets to
the owner. Either way the socket holds no Redis connection of its own: its
channel is process-local, multiplexed by channels-redis over one connection.

Every frame counts against the per-session rate limit (realtime.ratelimit),
and every way out (a close, a crash in a handler, the channel layer lost)
leaves the groups and deletes the session's keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any
from urllib.parse import parse_qs

from channels.consumer import get_handler_name
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from redis.exceptions import RedisError

from realtime import notify, ratelimit
from realtime.layers import LOST_MESSAGE_TYPE
from realtime.ratelimit import FrameRateLimit
from realtime.socketio import limits, owner, packets, sessions

logger = logging.getLogger(__name__)

PROBE = "probe"
#: A Socket.IO CONNECT, to any namespace, in an Engine.IO message.
CONNECT = packets.MESSAGE + str(packets.CONNECT)
#: Seconds between noops answering the client's polls while its upgrade is
#: pending: engine.io's server's value (100 ms). The upgrade itself must
#: complete within SOCKETIO_UPGRADE_TIMEOUT (engine.io's upgradeTimeout).
FAST_UPGRADE_INTERVAL = 0.1
# Close codes (RFC 6455 §7.4.1).
POLICY_VIOLATION = 1008
MESSAGE_TOO_BIG = 1009
INTERNAL_ERROR = 1011

# Channel-layer messages whose handlers touch no database.
_NO_DATABASE = frozenset({owner.DELIVER_TYPE, notify.MESSAGE_TYPE, LOST_MESSAGE_TYPE})


class WebSocketConsumer(AsyncWebsocketConsumer):
    """Serve ``/socket.io/?EIO=4&transport=websocket[&sid=...]``."""

    session: owner.SessionOwner | None = None
    store: sessions.SessionStore | None = None
    owner_channel = ""
    upgraded = False
    closing = False
    ended = False
    rate_limit: FrameRateLimit | None = None
    releaser: asyncio.Task | None = None
    deadline: asyncio.Task | None = None
    watchdog: asyncio.Task | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        except (RedisError, OSError) as exc:
            # Redis away: the session cannot be served; the client reconnects.
            logger.warning("socket.io websocket: Redis unreachable (1011): %r", exc)
            with contextlib.suppress(Exception):
                await send({"type": "websocket.close", "code": INTERNAL_ERROR})
        finally:
            # Channels calls no disconnect() when a handler raises or the
            # server cancels the consumer: end the session here too, or its
            # groups (pub/sub subscriptions) and keys outlive it.
            await self.end("websocket consumer ended")

    async def dispatch(self, message: dict[str, Any]) -> None:
        if message["type"] in _NO_DATABASE:
            # No hop to a thread to close stale database connections
            # (realtime.consumers.PaymentConsumer.dispatch).
            await getattr(self, get_handler_name(message))(message)
        else:
            await super().dispatch(message)

    async def connect(self) -> None:
        query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))

        def param(name: str) -> str | None:
            values = query.get(name)
            return values[-1] if values else None

        if param("EIO") != "4" or param("transport") != "websocket":
            await self.close()
            return
        self.rate_limit = FrameRateLimit.from_settings()
        sid = param("sid")
        if sid is None:
            await self.open_session()
            return
        try:
            state = None
            if sessions.valid_sid(sid):
                self.store = sessions.SessionStore(sid)
                state = await self.store.state()
        except (RedisError, OSError) as exc:
            logger.warning("socket.io upgrade: Redis unreachable: %r", exc)
            state = None
        if state is None or state.get("upgraded"):
            await self.close()
            return
        self.owner_channel = state["owner"]
        await self.accept()
        # engine.io's upgradeTimeout: from the transport's opening to "5",
        # probe or no probe.
        self.deadline = asyncio.create_task(self.upgrade_deadline())

    async def open_session(self) -> None:
        sid = sessions.new_sid()
        self.session = owner.SessionOwner(
            sid=sid,
            user=self.scope.get("user"),
            deliver=self.send_packets,
            on_close=self.owner_closed,
            channel=self.channel_name,
        )
        await self.session.start()
        await self.accept()
        await self.send(
            text_data=packets.open_packet(
                sid=sid,
                upgrades=[],
                ping_interval=settings.SOCKETIO_PING_INTERVAL,
                ping_timeout=settings.SOCKETIO_PING_TIMEOUT,
                max_payload=limits.max_payload(),
            )
        )

    async def close(
        self, code: int | bool | None = None, reason: str | None = None
    ) -> None:
        # Frames still queued behind the close go unanswered.
        self.closing = True
        await super().close(code, reason)

    async def owner_closed(self) -> None:
        if not self.closing:
            await self.close()

    async def send_packets(self, items: list[str]) -> None:
        for item in items:
            await self.send(text_data=item)

    # Client frames --------------------------------------------------------------

    async def receive(
        self, text_data: str | None = None, bytes_data: bytes | None = None
    ) -> None:
        if self.closing:
            return
        size = len(text_data.encode()) if text_data is not None else len(bytes_data)
        if size > settings.REALTIME_MAX_FRAME_BYTES:
            # realtime.server refuses these already; this covers other servers.
            await self.close(code=MESSAGE_TOO_BIG)
            return
        assert self.rate_limit is not None
        refuse = None
        if text_data is not None and text_data.startswith(CONNECT):
            # A refused CONNECT is answered (SessionOwner.refused).
            async def refuse(code: str, message: str) -> None:
                await self.refuse_connect(text_data[1:], code, message)

        if not await ratelimit.admit(
            self.rate_limit,
            unit="packet",
            holder="session",
            warn=self.emit_error,
            close=self.close_flooding,
            refuse=refuse,
        ):
            return
        if text_data is None:
            # Binary frames carry attachments of binary events, refused by
            # the owner already: dropped.
            return
        if self.session is not None:
            await self.session.handle([text_data], limited=True)
        elif self.upgraded:
            await self.channel_layer.send(
                self.owner_channel,
                {"type": owner.PACKETS_TYPE, "packets": [text_data], "limited": True},
            )
        elif text_data == packets.PING + PROBE:
            await self.send(text_data=packets.PONG + PROBE)
            if self.releaser is None:
                self.releaser = asyncio.create_task(self.release_polls())
        elif text_data == packets.UPGRADE:
            await self.upgrade()
        # Anything else before the upgrade completes is not for us.

    async def upgrade(self) -> None:
        for task in (self.deadline, self.releaser):
            if task is not None:
                task.cancel()
        assert self.store is not None
        if not await self.store.mark_upgraded():
            await self.close()
            return
        self.upgraded = True
        self.heard = asyncio.Event()
        self.watchdog = asyncio.create_task(self.watch_owner())
        # From here the owner delivers to this channel, the mailbox's
        # content first.
        await self.channel_layer.send(
            self.owner_channel,
            {"type": owner.UPGRADE_TYPE, "channel": self.channel_name},
        )

    async def emit_error(self, code: str, message: str) -> None:
        """Tell the client of refused frames, as the owner does (an error event).

        Through the owner, which knows whether the namespace is connected:
        an event before the namespace's CONNECT is not the protocol. Nothing
        before the upgrade completes: the probe's transport carries only its
        answer to the probe (engine.io-client fails the upgrade on anything
        else).
        """
        if self.session is not None:
            await self.session.emit_error(code, message)
        elif self.upgraded:
            await self.channel_layer.send(
                self.owner_channel,
                {"type": owner.ERROR_TYPE, "code": code, "message": message},
            )

    async def refuse_connect(self, data: str, code: str, message: str) -> None:
        if self.session is not None:
            await self.session.refused(data, code, message)
        elif self.upgraded:
            await self.channel_layer.send(
                self.owner_channel,
                {
                    "type": owner.REFUSED_TYPE,
                    "data": data,
                    "code": code,
                    "message": message,
                },
            )

    async def close_flooding(self) -> None:
        logger.warning("closing a socket.io websocket that kept flooding (1008)")
        await self.close(code=POLICY_VIOLATION)

    # Upgrade ----------------------------------------------------------------------

    async def upgrade_deadline(self) -> None:
        await asyncio.sleep(settings.SOCKETIO_UPGRADE_TIMEOUT)
        logger.debug(
            "socket.io upgrade not completed in %s s", settings.SOCKETIO_UPGRADE_TIMEOUT
        )
        # The session stays on polling; only this transport goes.
        await self.close()

    async def release_polls(self) -> None:
        """Answer the client's polls with noops, wherever held, until it upgrades.

        The client pauses polling once it reads 3probe, then waits for its
        pending GET to return. It reads the WebSocket and its polls in
        whatever order they arrive, so a single noop may answer a GET sent
        before it paused, leaving the next one to wait for a ping
        (pingInterval); engine.io's server repeats the noop for this reason.
        """
        assert self.store is not None
        try:
            await self.store.push(packets.NOOP)
            while await self.store.release_poll():
                await asyncio.sleep(FAST_UPGRADE_INTERVAL)
        except (RedisError, OSError) as exc:
            logger.warning("socket.io upgrade: Redis unreachable: %r", exc)
        # The session is over: no upgrade.
        await self.close()

    async def watch_owner(self) -> None:
        # The owner pings every pingInterval: a longer silence means it is gone.
        wait = settings.SOCKETIO_PING_INTERVAL + settings.SOCKETIO_PING_TIMEOUT
        while True:
            self.heard.clear()
            try:
                await asyncio.wait_for(self.heard.wait(), wait)
            except TimeoutError:
                await self.send(text_data=packets.CLOSE)
                await self.close()
                return

    # Channel-layer handlers -----------------------------------------------------

    async def sio_deliver(self, message: dict[str, Any]) -> None:
        """Packets from the owner of the upgraded session, for the client."""
        if self.closing or not self.upgraded:
            return
        self.heard.set()
        items = message["packets"]
        await self.send_packets(items)
        if packets.CLOSE in items:
            await self.close()

    async def payment_status(self, message: dict[str, Any]) -> None:
        if self.session is not None:
            await self.session.dispatch(message)

    async def layer_lost(self, message: dict[str, Any]) -> None:
        # The pub/sub layer lost Redis for a moment (realtime.layers): packets
        # meant for this session may be gone. The session ends; the client
        # reconnects and subscribes, and the snapshot is the truth.
        logger.debug("channel layer subscription lost, socket.io session closed")
        await self.close(code=INTERNAL_ERROR)
        await self.end("channel layer subscription lost")

    # The end --------------------------------------------------------------------

    async def disconnect(self, code: int) -> None:
        await self.end("websocket closed")

    async def end(self, reason: str) -> None:
        """Leave the groups and delete the session's keys; once, whichever way out."""
        if self.ended:
            return
        self.ended = True
        for task in (self.releaser, self.deadline, self.watchdog):
            if task is not None:
                task.cancel()
        if self.session is not None:
            await self.session.close(reason)
        if self.upgraded:
            # The client left: its session ends with its transport. Both
            # ways, each on its own: the owner leaves its groups, and the
            # keys go even if the owner is gone.
            with contextlib.suppress(Exception):
                await self.channel_layer.send(
                    self.owner_channel, {"type": owner.CLOSE_TYPE, "reason": reason}
                )
            with contextlib.suppress(Exception):
                await self.store.close(read=False)
