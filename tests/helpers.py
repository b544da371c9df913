"""Helpers the tests share: clients of a live stack, frames, the error shape.

The live helpers talk to the processes tests/live.py starts: ``open_socket``
and ``next_frame`` with websockets' asyncio client, ``create_payment`` over
HTTP; the ``*_sync`` ones are the same with the threaded clients, for tests
that kill and start processes while a socket keeps reading.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.db import connection
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient
from websockets.asyncio.client import ClientConnection, connect
from websockets.sync.client import ClientConnection as SyncClientConnection
from websockets.sync.client import connect as sync_connect

from realtime import groups, notify
from scripts.processes import poll_until
from tests.live import HOST

if TYPE_CHECKING:
    from payments.worker.worker import WakeableWorker
    from tests.live import LiveStack

#: In the test settings' CORS_ALLOWED_ORIGINS.
ORIGIN = "http://localhost:3000"
WS_PATH = "/ws/payments/"
CREATE = "/api/payments/"
LIST = "/api/payments/"
SEED = "/api/payments/make-payment-with-socket"
TOKEN = "/api/auth/token/"
#: Every user the make_user fixture creates has it.
PASSWORD = "correct horse battery staple"
# Generous: the whole path (HTTP, worker poll, gateway delay, Redis, socket)
# runs in separate processes on a shared machine. A deadline, not a delay.
TIMEOUT = 20.0


# Waiting ----------------------------------------------------------------------


def wait_until[T](condition: Callable[[], T], what: str, timeout: float = TIMEOUT) -> T:
    """scripts/processes.py's poll_until, failing the test at the deadline."""
    try:
        return poll_until(condition, what, timeout)
    except TimeoutError as exc:
        pytest.fail(str(exc))


def at_once[T](call: Callable[[], T], threads: int = 4) -> list[T]:
    """Run ``call`` in ``threads`` threads released together; return each result.

    For races on the database: each thread closes its own connection. An
    exception in any thread is raised here, once all have ended.
    """
    barrier = threading.Barrier(threads)
    results: list[T] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run() -> None:
        try:
            barrier.wait(timeout=30)
            result = call()
            with lock:
                results.append(result)
        except BaseException as exc:  # raised in the test's thread below
            with lock:
                errors.append(exc)
        finally:
            connection.close()

    started = [threading.Thread(target=run) for _ in range(threads)]
    for thread in started:
        thread.start()
    for thread in started:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in started), "a thread hung"
    if errors:
        raise errors[0]
    return results


# Users and requests in process ------------------------------------------------------


def detail(payment_id: Any) -> str:
    return f"/api/payments/{payment_id}/"


def token_client(user: Any) -> APIClient:
    """A DRF test client authenticated with ``user``'s token."""
    client = APIClient()
    client.credentials(
        HTTP_AUTHORIZATION=f"Token {Token.objects.get_or_create(user=user)[0].key}"
    )
    return client


def create_from(client: APIClient, address: str, **headers: str) -> Any:
    """POST a payment from the client ``address`` (REMOTE_ADDR)."""
    return client.post(
        CREATE, {"amount": 1000}, format="json", REMOTE_ADDR=address, **headers
    )


# The error shape --------------------------------------------------------------


def assert_error(response: Any, status: int, code: str, *names: str) -> dict:
    """Check the one error shape and return its ``error``.

    Each of ``names`` appears in the message; for a validation_error each is
    also a key of ``fields``, with a list of messages.
    """
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert error["code"] == code, error
    assert isinstance(error["message"], str), error
    assert error["message"], error
    for name in names:
        assert name in error["message"], error
    if code == "validation_error":
        assert set(error) == {"code", "message", "fields"}, error
        for name in names:
            assert name in error["fields"], error
            assert all(isinstance(m, str) for m in error["fields"][name])
    else:
        assert set(error) == {"code", "message"}, error
    return error


# A live stack over asyncio ------------------------------------------------------


def open_socket(
    live: LiveStack,
    path: str = WS_PATH,
    *,
    origin: str | None = ORIGIN,
    host: str | None = None,
    source: str | None = None,
    headers: dict[str, str] | None = None,
    **kwargs: Any,
) -> connect:
    """Connect to the live server: ``host`` is the Host header, ``source`` ours."""
    if source is not None:
        kwargs["local_addr"] = (source, 0)
    return connect(
        # The URI names the Host header; host= and port= where to connect.
        f"ws://{host or f'{HOST}:{live.port}'}{path}",
        host=HOST,
        port=live.port,
        origin=origin,
        additional_headers=headers,
        proxy=None,
        open_timeout=TIMEOUT,
        **kwargs,
    )


