"""config.asgi's HTTP side: Django's middleware and views as one sync stack."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from asgiref.sync import SyncToAsync
from asgiref.testing import ApplicationCommunicator
from django.conf import settings
from django.core.handlers.asgi import ASGIHandler
from django.core.signals import request_started
from django.db import connections

from config.handlers import SyncStackASGIHandler
from payments.models import Payment
from tests.live import REPO_ROOT, process_env

pytestmark = pytest.mark.django_db(transaction=True)

ORIGIN = b"http://localhost:3000"  # in the test settings' CORS_ALLOWED_ORIGINS


def http_scope(
    method: str,
    path: str,
    body: bytes = b"",
    headers: tuple[tuple[bytes, bytes], ...] = (),
) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"testserver"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *headers,
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }


async def request(
    app: Any,
    method: str,
    path: str,
    body: bytes = b"",
    headers: tuple[tuple[bytes, bytes], ...] = (),
) -> tuple[int, dict[bytes, bytes], bytes]:
    scope = http_scope(method, path, body, headers)
    communicator = ApplicationCommunicator(app, scope)
    await communicator.send_input(
        {"type": "http.request", "body": body, "more_body": False}
    )
    start = await communicator.receive_output(5)
    content = b""
    while True:
        message = await communicator.receive_output(5)
        content += message.get("body", b"")
        if not message.get("more_body"):
            break
    await communicator.wait(5)
    return start["status"], {k.lower(): v for k, v in start["headers"]}, content


@pytest.fixture
def make_handler() -> Iterator[Any]:
    """Build SyncStackASGIHandlers; close their threads' connections after."""
    made: list[SyncStackASGIHandler] = []

    def make(**kwargs: Any) -> SyncStackASGIHandler:
        made.append(SyncStackASGIHandler(**kwargs))
        return made[-1]

    yield make
    for handler in made:
        handler.threads.close()


