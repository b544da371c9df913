"""With Redis away, the web process refuses cleanly: no 500, no traceback.

A real realtime.server whose REDIS_URL points at a port nobody listens on:
Socket.IO's polling requests are a JSON 503, its WebSocket and /ws/payments/
are refused at the handshake, and the log holds warnings, not tracebacks.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from django.db import connection
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from realtime.socketio import sessions
from tests.live import HOST, LiveStack, database_url, free_port, live_stack

pytestmark = pytest.mark.e2e

TIMEOUT = 10.0


@pytest.fixture
def redis_away(transactional_db: None) -> Iterator[LiveStack]:
    with live_stack(
        database_url=database_url(connection.settings_dict),
        redis_url=f"redis://{HOST}:{free_port()}/0",
        channels_prefix="redis-away",
        worker=False,
    ) as stack:
        yield stack
        crashed = [p.name for p in stack.processes if p.returncode is not None]
    for process in stack.history:
        print(process.report())  # shown when the test fails
    assert not crashed, f"exited during the test: {crashed}"


def assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/json"
    error = json.loads(response.text)["error"]
    assert error["code"] == "service_unavailable", error


@pytest.mark.parametrize(
    ("method", "query", "body"),
    [
        ("GET", "EIO=4&transport=polling", None),
        # A sid that passes its HMAC check (a forged one is a 400 whatever
        # Redis does), so the request goes on to the session's keys.
        ("GET", "EIO=4&transport=polling&sid={sid}", None),
        ("POST", "EIO=4&transport=polling&sid={sid}", b"40"),
    ],
    ids=["handshake", "poll", "post"],
)
def test_socketio_polling_is_a_json_503_without_a_traceback(
    redis_away: LiveStack, method: str, query: str, body: bytes | None
) -> None:
    with httpx.Client(base_url=redis_away.http_url, timeout=TIMEOUT) as client:
        query = query.format(sid=sessions.new_sid())
        response = client.request(method, f"/socket.io/?{query}", content=body)
        # The fence: a request after it, answered and logged after it.
        fence = client.get("/api/payments/00000000-0000-4000-8000-000000000000/")

    assert_unavailable(response)
    assert fence.status_code == 404
    redis_away.web.wait_for_output("/api/payments/00000000-0000-4000-8000")
    output = redis_away.web.output()
    assert "Traceback" not in output
    assert "Redis unreachable" in output


@pytest.mark.parametrize(
    "path",
    ["/socket.io/?EIO=4&transport=websocket", "/ws/payments/"],
    ids=["socketio", "ws-payments"],
)
def test_websocket_is_refused_at_the_handshake_without_a_traceback(
    redis_away: LiveStack, path: str
) -> None:
    with pytest.raises(InvalidStatus) as refused:
        with connect(
            redis_away.ws_url + path,
            origin=redis_away.http_url,
            open_timeout=TIMEOUT,
        ):
            pass

    assert refused.value.response.status_code == 403
    redis_away.web.wait_for_output(f"WSDISCONNECT {path.split('?')[0]} ")
    output = redis_away.web.output()
    assert "Traceback" not in output
    assert "unreachable" in output
