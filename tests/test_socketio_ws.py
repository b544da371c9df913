"""Socket.IO's WebSocket consumer through the ASGI app, on the real Redis layer.

In this process: the owner of an upgraded session too (as a polling
handshake would start it), so a test can break a handler and look at what
the session left in Redis. The real client's paths are in test_socketio.py.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.conf import settings

from config.asgi import application
from payments import selectors
from realtime import groups
from realtime.socketio import limits, owner, packets, sessions
from realtime.socketio.websocket import WebSocketConsumer
from tests.conftest import CORE_LAYER, PUBSUB_LAYER
from tests.factories import PaymentFactory
from tests.test_consumer import group_members, payment_frame_data, send_to_socket

pytestmark = pytest.mark.django_db(transaction=True)

HEADERS = [(b"origin", b"http://localhost:3000"), (b"host", b"testserver")]
OPEN = "/socket.io/?EIO=4&transport=websocket"
TIMEOUT = 5
POLICY_VIOLATION = 1008
INTERNAL_ERROR = 1011


@pytest.fixture
async def redis_client() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(settings.REDIS_URL, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def sockets() -> AsyncIterator[Callable[[str], Awaitable[WebsocketCommunicator]]]:
    opened: list[WebsocketCommunicator] = []

    async def open_socket(path: str = OPEN) -> WebsocketCommunicator:
        communicator = WebsocketCommunicator(application, path, headers=HEADERS)
        opened.append(communicator)
        connected, _ = await communicator.connect(timeout=TIMEOUT)
        assert connected
        return communicator

    yield open_socket
    for communicator in opened:
        if not communicator.future.done():
            await communicator.disconnect(timeout=TIMEOUT)


@pytest.fixture
async def polling_sessions() -> AsyncIterator[
    Callable[[], Awaitable[owner.SessionOwner]]
]:
    """Open sessions as a polling handshake does: their owners in this process."""
    opened: list[owner.SessionOwner] = []

    async def open_session() -> owner.SessionOwner:
        sid = sessions.new_sid()
        store = sessions.SessionStore(sid)
        session = owner.SessionOwner(sid=sid, user=None, store=store)
        opened.append(session)
        await session.start()
        await store.create(owner=session.channel)
        return session

    yield open_session
    for session in opened:
        await session.close("test over")


@pytest.fixture
async def polling_session(polling_sessions) -> owner.SessionOwner:
    return await polling_sessions()


async def connect_namespace(communicator: WebsocketCommunicator) -> str:
    """Send CONNECT; return the namespace sid, past noops left by the upgrade."""
    await communicator.send_to(text_data="40")
    while (packet := await communicator.receive_from(TIMEOUT)) == "6":
        pass
    assert packet.startswith('40{"sid":'), packet
    namespace_sid = json.loads(packet[2:])["sid"]
    assert await communicator.receive_from(TIMEOUT) == (
        f'42["socket-id","{namespace_sid}"]'
    )
    return namespace_sid


async def upgrade(
    sockets: Callable[[str], Awaitable[WebsocketCommunicator]],
    session: owner.SessionOwner,
) -> WebsocketCommunicator:
    upgraded = await sockets(f"{OPEN}&sid={session.sid}")
    await upgraded.send_to(text_data="2probe")
    assert await upgraded.receive_from(TIMEOUT) == "3probe"
    await upgraded.send_to(text_data="5")
    return upgraded


async def session_keys(redis_client: aioredis.Redis) -> list[str]:
    prefix = settings.CHANNEL_LAYERS["default"]["CONFIG"]["prefix"]
    return [key async for key in redis_client.scan_iter(f"{prefix}:sio:*")]


async def until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    """Wait for ``condition`` (another task's or process's work) up to TIMEOUT."""
    async with asyncio.timeout(TIMEOUT):
        while not await condition():
            await asyncio.sleep(0.02)  # polling a state, not a quiet period


async def outputs_until_crash(
    communicator: WebsocketCommunicator, message: str
) -> list[dict[str, Any]]:
    """Return what the consumer sent until it raised ``message``."""
    outputs = []
    with pytest.raises(RuntimeError, match=message):
        while True:
            outputs.append(await communicator.receive_output(TIMEOUT))
    return outputs


def crash_on(monkeypatch: pytest.MonkeyPatch, cls: type, name: str) -> None:
    async def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError(f"{name} broke")

    monkeypatch.setattr(cls, name, broken)


# Every exit path ends the session ---------------------------------------------


async def test_a_crash_in_a_handler_leaves_the_groups_of_a_websocket_session(
    sockets, redis_client, isolated_channel_layer: str, monkeypatch
) -> None:
    communicator = await sockets(OPEN)
    assert (await communicator.receive_from(TIMEOUT)).startswith('0{"sid":')
    namespace_sid = await connect_namespace(communicator)
    group = groups.socket_group(namespace_sid)
    assert await group_members(redis_client, isolated_channel_layer, group) == 1

    crash_on(monkeypatch, owner.SessionOwner, "_event")
    await communicator.send_to(text_data='42["subscribe",{}]')
    assert await outputs_until_crash(communicator, "_event broke") == [
        {"type": "websocket.close"}
    ]

    assert await group_members(redis_client, isolated_channel_layer, group) == 0


async def test_a_crash_in_a_handler_ends_an_upgraded_session_and_its_keys(
    sockets, polling_session, redis_client, isolated_channel_layer: str, monkeypatch
) -> None:
    upgraded = await upgrade(sockets, polling_session)
    namespace_sid = await connect_namespace(upgraded)
    group = groups.socket_group(namespace_sid)
    assert await session_keys(redis_client)

    crash_on(monkeypatch, WebSocketConsumer, "sio_deliver")
    # Answered with an error event, which the broken handler delivers.
    await upgraded.send_to(text_data='42["nonsense"]')
    await outputs_until_crash(upgraded, "sio_deliver broke")

    assert await session_keys(redis_client) == []

    async def owner_left() -> bool:
        return polling_session.closed and not await group_members(
            redis_client, isolated_channel_layer, group
        )

    await until(owner_left, "the owner to leave its groups")


async def test_a_session_closed_during_a_subscribe_keeps_no_group(
    polling_session, redis_client, isolated_channel_layer: str, monkeypatch
) -> None:
    """The ping timeout's close() runs while the subscribe reads the database."""
    payment = await database_sync_to_async(PaymentFactory.create)()
    reading, go_on = threading.Event(), threading.Event()
    visible = selectors.payment_get_visible

    def held(**kwargs: Any) -> Any:
        reading.set()
        go_on.wait(TIMEOUT)
        return visible(**kwargs)

    monkeypatch.setattr(selectors, "payment_get_visible", held)
    await polling_session.handle(["40"])  # the namespace's CONNECT
    subscribe = asyncio.create_task(
        polling_session.handle(
            [
                packets.event(
                    "subscribe",
                    {
                        "payment_id": str(payment.id),
                        "client_secret": payment.client_secret,
                    },
                )
            ]
        )
    )
    assert await asyncio.to_thread(reading.wait, TIMEOUT)
    await polling_session.close("ping timeout")
    go_on.set()
    await asyncio.wait_for(subscribe, TIMEOUT)

    assert polling_session.joined == set()
    group = groups.payment_group(payment.id)
    assert await group_members(redis_client, isolated_channel_layer, group) == 0