def count_thread_switches(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    original = SyncToAsync.__call__

    async def counting(self: SyncToAsync, *args: Any, **kwargs: Any) -> Any:
        calls.append(getattr(self.func, "__qualname__", repr(self.func)))
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(SyncToAsync, "__call__", counting)
    return calls


async def test_a_create_is_served_by_the_sync_stack(make_handler) -> None:
    status, headers, content = await request(
        make_handler(), "POST", "/api/payments/", b'{"amount": 1000}'
    )

    assert status == 202, content
    body = json.loads(content)
    assert headers[b"location"] == f"/api/payments/{body['id']}/".encode()
    assert await Payment.objects.filter(pk=body["id"]).aexists()


async def test_errors_keep_their_json_shape(make_handler) -> None:
    status, _, content = await request(
        make_handler(), "POST", "/api/payments/", b'{"amount": 0}'
    )

    assert status == 400
    assert json.loads(content)["error"]["fields"].keys() == {"amount"}


async def test_middleware_does_not_switch_threads_per_middleware(
    make_handler,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Django's own handler, for comparison: every middleware's
    # process_request and process_response is a thread switch of its own.
    stock = count_thread_switches(monkeypatch)
    status, _, _ = await request(ASGIHandler(), "GET", "/api/payments/nope/")
    assert status == 404
    assert len(stock) > len(settings.MIDDLEWARE)

    monkeypatch.undo()
    ours = count_thread_switches(monkeypatch)
    status, _, _ = await request(make_handler(), "GET", "/api/payments/nope/")

    assert status == 404
    assert "BaseHandler.get_response" in ours
    # The request's one switch, plus request_started/finished's receivers.
    assert len(ours) <= 3, ours


@pytest.fixture
def request_threads() -> Iterator[list[tuple[object, Any]]]:
    """(thread, its open database connection) as each request starts."""
    seen: list[tuple[object, Any]] = []
    # A thread's own token: thread idents are reused once a thread ends.
    local = threading.local()

    def record(**kwargs: Any) -> None:
        if not hasattr(local, "token"):
            local.token = object()
        seen.append((local.token, connections["default"].connection))

    request_started.connect(record)
    yield seen
    request_started.disconnect(record)


async def test_requests_run_in_the_threads_kept_for_them(
    make_handler, request_threads
) -> None:
    handler = make_handler(threads=2)

    for _ in range(4):
        status, _, _ = await request(handler, "GET", "/api/payments/nope/")
        assert status == 404
    # Served one after another, all by the first kept thread.
    assert len({thread for thread, _ in request_threads}) == 1

    answers = await asyncio.gather(
        *(
            request(handler, "POST", "/api/payments/", b'{"amount": 1000}')
            for _ in range(6)
        )
    )

    # Six at once: each is served, in one of the two threads, the others
    # waiting their turn rather than starting a thread of their own.
    assert [status for status, _, _ in answers] == [202] * 6
    assert len({thread for thread, _ in request_threads}) <= 2
    assert await Payment.objects.acount() == 6


async def test_a_kept_thread_keeps_its_database_connection(
    make_handler, request_threads, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = connections["default"].settings_dict
    if database.get("OPTIONS", {}).get("pool"):
        pytest.skip("connections are pooled, not kept (PostgreSQL's default)")
    # DJANGO_CONN_MAX_AGE: the request threads' connections read this dict.
    monkeypatch.setitem(database, "CONN_MAX_AGE", 60)
    handler = make_handler(threads=1)

    for _ in range(3):
        status, _, _ = await request(
            handler, "POST", "/api/payments/", b'{"amount": 1000}'
        )
        assert status == 202

    # The first request opened it; the next ones found it open.
    (first, _), *later = request_threads
    kept = {id(connection) for _, connection in later}
    assert len(later) == 2 and None not in {c for _, c in later}
    assert len(kept) == 1
    assert {thread for thread, _ in later} == {first}


@pytest.fixture
def stuck_view(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Make /api/payments/stuck/ hold its thread until ``release`` is set."""

    class Stuck:
        entered = threading.Event()
        release = threading.Event()

        def install(self, handler: SyncStackASGIHandler) -> None:
            original = handler.get_response

            def get_response(request: Any) -> Any:
                if request.path == "/api/payments/stuck/":
                    self.entered.set()
                    self.release.wait(10)
                return original(request)

            monkeypatch.setattr(handler, "get_response", get_response)

        async def wait_entered(self) -> None:
            assert await asyncio.to_thread(self.entered.wait, 5), "never ran"

    stuck = Stuck()
    yield stuck
    stuck.release.set()


async def test_a_request_finding_no_thread_free_in_time_is_answered_503(
    make_handler, stuck_view
) -> None:
    handler = make_handler(threads=1, thread_timeout=0.2)
    stuck_view.install(handler)
    holding = asyncio.ensure_future(request(handler, "GET", "/api/payments/stuck/"))
    await stuck_view.wait_entered()

    status, headers, content = await request(
        handler, "GET", "/api/payments/nope/", headers=((b"origin", ORIGIN),)
    )

    assert status == 503
    assert headers[b"retry-after"] == b"1"
    assert json.loads(content)["error"]["code"] == "service_unavailable"
    # Without Django's middleware, still readable by a page on an allowed
    # origin, as every other answer under /api/ is.
    assert headers[b"access-control-allow-origin"] == ORIGIN
    assert b"retry-after" in headers[b"access-control-expose-headers"]
    # Once the thread is free again it serves as before.
    stuck_view.release.set()
    assert (await holding)[0] == 404
    status, _, _ = await request(handler, "GET", "/api/payments/nope/")
    assert status == 404


async def test_a_cancelled_request_lends_its_thread_again_once_its_view_ends(
    make_handler, stuck_view
) -> None:
    handler = make_handler(threads=2, thread_timeout=2)
    stuck_view.install(handler)
    body_sent = False

    async def receive() -> dict[str, Any]:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.Future()  # the client stays connected
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        raise AssertionError(f"the cancelled request answered: {message}")

    stuck = asyncio.ensure_future(
        handler(http_scope("GET", "/api/payments/stuck/"), receive, send)
    )
    await stuck_view.wait_entered()
    stuck.cancel()  # as daphne does to a request whose client left
    with pytest.raises(asyncio.CancelledError):
        await stuck

    # Its view still holds the thread: the next requests get the other one
    # instead of queueing behind it (and answering 503).
    for _ in range(3):
        status, _, _ = await request(handler, "GET", "/api/payments/nope/")
        assert status == 404
    assert not stuck_view.release.is_set()


async def test_a_slow_upload_holds_no_thread(make_handler) -> None:
    handler = make_handler(threads=1, thread_timeout=2)
    body = b'{"amount": 1000}'
    uploading = ApplicationCommunicator(
        handler, http_scope("POST", "/api/payments/", body)
    )
    await uploading.send_input(
        {"type": "http.request", "body": body[:5], "more_body": True}
    )

    # The only thread is free while the upload is unfinished.
    for _ in range(2):
        status, _, _ = await request(handler, "GET", "/api/payments/nope/")
        assert status == 404

    await uploading.send_input(
        {"type": "http.request", "body": body[5:], "more_body": False}
    )
    start = await uploading.receive_output(5)
    assert start["status"] == 202
    await uploading.receive_output(5)
    await uploading.wait(5)


def test_config_asgi_serves_http_with_it() -> None:
    from config.asgi import django_asgi_app

    assert isinstance(django_asgi_app, SyncStackASGIHandler)


def test_config_asgi_freezes_what_it_loaded_out_of_the_collectors_way() -> None:
    # In a process of its own: here, other modules imported config.asgi at
    # collection. A full collection would otherwise traverse all of it
    # (ops.heap); the URLconf is loaded first, to be frozen with the rest.
    check = (
        "import gc, sys; import config.asgi; "
        "assert 'config.urls' in sys.modules, 'URLconf not loaded'; "
        "assert gc.get_freeze_count() > 0, 'nothing frozen'"
    )
    done = subprocess.run(
        [sys.executable, "-c", check],
        env=process_env(DJANGO_SETTINGS_MODULE="config.settings.test"),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
