"""The payments socket through the full ASGI stack on the real Redis layer."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import OperationalError, connections
from django.test import Client
from prometheus_client import REGISTRY

from config.asgi import application
from payments import selectors, services
from payments.models import Payment
from realtime import groups, notify
from tests.conftest import CORE_LAYER, PUBSUB_LAYER
from tests.factories import PaymentFactory
from tests.helpers import assert_nothing_more, frames_before_fence

pytestmark = pytest.mark.django_db(transaction=True)

PATH = "/ws/payments/"
ORIGIN = (b"origin", b"http://localhost:3000")
# Django refuses a request whose Host is not in ALLOWED_HOSTS; so does the socket.
HOST = (b"host", b"testserver")
TIMEOUT = 5
SOCKET_ID = re.compile(r"^[A-Za-z0-9_-]{32,}$")

Connect = Callable[..., Awaitable[tuple[WebsocketCommunicator, str]]]


# Fixtures and helpers ---------------------------------------------------------


@pytest.fixture(autouse=True)
async def close_thread_connections() -> AsyncIterator[None]:
    """Close the connections opened in database_sync_to_async's thread.

    With CONN_MAX_AGE they outlive the test and keep PostgreSQL from
    dropping the test database at the end of the run.
    """
    yield
    await database_sync_to_async(connections.close_all)()


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """Open sockets through config.asgi; each answers (communicator, socket id)."""
    opened: list[WebsocketCommunicator] = []

    async def open_socket(
        headers: list[tuple[bytes, bytes]] | None = None, feed: str | None = None
    ) -> tuple[WebsocketCommunicator, str]:
        communicator = WebsocketCommunicator(
            application,
            PATH if feed is None else f"{PATH}?feed={feed}",
            headers=[ORIGIN, HOST] if headers is None else headers,
        )
        opened.append(communicator)
        connected, _ = await communicator.connect(timeout=TIMEOUT)
        assert connected, "the socket was refused at handshake"
        frame = await communicator.receive_json_from(timeout=TIMEOUT)
        assert frame["event"] == "socket-id", frame
        return communicator, frame["data"]

    yield open_socket
    for communicator in opened:
        # One that ended already (a receive timed out and cancelled it, or it
        # crashed) has failed its test; only live ones need closing.
        if not communicator.future.done():
            await communicator.disconnect(timeout=TIMEOUT)


async def group_members(redis_client: aioredis.Redis, prefix: str, group: str) -> int:
    """Count a group's listeners as the configured layer keeps them in Redis."""
    if settings.CHANNEL_LAYERS["default"]["BACKEND"] == CORE_LAYER:
        # A sorted set of channel names per group.
        return await redis_client.zcard(f"{prefix}:group:{group}")
    # Pub/sub: one subscription per group and web process.
    [(_, count)] = await redis_client.pubsub_numsub(f"{prefix}__group__{group}")
    return count


def payment_frame_data(*, payment_id: str | None = None, version: int = 1) -> dict:
    return {
        "id": payment_id or str(uuid.uuid4()),
        "status": "processing",
        "amount": 1000,
        "currency": "usd",
        "version": version,
    }


async def send_to_socket(socket_id: str, payment: dict[str, Any]) -> None:
    await get_channel_layer().group_send(
        groups.socket_group(socket_id),
        {"type": notify.MESSAGE_TYPE, "payment": payment},
    )


async def expect_error(communicator: WebsocketCommunicator, code: str) -> None:
    frame = await communicator.receive_json_from(timeout=TIMEOUT)
    assert frame["event"] == "error", frame
    assert frame["data"]["code"] == code, frame
    assert isinstance(frame["data"]["message"], str)
    assert frame["data"]["message"]


async def expect_still_open(communicator: WebsocketCommunicator) -> None:
    await communicator.send_json_to({"action": "ping"})
    assert await communicator.receive_json_from(timeout=TIMEOUT) == {"event": "pong"}


async def expect_status(
    communicator: WebsocketCommunicator, payment: Payment, status: str, version: int
) -> dict:
    frame = await communicator.receive_json_from(timeout=TIMEOUT)
    assert frame["event"] == "payment-status", frame
    data = frame["data"]
    assert data["id"] == str(payment.id)
    assert data["status"] == status
    assert data["version"] == version
    assert "client_secret" not in data
    return data