@pytest.mark.parametrize("upgraded", [False, True], ids=["opened", "upgraded"])
async def test_a_lost_layer_subscription_closes_the_session_1011(
    sockets, polling_sessions, redis_client, isolated_channel_layer: str, upgraded: bool
) -> None:
    if upgraded:
        session = await polling_sessions()
        communicator = await upgrade(sockets, session)
    else:
        communicator = await sockets(OPEN)
        assert (await communicator.receive_from(TIMEOUT)).startswith('0{"sid":')
    namespace_sid = await connect_namespace(communicator)

    # What realtime.layers does when the pub/sub connection drops.
    layer = get_channel_layer()._get_layer()
    assert all(shard.report_loss() for shard in layer._shards)

    while (output := await communicator.receive_output(TIMEOUT))["type"] != (
        "websocket.close"
    ):
        pass
    assert output == {"type": "websocket.close", "code": INTERNAL_ERROR}
    group = groups.socket_group(namespace_sid)

    async def all_gone() -> bool:
        members = await group_members(redis_client, isolated_channel_layer, group)
        return not members and not await session_keys(redis_client)

    await until(all_gone, "the groups and keys to go")


# Both channel layers -------------------------------------------------------------


@pytest.mark.parametrize("backend", [PUBSUB_LAYER, CORE_LAYER], ids=["pubsub", "core"])
async def test_a_polling_session_is_served_beside_a_websocket_on_either_layer(
    backend: str, settings, sockets, polling_sessions
) -> None:
    """The owner hears the client's packets and its groups' pushes.

    A WebSocket listening in the process first: on the core layer its
    receive held the one Redis read of the process's channels (one key per
    channel prefix), and an owner's channel of another prefix heard nothing.
    """
    from channels.layers import channel_layers

    settings.CHANNEL_LAYERS["default"]["BACKEND"] = backend
    channel_layers.backends.clear()
    communicator = await sockets(OPEN)
    assert (await communicator.receive_from(TIMEOUT)).startswith('0{"sid":')
    session = await polling_sessions()
    # What a POST sends.
    await get_channel_layer().send(
        session.channel, {"type": owner.PACKETS_TYPE, "packets": ["40"]}
    )
    connected = await session.store.pop(timeout=TIMEOUT)
    assert connected[0].startswith('40{"sid":'), connected
    payment = payment_frame_data()
    await send_to_socket(session.namespace_sid, payment)
    assert await session.store.pop(timeout=TIMEOUT) == [
        packets.event("payment-status", payment)
    ]


