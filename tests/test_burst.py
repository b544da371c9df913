"""A burst of status frames to one socket arrives whole and in order."""

from __future__ import annotations

import uuid

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.db import connections

from config.asgi import application
from realtime import groups, notify
from tests.helpers import marker_message

pytestmark = pytest.mark.django_db(transaction=True)

BURST = 500


def frame(payment_id: str, version: int) -> dict:
    return {
        "type": notify.MESSAGE_TYPE,
        "payment": {"id": payment_id, "status": "processing", "version": version},
    }


def test_capacity_holds_a_burst():
    # Past capacity channels-redis drops messages for that socket silently.
    assert settings.CHANNEL_LAYERS["default"]["CONFIG"]["capacity"] >= BURST


async def test_burst_of_500_frames_to_one_socket_arrives_complete_and_in_order():
    communicator = WebsocketCommunicator(
        application,
        "/ws/payments/",
        headers=[(b"origin", b"http://localhost:3000"), (b"host", b"testserver")],
    )
    connected, _ = await communicator.connect(timeout=5)
    assert connected
    socket_id = (await communicator.receive_json_from(timeout=5))["data"]
    layer = get_channel_layer()
    group = groups.socket_group(socket_id)
    payment_ids = [str(uuid.uuid4()) for _ in range(5)]

    # Sent before the socket reads any of them: all queue up in Redis.
    for version in range(2, BURST // len(payment_ids) + 2):
        for payment_id in payment_ids:
            await layer.group_send(group, frame(payment_id, version))

    received = [await communicator.receive_json_from(timeout=10) for _ in range(BURST)]
    # Nothing more: a fence sent behind the burst is the very next frame.
    fence, fence_frame = marker_message()
    await layer.group_send(group, fence)
    assert await communicator.receive_json_from(timeout=10) == fence_frame
    await communicator.disconnect()
    await database_sync_to_async(connections.close_all)()

    assert all(f["event"] == "payment-status" for f in received)
    for payment_id in payment_ids:
        versions = [
            f["data"]["version"] for f in received if f["data"]["id"] == payment_id
        ]
        assert versions == list(range(2, BURST // len(payment_ids) + 2))


async def test_messages_dropped_for_a_full_socket_are_counted_and_warned(
    settings, caplog, core_channel_layer
):
    """The core layer's capacity drops (pub/sub has no capacity: it queues)."""
    from channels.layers import channel_layers

    settings.CHANNEL_LAYERS["default"]["CONFIG"]["capacity"] = 5
    channel_layers.backends.clear()
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add("socket.full", channel)
    dropped_before = notify.stats["dropped"]

    with caplog.at_level("INFO", logger="channels_redis.core"):
        for version in range(2, 12):
            await layer.group_send("socket.full", frame(str(uuid.uuid4()), version))

    assert notify.stats["dropped"] - dropped_before >= 4
    assert any(
        r.levelname == "WARNING" and "over capacity" in r.getMessage()
        for r in caplog.records
    )