create_payment = database_sync_to_async(PaymentFactory.create)
start_processing = database_sync_to_async(services.payment_start_processing)
mark_succeeded = database_sync_to_async(services.payment_mark_succeeded)


# Connecting -------------------------------------------------------------------


async def test_first_frame_is_a_fresh_url_safe_socket_id(connect: Connect) -> None:
    _, first = await connect()
    _, second = await connect()

    assert isinstance(first, str)
    assert SOCKET_ID.match(first), first
    assert SOCKET_ID.match(second), second
    assert first != second


@pytest.mark.parametrize("backend", [PUBSUB_LAYER, CORE_LAYER], ids=["pubsub", "core"])
async def test_socket_joins_its_group_and_leaves_it_on_disconnect(
    backend: str, settings, isolated_channel_layer: str, redis_client: aioredis.Redis
) -> None:
    from channels.layers import channel_layers

    settings.CHANNEL_LAYERS["default"]["BACKEND"] = backend
    channel_layers.backends.clear()

    async def members(group: str) -> int:
        return await group_members(redis_client, isolated_channel_layer, group)

    async def members_become(group: str, count: int) -> None:
        # An UNSUBSCRIBE is written, not awaited, by the pub/sub layer.
        async with asyncio.timeout(TIMEOUT):
            while await members(group) != count:
                await asyncio.sleep(0.01)

    communicator = WebsocketCommunicator(application, PATH, headers=[ORIGIN, HOST])
    connected, _ = await communicator.connect(timeout=TIMEOUT)
    assert connected
    socket_id = (await communicator.receive_json_from(timeout=TIMEOUT))["data"]
    payment = await create_payment()
    await communicator.send_json_to(
        {
            "action": "subscribe",
            "payment_id": str(payment.id),
            "client_secret": payment.client_secret,
        }
    )
    await expect_status(communicator, payment, "pending", 1)
    assert await members(groups.socket_group(socket_id)) == 1
    assert await members(groups.payment_group(payment.id)) == 1

    await communicator.disconnect(timeout=TIMEOUT)

    await members_become(groups.socket_group(socket_id), 0)
    await members_become(groups.payment_group(payment.id), 0)


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param([(b"origin", b"http://evil.example")], id="foreign-origin"),
        pytest.param(
            [(b"origin", b"http://localhost.evil.example:3000")], id="lookalike"
        ),
        pytest.param([(b"origin", b"null")], id="null-origin"),
        pytest.param([], id="no-origin"),
    ],
)
async def test_handshake_refused_without_an_allowed_origin(
    headers: list[tuple[bytes, bytes]],
    isolated_channel_layer: str,
    redis_client: aioredis.Redis,
) -> None:
    communicator = WebsocketCommunicator(application, PATH, headers=headers)
    connected, _ = await communicator.connect(timeout=TIMEOUT)
    # What the server sends after the close frame; lets the denier finish.
    await communicator.disconnect(timeout=TIMEOUT)

    assert connected is False
    # Refused before the consumer ran: it never joined a group.
    keys = [key async for key in redis_client.scan_iter(f"{isolated_channel_layer}*")]
    assert keys == []


async def test_idle_socket_outlives_the_layers_blocking_receive(
    core_channel_layer: str, connect: Connect
) -> None:
    """A socket with nothing to receive for a while still works afterwards.

    The core layer waits on Redis with a blocking pop that answers "nothing"
    after brpop_timeout seconds; a client read timeout no longer than that
    (redis-py 8 defaults to 5 s) crashed every idle consumer.
    """
    communicator, socket_id = await connect()
    idle = get_channel_layer().brpop_timeout + 1.5

    # Idle time is what is under test here, not a wait for an event.
    assert await communicator.receive_nothing(timeout=idle, interval=0.05) is True

    await expect_still_open(communicator)
    data = payment_frame_data()
    await send_to_socket(socket_id, data)
    assert await communicator.receive_json_from(timeout=TIMEOUT) == {
        "event": "payment-status",
        "data": data,
    }


# Client frames ----------------------------------------------------------------


