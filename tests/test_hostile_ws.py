"""Hostile WebSocket clients against the real server, and the consumer's own limits.

The live tests run ``python -m realtime.server`` and ``db_worker`` (tests/live.py)
and talk to them with the ``websockets`` client: foreign origins, junk frames,
oversized frames, refused subscriptions, too many subscriptions, floods. After
each abuse a fresh connection must still get the whole service (a payment
pushed to it), and neither process may have logged a traceback.

The in-process tests (WebsocketCommunicator through config.asgi on the real
Redis layer) cover what does not need daphne: the consumer's own frame-size
check (for servers other than realtime.server), the rate limit and the
subscription limit with settings of the test's choosing, wrong field types.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.db import connections
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

from config.asgi import application
from payments import services
from payments.models import TERMINAL_STATUSES, Payment
from realtime import groups, notify
from tests.factories import PaymentFactory
from tests.helpers import (
    assert_closed_quietly,
    assert_nothing_more,
    create_payment,
    next_frame,
    open_socket,
    socket_id_of,
)
from tests.live import LiveStack, checked_stack

ORIGIN = "http://localhost:3000"
# In-process handshakes: an allowed origin, and a Host in ALLOWED_HOSTS.
HEADERS = [(b"origin", ORIGIN.encode()), (b"host", b"testserver")]
PATH = "/ws/payments/"
TIMEOUT = 20.0
MAX_FRAME = settings.REALTIME_MAX_FRAME_BYTES
MAX_SUBSCRIPTIONS = 3
# Per socket; high enough that a test's dozens of deliberate frames pass, the
# flood test still trips it (a burst of twice this, then 1008).
RATE_LIMIT = 50
POLICY_VIOLATION = 1008
MESSAGE_TOO_BIG = 1009

# Client frames that are wrong but harmless: (frame, error code). The socket
# answers each with an error frame and stays open.
JUNK_TEXT_FRAMES = [
    pytest.param("{not json", "invalid_json", id="not-json"),
    pytest.param("", "invalid_json", id="empty"),
    pytest.param("\x00", "invalid_json", id="nul"),
    pytest.param('{"action": "ping"', "invalid_json", id="truncated"),
    pytest.param("NaN", "invalid_frame", id="nan"),
    pytest.param("[1, 2]", "invalid_frame", id="array"),
    pytest.param('"ping"', "invalid_frame", id="string"),
    pytest.param("42", "invalid_frame", id="number"),
    pytest.param("null", "invalid_frame", id="null"),
    # Deep nesting that still fits in a frame.
    pytest.param("[" * 2000 + "]" * 2000, "invalid_frame", id="deep-array"),
    pytest.param(
        '{"action": ' + "[" * 2000 + "]" * 2000 + "}",
        "unknown_action",
        id="deep-action",
    ),
    pytest.param('{"action": "dance"}', "unknown_action", id="unknown-action"),
    pytest.param('{"action": "PING"}', "unknown_action", id="action-case"),
    pytest.param('{"action": "ping\\u0000"}', "unknown_action", id="action-nul"),
    pytest.param('{"action": ["ping"]}', "unknown_action", id="action-list"),
    pytest.param('{"action": {"ping": 1}}', "unknown_action", id="action-object"),
    pytest.param("{}", "unknown_action", id="no-action"),
]

# Subscribe frames with fields of the wrong type.
WRONG_TYPES = [
    pytest.param({"payment_id": 123}, "invalid_frame", id="id-int"),
    pytest.param({"payment_id": None}, "invalid_frame", id="id-null"),
    pytest.param({"payment_id": ""}, "invalid_frame", id="id-empty"),
    pytest.param({"payment_id": ["a"]}, "invalid_frame", id="id-list"),
    pytest.param({"payment_id": {"id": 1}}, "invalid_frame", id="id-object"),
    pytest.param({"payment_id": True}, "invalid_frame", id="id-bool"),
    pytest.param({}, "invalid_frame", id="id-missing"),
    pytest.param(
        {"payment_id": str(uuid.uuid4()), "client_secret": 123},
        "invalid_frame",
        id="secret-int",
    ),
    pytest.param(
        {"payment_id": str(uuid.uuid4()), "client_secret": None},
        "invalid_frame",
        id="secret-null",
    ),
    pytest.param(
        {"payment_id": str(uuid.uuid4()), "client_secret": ["s"]},
        "invalid_frame",
        id="secret-list",
    ),
    pytest.param(
        {"payment_id": "\u202e" + str(uuid.uuid4())},
        "payment_not_found",
        id="id-rtl-override",
    ),
    pytest.param({"payment_id": "x" * 3000}, "payment_not_found", id="id-3000-chars"),
]


# Live server --------------------------------------------------------------------


@pytest.fixture
def live(transactional_db: None, isolated_channel_layer: str) -> Iterator[LiveStack]:
    """Real web and worker processes on the test database and key space."""
    with checked_stack(
        isolated_channel_layer,
        PAYMENTS_SIMULATED_DELAY="0.3",
        REALTIME_MAX_SUBSCRIPTIONS=str(MAX_SUBSCRIPTIONS),
        REALTIME_RATE_LIMIT=str(RATE_LIMIT),
    ) as stack:
        yield stack


async def expect_error(ws: ClientConnection, code: str) -> None:
    frame = await next_frame(ws)
    assert frame["event"] == "error", frame
    assert frame["data"]["code"] == code, frame
    assert isinstance(frame["data"]["message"], str) and frame["data"]["message"]


async def expect_pong(ws: ClientConnection) -> None:
    await ws.send(json.dumps({"action": "ping"}))
    assert await next_frame(ws) == {"event": "pong"}


async def expect_closed(ws: ClientConnection, code: int) -> None:
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            # Anything still queued before the close frame is read first.
            await asyncio.wait_for(ws.recv(), TIMEOUT)
    assert closed.value.rcvd is not None, "closed without a close frame"
    assert closed.value.rcvd.code == code, closed.value


async def settled(payments: list[dict[str, Any]]) -> None:
    """Wait until the payments are terminal: then no live frame can come."""
    moving = Payment.objects.filter(pk__in=[p["id"] for p in payments]).exclude(
        status__in=TERMINAL_STATUSES
    )
    async with asyncio.timeout(TIMEOUT):
        while await moving.aexists():
            await asyncio.sleep(0.05)


async def statuses(ws: ClientConnection, payment_id: str, count: int) -> list[str]:
    received = []
    while len(received) < count:
        frame = await next_frame(ws)
        assert frame["event"] == "payment-status", frame
        assert frame["data"]["id"] == payment_id, frame
        assert "client_secret" not in frame["data"]
        received.append(frame["data"]["status"])
    return received


async def assert_fresh_connection_works(live: LiveStack) -> None:
    """A new client still gets a socket id, pongs and its payment pushed."""
    async with open_socket(live) as ws:
        socket_id = await socket_id_of(ws)
        await expect_pong(ws)
        payment = await create_payment(live, socket_id=socket_id)
        assert await statuses(ws, payment["id"], 2) == ["processing", "succeeded"]
        await assert_nothing_more(ws, socket_id)


# Each abuse, as a coroutine: run alone or all on one server ------------------------


async def foreign_origins(live: LiveStack) -> None:
    # (origin, status): the application refuses with 403; autobahn refuses an
    # Origin header it cannot parse with 400 before the application sees it.
    for origin, status in [
        ("http://evil.example", 403),
        ("https://evil.example", 403),
        ("http://localhost.evil.example:3000", 403),
        ("http://evil.example#http://localhost:3000", 403),
        ("http://evil.example@localhost:3000", 403),
        ("http://localhost:3000/evil", 403),
        ("null", 400),
        (None, 403),
        ("http://localhost:3000.evil.example", 400),
        ("file://", 400),
    ]:
        try:
            async with open_socket(live, origin=origin):
                pytest.fail(f"the handshake with Origin {origin!r} was accepted")
        except InvalidStatus as refused:
            assert refused.response.status_code == status, origin


async def junk_frames(live: LiveStack) -> None:
    async with open_socket(live) as ws:
        socket_id = await socket_id_of(ws)
        for param in JUNK_TEXT_FRAMES:
            text, code = param.values
            await ws.send(text)
            await expect_error(ws, code)
        await ws.send(b'{"action": "ping"}')
        await expect_error(ws, "binary_not_supported")
        await ws.send(b"\xff\x00\xfe")
        await expect_error(ws, "binary_not_supported")
        for param in WRONG_TYPES:
            frame, code = param.values
            await ws.send(json.dumps({"action": "subscribe", **frame}))
            await expect_error(ws, code)
        await ws.send(json.dumps({"action": "unsubscribe", "payment_id": 5}))
        await expect_error(ws, "not_subscribed")
        await expect_pong(ws)
        await assert_nothing_more(ws, socket_id)


async def oversized_frames(live: LiveStack) -> None:
    # The largest allowed frame is answered.
    async with open_socket(live) as ws:
        await socket_id_of(ws)
        frame = json.dumps({"action": "ping", "pad": ""})
        await ws.send(frame[:-2] + "x" * (MAX_FRAME - len(frame)) + '"}')
        assert await next_frame(ws) == {"event": "pong"}
    for payload in [
        "x" * (MAX_FRAME + 1),
        # Counted in bytes, not characters.
        "é" * (MAX_FRAME // 2 + 1),
        b"\x00" * (MAX_FRAME + 1),
        json.dumps({"action": "ping", "pad": "x" * 1_000_000}),
    ]:
        for compression in ["deflate", None]:
            # Compressed, a megabyte of "x" is a few kilobytes on the wire;
            # the limit applies to the message, not to the wire.
            async with open_socket(live, compression=compression) as ws:
                await socket_id_of(ws)
                await ws.send(payload)
                await expect_closed(ws, MESSAGE_TOO_BIG)


async def refused_subscriptions(live: LiveStack) -> None:
    async with open_socket(live) as owner, open_socket(live) as intruder:
        owner_id = await socket_id_of(owner)
        intruder_id = await socket_id_of(intruder)
        other = await create_payment(live)
        payment = await create_payment(live, socket_id=owner_id)
        for frame in [
            {"payment_id": payment["id"], "client_secret": "x" * 43},
            {"payment_id": payment["id"], "client_secret": ""},
            {"payment_id": payment["id"]},
            {"payment_id": payment["id"], "client_secret": other["client_secret"]},
            {
                "payment_id": payment["id"],
                "client_secret": payment["client_secret"][:-1],
            },
            {"payment_id": payment["id"].upper(), "client_secret": "x"},
            {
                "payment_id": str(uuid.uuid4()),
                "client_secret": payment["client_secret"],
            },
            {"payment_id": "not-a-uuid", "client_secret": payment["client_secret"]},
            # Valid JSON, no UTF-8: a lone surrogate crashed the socket (1011).
            {"payment_id": payment["id"], "client_secret": "\ud800"},
            {
                "payment_id": payment["id"],
                "client_secret": payment["client_secret"] + "\udfff",
            },
        ]:
            await intruder.send(json.dumps({"action": "subscribe", **frame}))
            await expect_error(intruder, "payment_not_found")
        # The payment moves on; the intruder hears nothing of it.
        assert await statuses(owner, payment["id"], 2) == ["processing", "succeeded"]
        await assert_nothing_more(intruder, intruder_id)
        await intruder.send(
            json.dumps({"action": "unsubscribe", "payment_id": payment["id"]})
        )
        await expect_error(intruder, "not_subscribed")


async def too_many_subscriptions(live: LiveStack) -> None:
    payments = [await create_payment(live) for _ in range(MAX_SUBSCRIPTIONS + 1)]
    # Only the answers to subscribes, no live change, must reach the socket.
    await settled(payments)
    *allowed, extra = payments

    def subscribe(payment: dict[str, Any]) -> str:
        return json.dumps(
            {
                "action": "subscribe",
                "payment_id": payment["id"],
                "client_secret": payment["client_secret"],
            }
        )

    async with open_socket(live) as ws:
        socket_id = await socket_id_of(ws)
        for payment in allowed:
            await ws.send(subscribe(payment))
            frame = await next_frame(ws)
            assert frame["event"] == "payment-status", frame
            assert frame["data"]["id"] == payment["id"]
        await ws.send(subscribe(extra))
        await expect_error(ws, "too_many_subscriptions")
        # Following one already followed again is no new subscription.
        await ws.send(subscribe(allowed[0]))
        await expect_pong(ws)
        # Making room lets the extra one in.
        await ws.send(
            json.dumps({"action": "unsubscribe", "payment_id": allowed[0]["id"]})
        )
        await ws.send(subscribe(extra))
        frame = await next_frame(ws)
        assert frame["event"] == "payment-status", frame
        assert frame["data"]["id"] == extra["id"]
        await assert_nothing_more(ws, socket_id)


async def flood(live: LiveStack) -> None:
    async with open_socket(live, max_queue=None) as ws:
        await socket_id_of(ws)
        ping = json.dumps({"action": "ping"})
        sent = 0
        try:
            # Far more than the burst allows; the server closes part-way.
            for sent in range(1, 20 * RATE_LIMIT + 1):
                await ws.send(ping)
        except ConnectionClosed:
            pass
        frames = []
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                frames.append(json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT)))
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == POLICY_VIOLATION
    events = [frame["event"] for frame in frames]
    assert events[0] == "pong"
    first_error = events.index("error")
    assert set(events[:first_error]) == {"pong"}
    assert frames[first_error]["data"]["code"] == "rate_limited"
    assert {f["data"]["code"] for f in frames if f["event"] == "error"} == {
        "rate_limited"
    }
    # Refused frames got no answer: fewer answers than frames sent.
    assert len(frames) < sent


Abuse = Callable[[LiveStack], Awaitable[None]]
ABUSES: list[Abuse] = [
    foreign_origins,
    junk_frames,
    oversized_frames,
    refused_subscriptions,
    too_many_subscriptions,
    flood,
]


@pytest.mark.e2e
@pytest.mark.parametrize("abuse", ABUSES, ids=[a.__name__ for a in ABUSES])
async def test_abuse_is_contained(live: LiveStack, abuse: Abuse) -> None:
    await abuse(live)

    await assert_fresh_connection_works(live)


@pytest.mark.e2e
async def test_all_abuses_on_one_server_then_a_fresh_client_is_served(
    live: LiveStack,
) -> None:
    for abuse in ABUSES:
        await abuse(live)

    await assert_fresh_connection_works(live)
    # The closes the server chose were logged as such, not as errors.
    assert "closing a socket that kept flooding (1008)" in live.web.output()


# In-process: the consumer's own limits -----------------------------------------------


@pytest.fixture
async def communicator() -> AsyncIterator[Callable[[], Awaitable[Any]]]:
    opened: list[WebsocketCommunicator] = []

    async def open_one() -> WebsocketCommunicator:
        comm = WebsocketCommunicator(application, PATH, headers=HEADERS)
        opened.append(comm)
        connected, _ = await comm.connect(timeout=5)
        assert connected
        frame = await comm.receive_json_from(timeout=5)
        assert frame["event"] == "socket-id"
        comm.socket_id = frame["data"]  # for assert_nothing_more's fence
        return comm

    yield open_one
    for comm in opened:
        if not comm.future.done():
            await comm.disconnect(timeout=5)
    # Connections opened in database_sync_to_async's thread.
    await database_sync_to_async(connections.close_all)()


async def expect_comm_error(comm: WebsocketCommunicator, code: str) -> None:
    frame = await comm.receive_json_from(timeout=5)
    assert frame["event"] == "error", frame
    assert frame["data"]["code"] == code, frame


async def expect_comm_closed(comm: WebsocketCommunicator, code: int) -> None:
    while True:
        output = await comm.receive_output(timeout=5)
        if output["type"] == "websocket.close":
            assert output.get("code") == code, output
            return
        assert output["type"] == "websocket.send", output


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "payload",
    [
        pytest.param({"text_data": "x" * (MAX_FRAME + 1)}, id="text"),
        pytest.param({"text_data": "é" * (MAX_FRAME // 2 + 1)}, id="multibyte"),
        pytest.param({"bytes_data": b"\x00" * (MAX_FRAME + 1)}, id="binary"),
    ],
)
async def test_consumer_closes_oversized_frames_with_1009(
    communicator, payload
) -> None:
    comm = await communicator()

    await comm.send_to(**payload)

    await expect_comm_closed(comm, MESSAGE_TOO_BIG)
    # Closing, it answers nothing more (a send would fail in the server).
    await comm.send_json_to({"action": "ping"})
    await assert_closed_quietly(comm)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("text", "code"),
    # The communicator cannot send an empty text frame; the live test does.
    [p for p in JUNK_TEXT_FRAMES if p.values[0] != ""],
)
async def test_consumer_answers_junk_with_an_error_and_stays_open(
    communicator, text: str, code: str
) -> None:
    comm = await communicator()

    await comm.send_to(text_data=text)

    await expect_comm_error(comm, code)
    await comm.send_json_to({"action": "ping"})
    assert await comm.receive_json_from(timeout=5) == {"event": "pong"}


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("frame", "code"), WRONG_TYPES)
async def test_subscribe_with_wrong_types_joins_nothing(
    communicator, redis_client, isolated_channel_layer: str, frame: dict, code: str
) -> None:
    comm = await communicator()

    await comm.send_json_to({"action": "subscribe", **frame})

    await expect_comm_error(comm, code)
    keys = [
        key.decode()
        async for key in redis_client.scan_iter(
            f"{isolated_channel_layer}:group:payment.*"
        )
    ]
    assert keys == []


@pytest.mark.django_db(transaction=True)
async def test_flood_gets_one_error_then_1008(communicator, settings) -> None:
    # One frame a second, bursts of two (twice the rate, as the one allowed
    # subscription needs fewer): the frames below come far faster.
    settings.REALTIME_RATE_LIMIT = 1
    settings.REALTIME_MAX_SUBSCRIPTIONS = 1
    comm = await communicator()

    for _ in range(2):
        await comm.send_json_to({"action": "ping"})
        assert await comm.receive_json_from(timeout=5) == {"event": "pong"}
    await comm.send_json_to({"action": "ping"})
    await expect_comm_error(comm, "rate_limited")
    # The second refusal in a row (a burst's worth) closes.
    await comm.send_json_to({"action": "ping"})
    assert await comm.receive_output(timeout=5) == {
        "type": "websocket.close",
        "code": POLICY_VIOLATION,
    }
    # The backlog behind the close goes unanswered.
    await comm.send_json_to({"action": "ping"})
    await assert_closed_quietly(comm)


@pytest.mark.django_db(transaction=True)
async def test_subscription_limit_is_per_socket_and_refusal_joins_nothing(
    communicator, settings, redis_client, isolated_channel_layer: str
) -> None:
    settings.REALTIME_MAX_SUBSCRIPTIONS = 2
    create = database_sync_to_async(PaymentFactory.create)
    payments = [await create() for _ in range(3)]
    comm = await communicator()

    for payment in payments[:2]:
        await comm.send_json_to(
            {
                "action": "subscribe",
                "payment_id": str(payment.id),
                "client_secret": payment.client_secret,
            }
        )
        assert (await comm.receive_json_from(timeout=5))["event"] == "payment-status"
    refused = payments[2]
    await comm.send_json_to(
        {
            "action": "subscribe",
            "payment_id": str(refused.id),
            "client_secret": refused.client_secret,
        }
    )
    await expect_comm_error(comm, "too_many_subscriptions")

    key = f"{isolated_channel_layer}:group:{groups.payment_group(refused.id)}"
    assert await redis_client.zcard(key) == 0
    await database_sync_to_async(services.payment_start_processing)(
        payment_id=refused.id
    )
    # Another socket has its own allowance.
    other = await communicator()
    await other.send_json_to(
        {
            "action": "subscribe",
            "payment_id": str(refused.id),
            "client_secret": refused.client_secret,
        }
    )
    frame = await other.receive_json_from(timeout=5)
    assert (frame["event"], frame["data"]["status"]) == ("payment-status", "processing")
    await assert_nothing_more(comm, comm.socket_id)


@pytest.mark.django_db(transaction=True)
async def test_refused_subscribe_never_joins_even_for_a_moment() -> None:
    """Changes pushed while a refused subscribe is handled never reach it.

    A consumer that joined the payment's group before checking the secret
    (and left on refusal) was sent whatever the group got in between.
    """
    payment = await database_sync_to_async(PaymentFactory.create)()
    comm = WebsocketCommunicator(application, PATH, headers=HEADERS)
    connected, _ = await comm.connect(timeout=5)
    assert connected
    socket_id = (await comm.receive_json_from(timeout=5))["data"]
    layer = get_channel_layer()
    pushing = True

    async def push_changes() -> int:
        version = 1
        while pushing:
            version += 1
            await layer.group_send(
                groups.payment_group(payment.id),
                {
                    "type": notify.MESSAGE_TYPE,
                    "payment": {"id": str(payment.id), "version": version},
                },
            )
        return version

    pusher = asyncio.create_task(push_changes())
    try:
        for _ in range(20):
            await comm.send_json_to(
                {
                    "action": "subscribe",
                    "payment_id": str(payment.id),
                    "client_secret": "wrong",
                }
            )
            frame = await comm.receive_json_from(timeout=5)
            assert frame["event"] == "error", frame
            assert frame["data"]["code"] == "payment_not_found"
    finally:
        pushing = False
        pushed = await pusher
    assert pushed > 2, "no change was pushed during the refused subscribes"
    await assert_nothing_more(comm, socket_id)
    await comm.disconnect(timeout=5)
    await database_sync_to_async(connections.close_all)()


async def pubsub_leftovers(client: aioredis.Redis, prefix: str) -> list[str]:
    """Return the channels of this test's key space that Redis still has subscribed."""
    return sorted(c.decode() for c in await client.pubsub_channels(f"{prefix}*"))