# The rate limit, on every frame of both kinds of WebSocket ------------------------


@pytest.mark.parametrize("upgraded", [False, True], ids=["opened", "upgraded"])
async def test_every_websocket_frame_counts_against_the_rate_limit(
    sockets, polling_sessions, settings, upgraded: bool
) -> None:
    # Two frames a second, bursts of four (the probe, "5" and "40" take
    # three); pings from the client (no Socket.IO packet, nothing
    # answered) are frames too.
    settings.REALTIME_RATE_LIMIT = 2
    settings.REALTIME_MAX_SUBSCRIPTIONS = 1
    if upgraded:
        session = await polling_sessions()
        communicator = await upgrade(sockets, session)
    else:
        communicator = await sockets(OPEN)
        assert (await communicator.receive_from(TIMEOUT)).startswith('0{"sid":')
    await connect_namespace(communicator)
    for _ in range(20):
        await communicator.send_to(text_data="2")
    error = await communicator.receive_from(TIMEOUT)
    assert error == (
        '42["error",{"code":"rate_limited","message":"packet: at most 2 packets '
        'a second; slow down or the session is closed."}]'
    )
    # A burst's worth of refusals closes.
    assert await communicator.receive_output(TIMEOUT) == {
        "type": "websocket.close",
        "code": POLICY_VIOLATION,
    }


RATE_LIMITED_CONNECT = (
    '44{"message":"packet: at most 1 packets a second; slow down or the session '
    'is closed.","data":{"code":"rate_limited"}}'
)


@pytest.mark.parametrize("transport", ["polling", "opened", "upgraded"])
async def test_a_refused_connect_is_answered_connect_error(
    sockets, polling_sessions, settings, transport: str
) -> None:
    # The client waits for the answer to its CONNECT for ever, and may read
    # nothing else of the namespace before it: no error event.
    settings.REALTIME_RATE_LIMIT = 1
    settings.REALTIME_MAX_SUBSCRIPTIONS = 1  # bursts of two
    if transport == "polling":
        session = await polling_sessions()
        await session.handle(['42["early"]', '42["early"]', "40"])
        assert await session.store.pop(timeout=TIMEOUT) == [RATE_LIMITED_CONNECT]
        return
    if transport == "upgraded":
        communicator = await upgrade(sockets, await polling_sessions())  # 2 frames
    else:
        communicator = await sockets(OPEN)
        assert (await communicator.receive_from(TIMEOUT)).startswith('0{"sid":')
        for _ in range(2):
            await communicator.send_to(text_data="2")
    await communicator.send_to(text_data="40")
    while (packet := await communicator.receive_from(TIMEOUT)) == "6":
        pass
    assert packet == RATE_LIMITED_CONNECT


# maxPayload --------------------------------------------------------------------


def test_max_payload_is_the_smallest_limit(settings, monkeypatch) -> None:
    settings.SOCKETIO_MAX_PAYLOAD = 16384
    settings.REALTIME_MAX_FRAME_BYTES = 4096
    assert limits.max_payload() == 4096
    settings.REALTIME_MAX_FRAME_BYTES = 65536
    assert limits.max_payload() == 16384
    monkeypatch.setattr(limits, "server_message_limit", 1000)
    assert limits.max_payload() == 1000
    # The web server's body limit for the polling path (WEB_MAX_BODY_BYTES).
    monkeypatch.setattr(limits, "server_body_limit", 900)
    assert limits.max_payload() == 900