async def test_ping_answers_pong(connect: Connect) -> None:
    communicator, _ = await connect()

    await communicator.send_json_to({"action": "ping"})

    assert await communicator.receive_json_from(timeout=TIMEOUT) == {"event": "pong"}


async def test_non_json_text_is_an_error_and_the_socket_stays_open(
    connect: Connect,
) -> None:
    communicator, _ = await connect()

    await communicator.send_to(text_data="{not json")

    await expect_error(communicator, "invalid_json")
    await expect_still_open(communicator)


@pytest.mark.parametrize("text", ["[1, 2]", '"ping"', "42", "null"])
async def test_json_that_is_not_an_object_is_an_invalid_frame(
    connect: Connect, text: str
) -> None:
    communicator, _ = await connect()

    await communicator.send_to(text_data=text)

    await expect_error(communicator, "invalid_frame")
    await expect_still_open(communicator)


async def test_binary_frame_is_not_supported(connect: Connect) -> None:
    communicator, _ = await connect()

    await communicator.send_to(bytes_data=b'{"action": "ping"}')

    await expect_error(communicator, "binary_not_supported")
    await expect_still_open(communicator)


@pytest.mark.parametrize(
    "frame",
    [{"action": "dance"}, {}, {"action": None}, {"event": "ping"}],
    ids=["unknown", "missing", "null", "event-not-action"],
)
async def test_unknown_action_is_an_error(connect: Connect, frame: dict) -> None:
    communicator, _ = await connect()

    await communicator.send_json_to(frame)

    await expect_error(communicator, "unknown_action")
    await expect_still_open(communicator)


# Delivery to the socket's own group -------------------------------------------


async def test_notify_reaches_the_bound_socket_and_no_other(connect: Connect) -> None:
    target, target_id = await connect()
    other, other_id = await connect()
    data = payment_frame_data(version=2)

    await sync_to_async(notify.payment_status_changed)(
        payment_id=data["id"], socket_id=target_id, user_id=None, data=data
    )

    assert await target.receive_json_from(timeout=TIMEOUT) == {
        "event": "payment-status",
        "data": data,
    }
    await assert_nothing_more(other, other_id)


async def test_group_send_to_socket_group_reaches_that_socket_only(
    connect: Connect,
) -> None:
    target, target_id = await connect()
    other, other_id = await connect()
    data = payment_frame_data()

    await send_to_socket(target_id, data)

    assert await target.receive_json_from(timeout=TIMEOUT) == {
        "event": "payment-status",
        "data": data,
    }
    await assert_nothing_more(other, other_id)


async def test_status_transition_reaches_the_socket_the_payment_names(
    connect: Connect,
) -> None:
    target, target_id = await connect()
    other, other_id = await connect()
    payment = await create_payment(socket_id=target_id)

    assert await start_processing(payment_id=payment.id) is not None

    data = await expect_status(target, payment, "processing", 2)
    assert data["socket_id"] == target_id
    assert data["amount"] == payment.amount
    assert data["currency"] == payment.currency
    await assert_nothing_more(other, other_id)


async def test_each_transition_arrives_once_in_order(connect: Connect) -> None:
    communicator, socket_id = await connect()
    payment = await create_payment(socket_id=socket_id)

    await start_processing(payment_id=payment.id)
    await mark_succeeded(payment_id=payment.id)

    await expect_status(communicator, payment, "processing", 2)
    await expect_status(communicator, payment, "succeeded", 3)
    await assert_nothing_more(communicator, socket_id)


async def test_logged_in_user_receives_own_payments_on_every_tab(
    connect: Connect,
) -> None:
    @database_sync_to_async
    def log_in() -> tuple[Any, bytes]:
        user = get_user_model().objects.create_user(username="ada", password="pw")
        client = Client()
        client.force_login(user)
        session = client.cookies[settings.SESSION_COOKIE_NAME].value
        return user, f"{settings.SESSION_COOKIE_NAME}={session}".encode()

    user, cookie = await log_in()
    tab_one, _ = await connect([ORIGIN, HOST, (b"cookie", cookie)])
    tab_two, _ = await connect([ORIGIN, HOST, (b"cookie", cookie)])
    anonymous, anonymous_id = await connect()
    payment = await create_payment(user=user)

    await start_processing(payment_id=payment.id)

    await expect_status(tab_one, payment, "processing", 2)
    await expect_status(tab_two, payment, "processing", 2)
    await assert_nothing_more(anonymous, anonymous_id)