async def no_pubsub_leftovers(client: aioredis.Redis, prefix: str) -> None:
    # The layer writes UNSUBSCRIBE without waiting for Redis's answer.
    async with asyncio.timeout(5):
        while await pubsub_leftovers(client, prefix):
            await asyncio.sleep(0.02)


@pytest.mark.django_db(transaction=True)
async def test_lone_surrogate_secret_is_not_found_and_the_socket_stays(
    communicator, redis_client, isolated_channel_layer: str
) -> None:
    payment = await database_sync_to_async(PaymentFactory.create)()
    comm = await communicator()

    await comm.send_json_to(
        {
            "action": "subscribe",
            "payment_id": str(payment.id),
            "client_secret": "\ud800",
        }
    )

    await expect_comm_error(comm, "payment_not_found")
    await comm.send_json_to({"action": "ping"})
    assert await comm.receive_json_from(timeout=5) == {"event": "pong"}
    await comm.disconnect(timeout=5)
    await no_pubsub_leftovers(redis_client, isolated_channel_layer)


@pytest.mark.django_db(transaction=True)
async def test_handler_exception_still_leaves_every_group(
    communicator, redis_client, isolated_channel_layer: str, monkeypatch
) -> None:
    """A handler that raises leaves no Redis subscription behind.

    Channels calls no disconnect() then; each such socket used to keep its
    socket group and every payment group it had joined until restart.
    """
    payment = await database_sync_to_async(PaymentFactory.create)()
    comm = await communicator()
    group_channels = [
        f"{isolated_channel_layer}__group__{group}"
        for group in (groups.payment_group(payment.id),)
    ]

    async def broken_snapshot(*args: Any) -> None:
        raise RuntimeError("forced failure after the join")

    monkeypatch.setattr("realtime.subscriptions._payment_snapshot", broken_snapshot)
    await comm.send_json_to(
        {
            "action": "subscribe",
            "payment_id": str(payment.id),
            "client_secret": payment.client_secret,
        }
    )

    with pytest.raises(RuntimeError, match="forced failure"):
        await comm.receive_output(timeout=5)
    await no_pubsub_leftovers(redis_client, isolated_channel_layer)
    numsub = await redis_client.pubsub_numsub(*group_channels)
    assert [count for _, count in numsub] == [0]
