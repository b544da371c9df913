"""config.asgi's HTTP side: Django's middleware and views as one sync stack."""

from __future__ import annotations

import json
from typing import Any

import pytest
from asgiref.sync import SyncToAsync
from asgiref.testing import ApplicationCommunicator
from django.conf import settings
from django.core.handlers.asgi import ASGIHandler

from config.handlers import SyncStackASGIHandler
from payments.models import Payment

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
def make_handler() -> Any:
    return SyncStackASGIHandler


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


def test_config_asgi_serves_http_with_it() -> None:
    from config.asgi import django_asgi_app

    assert isinstance(django_asgi_app, SyncStackASGIHandler)