# Subscriptions ----------------------------------------------------------------


async def test_subscribe_sends_a_snapshot_then_live_changes(connect: Connect) -> None:
    communicator, socket_id = await connect()
    payment = await create_payment()

    await communicator.send_json_to(
        {
            "action": "subscribe",
            "payment_id": str(payment.id),
            "client_secret": payment.client_secret,
        }
    )
    snapshot = await expect_status(communicator, payment, "pending", 1)
    assert snapshot["socket_id"] == ""

    await start_processing(payment_id=payment.id)
    await expect_status(communicator, payment, "processing", 2)
    await mark_succeeded(payment_id=payment.id)
    await expect_status(communicator, payment, "succeeded", 3)
    await assert_nothing_more(communicator, socket_id)


async def test_subscribe_after_the_fact_catches_up_with_the_current_status(
    connect: Connect,
) -> None:
    payment = await create_payment()
    await start_processing(payment_id=payment.id)
    await mark_succeeded(payment_id=payment.id)
    communicator, _ = await connect()

    await communicator.send_json_to(
        {
            "action": "subscribe",
            "payment_id": str(payment.id),
            "client_secret": payment.client_secret,
        }
    )

    await expect_status(communicator, payment, "succeeded", 3)


@pytest.mark.parametrize(
    "case", ["wrong-secret", "no-secret", "unknown-id", "not-uuid"]
)
async def test_subscribe_refused_joins_nothing(
    connect: Connect,
    case: str,
    isolated_channel_layer: str,
    redis_client: aioredis.Redis,
) -> None:
    communicator, socket_id = await connect()
    payment = await create_payment()
    frame = {
        "wrong-secret": {
            "payment_id": str(payment.id),
            "client_secret": "x" * len(payment.client_secret),
        },
        "no-secret": {"payment_id": str(payment.id)},
        "unknown-id": {
            "payment_id": str(uuid.uuid4()),
            "client_secret": payment.client_secret,
        },
        "not-uuid": {"payment_id": "nope", "client_secret": payment.client_secret},
    }[case]

    await communicator.send_json_to({"action": "subscribe", **frame})

    await expect_error(communicator, "payment_not_found")
    group = groups.payment_group(payment.id)
    assert await group_members(redis_client, isolated_channel_layer, group) == 0
    await start_processing(payment_id=payment.id)
    await assert_nothing_more(communicator, socket_id)


@pytest.mark.parametrize(
    "read", ["payment_get_visible", "payment_public_data_if_visible"]
)
async def test_subscribe_while_the_database_is_away_is_refused_and_retried(
    connect: Connect, monkeypatch, read: str
) -> None:
    """The check or the snapshot fails: an error frame; the socket stays open."""
    communicator, _ = await connect()
    payment = await create_payment()
    subscribe = {
        "action": "subscribe",
        "payment_id": str(payment.id),
        "client_secret": payment.client_secret,
    }
    working = getattr(selectors, read)

    def away(**kwargs: Any) -> Any:
        raise OperationalError("connection failed: the server closed the connection")

    monkeypatch.setattr(selectors, read, away)
    await communicator.send_json_to(subscribe)
    await expect_error(communicator, "service_unavailable")
    await expect_still_open(communicator)

    monkeypatch.setattr(selectors, read, working)
    await communicator.send_json_to(subscribe)
    await expect_status(communicator, payment, "pending", 1)


async def test_a_socket_whose_consumer_crashed_is_no_longer_counted_open(
    connect: Connect, monkeypatch
) -> None:
    def opened() -> float:
        return REGISTRY.get_sample_value("realtime_websockets_open") or 0.0

    before = opened()
    communicator, _ = await connect()
    assert opened() == before + 1

    def bug(**kwargs: Any) -> Any:
        raise RuntimeError("a bug in a selector")

    monkeypatch.setattr(selectors, "payment_get_visible", bug)
    await communicator.send_json_to(
        {"action": "subscribe", "payment_id": str(uuid.uuid4())}
    )
    with pytest.raises(RuntimeError):
        await communicator.wait(timeout=TIMEOUT)

    assert opened() == before


