"""The WebSocket transport: a session opened on it, or upgraded to it from polling.

Opened on a WebSocket, the session's owner lives in this consumer and
writes to the socket directly. Upgraded from polling, the owner stays where
the session opened: this consumer answers the probe, releases the pending
GET (a noop through the mailbox, wherever that GET is held), then reads the
mailbox onto the socket and sends the client's packets to the owner.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from urllib.parse import parse_qs

from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from redis.exceptions import RedisError

from realtime.socketio import owner, packets, sessions

logger = logging.getLogger(__name__)

PROBE = "probe"
#: Seconds between noops answering the client's polls while its upgrade is
#: pending, and seconds it has to send the upgrade packet after the probe:
#: engine.io's server's values (100 ms; upgradeTimeout, 10 s).
FAST_UPGRADE_INTERVAL = 0.1
UPGRADE_TIMEOUT = 10.0


class WebSocketConsumer(AsyncWebsocketConsumer):
    """Serve ``/socket.io/?EIO=4&transport=websocket[&sid=...]``."""

    session: owner.SessionOwner | None = None
    store: sessions.SessionStore | None = None
    owner_channel = ""
    upgraded = False
    reader: asyncio.Task | None = None
    releaser: asyncio.Task | None = None

    async def connect(self) -> None:
        query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))

        def param(name: str) -> str | None:
            values = query.get(name)
            return values[-1] if values else None

        if param("EIO") != "4" or param("transport") != "websocket":
            await self.close()
            return
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

    async def open_session(self) -> None:
        sid = sessions.new_sid()
        self.session = owner.SessionOwner(
            sid=sid,
            user=self.scope.get("user"),
            deliver=self.send_packets,
            on_close=self.close,
        )
        await self.session.start()
        await self.accept()
        await self.send(
            text_data=packets.open_packet(
                sid=sid,
                upgrades=[],
                ping_interval=settings.SOCKETIO_PING_INTERVAL,
                ping_timeout=settings.SOCKETIO_PING_TIMEOUT,
                max_payload=settings.SOCKETIO_MAX_PAYLOAD,
            )
        )

    async def send_packets(self, items: list[str]) -> None:
        for item in items:
            await self.send(text_data=item)

    async def receive(
        self, text_data: str | None = None, bytes_data: bytes | None = None
    ) -> None:
        if text_data is None:
            # Binary frames carry attachments of binary events, refused by
            # the owner already: dropped.
            return
        if self.session is not None:
            await self.session.handle([text_data])
        elif self.upgraded:
            await self.channel_layer.send(
                self.owner_channel, {"type": owner.PACKETS_TYPE, "packets": [text_data]}
            )
        elif text_data == packets.PING + PROBE:
            await self.send(text_data=packets.PONG + PROBE)
            if self.releaser is None:
                self.releaser = asyncio.create_task(self.release_polls())
        elif text_data == packets.UPGRADE:
            if self.releaser is not None:
                self.releaser.cancel()
            if not await self.store.mark_upgraded():
                await self.close()
                return
            self.upgraded = True
            self.reader = asyncio.create_task(self.read_mailbox())
        # Anything else before the upgrade completes is not for us.

    async def release_polls(self) -> None:
        """Answer the client's polls with noops, wherever held, until it upgrades.

        The client pauses polling once it reads 3probe, then waits for its
        pending GET to return. It reads the WebSocket and its polls in
        whatever order they arrive, so a single noop may answer a GET sent
        before it paused, leaving the next one to wait for a ping
        (pingInterval); engine.io's server repeats the noop for this reason.
        """
        try:
            async with asyncio.timeout(UPGRADE_TIMEOUT):
                await self.store.push(packets.NOOP)
                while await self.store.release_poll():
                    await asyncio.sleep(FAST_UPGRADE_INTERVAL)
        except TimeoutError:
            logger.debug("socket.io upgrade not completed in %s s", UPGRADE_TIMEOUT)
        except (RedisError, OSError) as exc:
            logger.warning("socket.io upgrade: Redis unreachable: %r", exc)
        # The session is over or the client never sent "5": no upgrade.
        await self.close()

    async def read_mailbox(self) -> None:
        try:
            while True:
                items = await self.store.pop()
                if not items:
                    # No ping within pingInterval + pingTimeout: the owner is gone.
                    items = [packets.CLOSE]
                await self.send_packets(items)
                if packets.CLOSE in items:
                    await self.close()
                    return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.warning("socket.io upgraded socket lost its mailbox: %r", exc)
            await self.close(code=1011)

    async def disconnect(self, code: int) -> None:
        if self.session is not None:
            await self.session.close("websocket closed")
        for task in (self.reader, self.releaser):
            if task is not None:
                task.cancel()
        if self.upgraded:
            # The client left: its session ends with its transport.
            with contextlib.suppress(Exception):
                await self.channel_layer.send(
                    self.owner_channel,
                    {"type": owner.CLOSE_TYPE, "reason": "websocket closed"},
                )
