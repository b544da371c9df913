"""End to end: real daphne and db_worker processes, a real socket, real HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection

from tests.helpers import (
    TIMEOUT,
    assert_nothing_more,
    next_frame,
    open_socket,
    socket_id_of,
)
from tests.live import LiveStack, checked_stack

pytestmark = pytest.mark.e2e


@pytest.fixture
def live(transactional_db: None, isolated_channel_layer: str) -> Iterator[LiveStack]:
    """Start the web and worker processes on the test database and key space.

    Depends on transactional_db so it is torn down (processes stopped) before
    the tables are flushed under them.
    """
    with checked_stack(isolated_channel_layer, PAYMENTS_SIMULATED_DELAY="0.3") as stack:
        yield stack


# Helpers ----------------------------------------------------------------------


def http_client(live: LiveStack) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=live.http_url, trust_env=False, timeout=TIMEOUT)


async def receive_statuses(
    ws: ClientConnection, payment_id: str, count: int
) -> list[dict[str, Any]]:
    """Return the next ``count`` payment-status frames' data, in order."""
    received: list[dict[str, Any]] = []
    while len(received) < count:
        try:
            frame = await next_frame(ws)
        except TimeoutError:
            pytest.fail(f"waited {TIMEOUT} s for payment-status; got {received}")
        assert frame["event"] == "payment-status", frame
        assert frame["data"]["id"] == payment_id, frame
        assert "client_secret" not in frame["data"], frame
        received.append(frame["data"])
    return received


async def get_payment(live: LiveStack, payment: dict[str, Any]) -> dict[str, Any]:
    async with http_client(live) as client:
        response = await client.get(
            f"/api/payments/{payment['id']}/",
            params={"client_secret": payment["client_secret"]},
        )
    assert response.status_code == 200, response.text
    return response.json()


# Tests ------------------------------------------------------------------------


async def test_payment_succeeds_and_each_status_is_pushed(live: LiveStack) -> None:
    async with open_socket(live) as ws, open_socket(live) as bystander:
        socket_id = await socket_id_of(ws)
        bystander_id = await socket_id_of(bystander)
        assert bystander_id != socket_id

        async with http_client(live) as client:
            response = await client.post(
                "/api/payments/", json={"amount": 1000, "socket_id": socket_id}
            )
        assert response.status_code == 202, response.text
        payment = response.json()
        assert response.headers["location"] == f"/api/payments/{payment['id']}/"
        assert payment["status"] == "pending"
        assert payment["version"] == 1
        assert payment["socket_id"] == socket_id

        processing, succeeded = await receive_statuses(ws, payment["id"], 2)
        assert (processing["status"], processing["version"]) == ("processing", 2)
        assert (succeeded["status"], succeeded["version"]) == ("succeeded", 3)
        assert succeeded["amount"] == 1000
        assert succeeded["failure_code"] == ""
        await assert_nothing_more(ws, socket_id)
        await assert_nothing_more(bystander, bystander_id)

    detail = await get_payment(live, payment)
    assert (detail["status"], detail["version"]) == ("succeeded", 3)

    # A client that missed it all catches up by subscribing on a new socket.
    async with open_socket(live) as ws:
        await socket_id_of(ws)
        await ws.send(
            json.dumps(
                {
                    "action": "subscribe",
                    "payment_id": payment["id"],
                    "client_secret": payment["client_secret"],
                }
            )
        )
        [snapshot] = await receive_statuses(ws, payment["id"], 1)
    assert (snapshot["status"], snapshot["version"]) == ("succeeded", 3)


async def test_declined_card_is_pushed_as_failed(live: LiveStack) -> None:
    async with open_socket(live) as ws:
        socket_id = await socket_id_of(ws)
        async with http_client(live) as client:
            response = await client.post(
                "/api/payments/",
                json={
                    "amount": 1000,
                    "socket_id": socket_id,
                    "payment_method": "pm_card_chargeDeclined",
                },
            )
        assert response.status_code == 202, response.text
        payment = response.json()

        processing, failed = await receive_statuses(ws, payment["id"], 2)
        assert (processing["status"], processing["version"]) == ("processing", 2)
        assert (failed["status"], failed["version"]) == ("failed", 3)
        assert failed["failure_code"] == "card_declined"
        assert failed["failure_message"]
        await assert_nothing_more(ws, socket_id)

    detail = await get_payment(live, payment)
    assert (detail["status"], detail["failure_code"]) == ("failed", "card_declined")


@pytest.mark.parametrize(
    "path",
    [
        "/api/payments/make-payment-with-socket",
        "/api/payments/make-payment-with-socket/",
    ],
)
async def test_seed_frontend_route_pushes_the_same_frames(
    live: LiveStack, path: str
) -> None:
    async with open_socket(live) as ws:
        socket_id = await socket_id_of(ws)
        async with http_client(live) as client:
            response = await client.post(
                path, json={"amount": 1000, "socketId": socket_id}
            )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["message"] == "Payment received, processing request"
        payment = body["payment"]
        assert payment["socket_id"] == socket_id

        processing, succeeded = await receive_statuses(ws, payment["id"], 2)
        assert (processing["status"], processing["version"]) == ("processing", 2)
        assert (succeeded["status"], succeeded["version"]) == ("succeeded", 3)
        await assert_nothing_more(ws, socket_id)

    detail = await get_payment(live, payment)
    assert (detail["status"], detail["version"]) == ("succeeded", 3)


@pytest.mark.parametrize(
    "gateway_delay",
    [
        pytest.param("0", id="enqueue-wakes-the-worker"),
        pytest.param("0.5", id="deferred-outcome-runs-when-due"),
    ],
)
async def test_idle_worker_starts_jobs_without_waiting_for_its_poll(
    gateway_delay: str, transactional_db: None, isolated_channel_layer: str
) -> None:
    """The worker polls only every 60 s here, yet the payment settles at once.

    The enqueue's commit publishes a wake-up (payments.worker.wakeup) that the idle
    worker waits on; a deferred job (the outcome, 0.5 s after the charge)
    runs when due, as the worker waits only until the earliest one is.
    Without them the frames would come a minute later, long after this
    test's timeout.
    """
    with checked_stack(
        isolated_channel_layer,
        worker_interval="60",
        PAYMENTS_SIMULATED_DELAY=gateway_delay,
        worker_verbosity=2,
    ) as live:
        # Nothing is queued or due, so the worker's first wait is the whole
        # poll: the payment below is posted to an idle worker, and only its
        # wake-up can start the job before the minute is out.
        live.worker.wait_for_output("idle; waiting up to 60.00 s")
        async with open_socket(live) as ws, http_client(live) as client:
            socket_id = await socket_id_of(ws)
            response = await client.post(
                "/api/payments/", json={"amount": 1000, "socket_id": socket_id}
            )
            assert response.status_code == 202, response.text
            payment = response.json()
            statuses = await receive_statuses(ws, payment["id"], 2)
            assert [s["status"] for s in statuses] == ["processing", "succeeded"]
