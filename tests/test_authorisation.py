"""Another user's payment is invisible over REST (404) and subscribe
(payment_not_found); staff see all; a client_secret opens its one payment.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.db import connections
from django.test import Client

from config.asgi import application
from tests.factories import PaymentFactory
from tests.helpers import (
    LIST,
    ORIGIN,
    WS_PATH,
    assert_error,
    detail,
    token_client,
)

# Authorisation over REST ----------------------------------------------------------


@pytest.mark.django_db
def test_another_users_payment_is_404_to_everyone_but_owner_and_staff(
    make_user,
) -> None:
    ann, bob = make_user("ann"), make_user("bob")
    staff = make_user("staff", staff=True)
    payment = PaymentFactory(user=ann)

    assert token_client(ann).get(detail(payment.id)).status_code == 200
    assert token_client(staff).get(detail(payment.id)).status_code == 200
    bobs_view = token_client(bob).get(detail(payment.id))
    assert_error(bobs_view, 404, "not_found", "payment_id")
    unknown = token_client(bob).get(detail(uuid.uuid4()))
    # "Not yours" and "no such payment" are indistinguishable.
    assert bobs_view.json() == unknown.json()
    # Bob's own secret opens Bob's payment only.
    bobs = PaymentFactory(user=bob)
    response = token_client(bob).get(
        detail(payment.id), {"client_secret": bobs.client_secret}
    )
    assert response.status_code == 404


@pytest.mark.django_db
def test_anonymous_with_a_secret_sees_only_that_payment(api_client) -> None:
    mine, other = PaymentFactory(), PaymentFactory()

    own = api_client.get(detail(mine.id), {"client_secret": mine.client_secret})
    foreign = api_client.get(detail(other.id), {"client_secret": mine.client_secret})

    assert own.status_code == 200
    assert "client_secret" not in own.json()
    assert_error(foreign, 404, "not_found", "payment_id")
    assert_error(api_client.get(LIST), 401, "not_authenticated", "Authorization")


# Authorisation over the socket ----------------------------------------------------


@database_sync_to_async
def session_cookie(user: Any) -> tuple[bytes, bytes]:
    client = Client()
    client.force_login(user)
    session = client.cookies[settings.SESSION_COOKIE_NAME].value
    return (b"cookie", f"{settings.SESSION_COOKIE_NAME}={session}".encode())


@pytest.fixture
async def socket() -> AsyncIterator[Any]:
    opened: list[WebsocketCommunicator] = []

    async def open_socket(*headers: tuple[bytes, bytes]) -> WebsocketCommunicator:
        comm = WebsocketCommunicator(
            application,
            WS_PATH,
            headers=[(b"origin", ORIGIN.encode()), (b"host", b"testserver"), *headers],
        )
        opened.append(comm)
        connected, _ = await comm.connect(timeout=5)
        assert connected
        assert (await comm.receive_json_from(timeout=5))["event"] == "socket-id"
        return comm

    yield open_socket
    for comm in opened:
        if not comm.future.done():
            await comm.disconnect(timeout=5)
    await database_sync_to_async(connections.close_all)()


async def subscribe(
    comm: WebsocketCommunicator, payment: Any, secret: str = ""
) -> dict:
    frame = {"action": "subscribe", "payment_id": str(payment.id)}
    if secret:
        frame["client_secret"] = secret
    await comm.send_json_to(frame)
    return await comm.receive_json_from(timeout=5)


@pytest.mark.django_db(transaction=True)
async def test_subscribe_is_refused_for_another_users_payment(
    socket, make_user
) -> None:
    make = database_sync_to_async(make_user)
    ann, bob = await make("ann"), await make("bob")
    payment = await database_sync_to_async(PaymentFactory)(user=ann)
    bobs = await socket(await session_cookie(bob))
    anns = await socket(await session_cookie(ann))

    refused = await subscribe(bobs, payment)
    owned = await subscribe(anns, payment)

    assert refused["event"] == "error"
    assert refused["data"]["code"] == "payment_not_found"
    assert owned["event"] == "payment-status"
    assert owned["data"]["id"] == str(payment.id)
    assert "client_secret" not in owned["data"]


@pytest.mark.django_db(transaction=True)
async def test_staff_can_subscribe_to_any_payment(socket, make_user) -> None:
    staff = await database_sync_to_async(make_user)("staff", staff=True)
    payment = await database_sync_to_async(PaymentFactory)()
    comm = await socket(await session_cookie(staff))

    frame = await subscribe(comm, payment)

    assert frame["event"] == "payment-status"
    assert frame["data"]["id"] == str(payment.id)


@pytest.mark.django_db(transaction=True)
async def test_anonymous_with_a_secret_subscribes_to_that_payment_only(socket) -> None:
    create = database_sync_to_async(PaymentFactory)
    mine, other = await create(), await create()
    comm = await socket()

    assert (await subscribe(comm, mine, mine.client_secret))[
        "event"
    ] == "payment-status"
    refused = await subscribe(comm, other, mine.client_secret)
    without = await subscribe(comm, other)

    assert refused["data"]["code"] == "payment_not_found"
    assert without["data"]["code"] == "payment_not_found"