async def test_bound_and_subscribed_socket_gets_each_change_once(
    connect: Connect,
) -> None:
    communicator, socket_id = await connect()
    payment = await create_payment(socket_id=socket_id)
    await communicator.send_json_to(
        {
            "action": "subscribe",
            "payment_id": str(payment.id),
            "client_secret": payment.client_secret,
        }
    )
    await expect_status(communicator, payment, "pending", 1)

    await start_processing(payment_id=payment.id)
    await mark_succeeded(payment_id=payment.id)

    frames = await frames_before_fence(communicator, socket_id)
    assert [(f["event"], f["data"]["version"]) for f in frames] == [
        ("payment-status", 2),
        ("payment-status", 3),
    ]


@pytest.mark.parametrize("spelling", [str, lambda i: str(i).upper(), lambda i: i.hex])
async def test_unsubscribe_stops_delivery(connect: Connect, spelling) -> None:
    communicator, socket_id = await connect()
    payment = await create_payment()
    await communicator.send_json_to(
        {
            "action": "subscribe",
            "payment_id": str(payment.id),
            "client_secret": payment.client_secret,
        }
    )
    await expect_status(communicator, payment, "pending", 1)

    await communicator.send_json_to(
        {"action": "unsubscribe", "payment_id": spelling(payment.id)}
    )
    # Frames are handled in order: the pong means the unsubscribe is done.
    await expect_still_open(communicator)
    await start_processing(payment_id=payment.id)

    await assert_nothing_more(communicator, socket_id)


async def test_unsubscribe_from_a_payment_not_followed_is_an_error(
    connect: Connect,
) -> None:
    communicator, _ = await connect()

    await communicator.send_json_to(
        {"action": "unsubscribe", "payment_id": str(uuid.uuid4())}
    )

    await expect_error(communicator, "not_subscribed")
    await expect_still_open(communicator)


# The staff group (the live admin) ---------------------------------------------


async def test_staff_sockets_receive_every_payment_and_others_none(
    connect: Connect,
) -> None:
    @database_sync_to_async
    def cookie_for(username: str, *, is_staff: bool) -> bytes:
        user = get_user_model().objects.create_user(
            username=username, password="pw", is_staff=is_staff
        )
        client = Client()
        client.force_login(user)
        session = client.cookies[settings.SESSION_COOKIE_NAME].value
        return f"{settings.SESSION_COOKIE_NAME}={session}".encode()

    staff_cookie = await cookie_for("s", is_staff=True)
    staff, _ = await connect([ORIGIN, HOST, (b"cookie", staff_cookie)], feed="staff")
    # A staff user's socket that did not ask for the feed, a user's that did.
    staff_page, staff_page_id = await connect([ORIGIN, HOST, (b"cookie", staff_cookie)])
    user, user_id = await connect(
        [ORIGIN, HOST, (b"cookie", await cookie_for("u", is_staff=False))], feed="staff"
    )
    anonymous, anonymous_id = await connect(feed="staff")
    payment = await create_payment()  # nobody's: no user, no socket

    await start_processing(payment_id=payment.id)

    await expect_status(staff, payment, "processing", 2)
    await assert_nothing_more(staff_page, staff_page_id)
    await assert_nothing_more(user, user_id)
    await assert_nothing_more(anonymous, anonymous_id)


async def test_a_socket_remembers_a_bounded_number_of_payments(
    connect: Connect, monkeypatch
) -> None:
    # A staff socket sees every payment: what it remembers for deduplication
    # is bounded, the oldest forgotten first.
    from realtime import subscriptions

    monkeypatch.setattr(subscriptions, "MAX_TRACKED_VERSIONS", 2)
    communicator, socket_id = await connect()
    oldest, middle, newest = (payment_frame_data(version=2) for _ in range(3))
    for data in (oldest, middle, newest):
        await send_to_socket(socket_id, data)
        assert (await communicator.receive_json_from(timeout=TIMEOUT))["data"] == data

    for data in (newest, middle, oldest):  # the same versions again
        await send_to_socket(socket_id, data)

    # Only the forgotten one comes again; the two remembered are dropped.
    assert await frames_before_fence(communicator, socket_id) == [
        {"event": "payment-status", "data": oldest}
    ]