async def test_the_open_packet_advertises_what_a_frame_may_carry(
    sockets, settings
) -> None:
    settings.SOCKETIO_MAX_PAYLOAD = 16384
    settings.REALTIME_MAX_FRAME_BYTES = 4096
    communicator = await sockets(OPEN)
    opened = json.loads((await communicator.receive_from(TIMEOUT))[1:])
    assert opened["maxPayload"] == 4096
    # A frame of that size is taken, one byte more is refused (1009).
    await communicator.send_to(text_data="4" + "x" * 4095)
    await communicator.send_to(text_data="4" + "x" * 4096)
    assert await communicator.receive_output(TIMEOUT) == {
        "type": "websocket.close",
        "code": 1009,
    }


# The session's end, whenever it comes ---------------------------------------------


async def test_a_late_upgrade_of_a_session_that_ended_leaves_no_key(
    redis_client,
) -> None:
    alive = sessions.SessionStore(sessions.new_sid())
    await alive.create(owner="specific.owner")
    assert await alive.mark_upgraded()
    assert not await alive.mark_upgraded()
    assert await redis_client.ttl(alive.state_key) > 0

    closed = sessions.SessionStore(sessions.new_sid())
    await closed.create(owner="specific.owner")
    await closed.close()
    expired = sessions.SessionStore(sessions.new_sid())
    await expired.create(owner="specific.owner")
    await redis_client.pexpire(expired.state_key, 1)

    async def expired_gone() -> bool:
        return not await redis_client.exists(expired.state_key)

    await until(expired_gone, "the session to expire")
    for store in (closed, expired):
        assert not await store.mark_upgraded()
        assert not await redis_client.exists(store.state_key)


def hold_the_take_all(store: sessions.SessionStore) -> tuple[Any, Any]:
    """Hold the upgrade's hand-over once the mailbox is drained.

    Return the events (taken, resume): set when it is held, set to resume it.
    """
    take_all = store.take_all
    taken, resume = asyncio.Event(), asyncio.Event()

    async def held() -> list[str]:
        queued = await take_all()
        taken.set()
        await resume.wait()
        return queued

    store.take_all = held
    return taken, resume


async def test_a_close_during_the_hand_over_closes_the_upgraded_socket(
    sockets, polling_session, redis_client
) -> None:
    # The mailbox drained, the channel not yet recorded: a close packet
    # pushed to the mailbox now reaches no one, and the socket waited for
    # its watchdog (pingInterval + pingTimeout, 45 s).
    taken, resume = hold_the_take_all(polling_session.store)
    upgraded = await upgrade(sockets, polling_session)
    await asyncio.wait_for(taken.wait(), TIMEOUT)
    # As the ping loop closes (a timeout): it also cancels the hand-over.
    await polling_session.close("ping timeout")
    resume.set()
    while (packet := await upgraded.receive_from(TIMEOUT)) == "6":
        pass
    assert packet == "1"
    assert await upgraded.receive_output(TIMEOUT) == {"type": "websocket.close"}
    await upgraded.disconnect(timeout=TIMEOUT)  # the client's answer to the close

    async def keys_gone() -> bool:
        return not await session_keys(redis_client)

    await until(keys_gone, "the session's keys to go")


async def test_a_delivery_behind_the_hand_over_is_dropped_once_closed(
    polling_session,
) -> None:
    layer = get_channel_layer()
    channel = await layer.new_channel()
    taken, resume = hold_the_take_all(polling_session.store)
    move = asyncio.create_task(polling_session.move_to(channel))
    await asyncio.wait_for(taken.wait(), TIMEOUT)
    delivery = asyncio.create_task(polling_session.deliver(['42["late"]']))

    async def delivery_waits() -> bool:
        # asyncio.Lock's own queue (None until a first waiter): the delivery
        # is parked on the lock the hand-over holds, the race this is about.
        return bool(polling_session._delivering._waiters)

    await until(delivery_waits, "the delivery to wait for the hand-over's lock")
    await polling_session.close("client closed")
    resume.set()
    await asyncio.wait_for(asyncio.gather(move, delivery), TIMEOUT)
    fence = {"type": "fence"}
    await layer.send(channel, fence)
    received = []
    while (message := await asyncio.wait_for(layer.receive(channel), TIMEOUT)) != (
        fence
    ):
        received.append(message)
    assert received == [{"type": owner.DELIVER_TYPE, "packets": ["1"]}]