async def next_frame(ws: ClientConnection, timeout: float = TIMEOUT) -> dict[str, Any]:
    """The next text frame, parsed; TimeoutError past ``timeout``."""
    message = await asyncio.wait_for(ws.recv(), timeout)
    assert isinstance(message, str), f"not a text frame: {message!r}"
    return json.loads(message)


async def socket_id_of(ws: ClientConnection) -> str:
    """The socket id the server sends first."""
    frame = await next_frame(ws)
    assert frame["event"] == "socket-id", frame
    return frame["data"]


def marker_message() -> tuple[dict[str, Any], dict[str, Any]]:
    """A fence: a group message for a payment nobody has, and the frame it gives."""
    payment = {"id": str(uuid.uuid4()), "version": 1}
    return (
        {"type": notify.MESSAGE_TYPE, "payment": payment},
        {"event": "payment-status", "data": payment},
    )


async def frames_before_fence(
    ws: ClientConnection | WebsocketCommunicator, socket_id: str
) -> list[dict[str, Any]]:
    """Every frame the socket sends before a fence sent now through its own group.

    The fence is a group message for a payment nobody has (marker_message):
    it queues behind anything already on its way to this socket, so a frame
    that was (wrongly) sent shows up here without waiting for a quiet
    period. A live socket (open_socket: the test shares the processes'
    channel-layer key space) or an in-process WebsocketCommunicator.
    """
    message, fence = marker_message()
    await get_channel_layer().group_send(groups.socket_group(socket_id), message)
    frames = []
    while True:
        if isinstance(ws, WebsocketCommunicator):
            frame = await ws.receive_json_from(timeout=TIMEOUT)
        else:
            frame = await next_frame(ws)
        if frame == fence:
            return frames
        frames.append(frame)


async def assert_nothing_more(
    ws: ClientConnection | WebsocketCommunicator, socket_id: str
) -> None:
    """Check the socket sends nothing before a fence (frames_before_fence)."""
    assert await frames_before_fence(ws, socket_id) == []


async def assert_closed_quietly(comm: WebsocketCommunicator) -> None:
    """Check a consumer that closed answers nothing more, not even a fence.

    The disconnect is the fence: the consumer handles the client's messages
    in order, so once it ended for the disconnect it had handled all before.
    """
    await comm.disconnect(timeout=TIMEOUT)
    assert comm.output_queue.empty(), comm.output_queue.get_nowait()


async def create_payment(live: LiveStack, **body: Any) -> dict[str, Any]:
    """POST a payment (1000 in the default currency unless ``body`` says)."""
    async with httpx.AsyncClient(
        base_url=live.http_url, trust_env=False, timeout=TIMEOUT
    ) as client:
        response = await client.post(CREATE, json={"amount": 1000, **body})
    assert response.status_code == 202, response.text
    payment = response.json()
    assert (payment["status"], payment["version"]) == ("pending", 1), payment
    return payment


# A live stack over threads -------------------------------------------------------


def open_socket_sync(live: LiveStack) -> SyncClientConnection:
    return sync_connect(
        f"{live.ws_url}{WS_PATH}",
        origin=ORIGIN,
        proxy=None,
        open_timeout=TIMEOUT,
        # Frames queue here while the test is busy killing processes.
        max_queue=None,
    )


def next_frame_sync(
    ws: SyncClientConnection, timeout: float = TIMEOUT
) -> dict[str, Any]:
    try:
        message = ws.recv(timeout=timeout)
    except TimeoutError:
        pytest.fail(f"waited {timeout} s for a frame")
    assert isinstance(message, str), f"not a text frame: {message!r}"
    return json.loads(message)


def socket_id_of_sync(ws: SyncClientConnection) -> str:
    frame = next_frame_sync(ws)
    assert frame["event"] == "socket-id", frame
    return frame["data"]


def create_payment_sync(live: LiveStack, **body: Any) -> dict[str, Any]:
    """create_payment, from a thread."""
    with httpx.Client(base_url=live.http_url, trust_env=False, timeout=TIMEOUT) as c:
        response = c.post(CREATE, json={"amount": 1000, **body})
    assert response.status_code == 202, response.text
    payment = response.json()
    assert (payment["status"], payment["version"]) == ("pending", 1), payment
    return payment


def make_worker() -> WakeableWorker:
    """The db_worker command's worker, built in this process for a unit test."""
    from payments.worker.worker import WakeableWorker

    return WakeableWorker(
        queue_names=["default"],
        interval=1.0,
        batch=False,
        backend_name="default",
        startup_delay=False,
        max_tasks=None,
        worker_id="test",
        excluded_queue_names=[],
    )
