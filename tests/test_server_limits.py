"""The web server's edges against a real realtime.server process.

Raw sockets, because the attacks are below what an HTTP library will send:
bodies refused before they are read, heads trickled a byte at a time,
malformed heads, chunked bodies, client-set Daphne-Root-Path.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from realtime.http_edge import LINGER
from tests.helpers import wait_until
from tests.live import (
    HOST,
    LiveStack,
    checked_stack,
    rss_bytes,
)

pytestmark = pytest.mark.e2e

TIMEOUT = 10.0
HEAD_TIMEOUT = 2.0
BODY_TIMEOUT = 3.0
API_LIMIT = 64 * 1024
CREATE = "/api/payments/"
HUGE = 200 * 1024 * 1024
CHUNK = 1024 * 1024
#: What the web's resident memory may grow by while refusing a huge body.
RSS_SLACK = 5 * 1024 * 1024


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def error(self) -> dict[str, Any]:
        """The JSON error, checked to be the API's shape."""
        assert self.headers["content-type"] == "application/json", self
        payload = json.loads(self.body)
        assert set(payload) == {"error"}, payload
        assert {"code", "message"} <= set(payload["error"]), payload
        return payload["error"]


class RawClient:
    """One TCP connection speaking HTTP/1.1 by hand."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=TIMEOUT)
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _recv(self, deadline: float) -> bytes:
        self.sock.settimeout(max(deadline - time.monotonic(), 0.01))
        return self.sock.recv(65536)

    def response(self, timeout: float = TIMEOUT) -> Response:
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in self.buffer:
            data = self._recv(deadline)
            if not data:
                raise ConnectionError(f"closed before a response: {self.buffer!r}")
            self.buffer += data
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(self.buffer) < length:
            self.buffer += self._recv(deadline)
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return Response(int(status_line.split()[1]), headers, body)

    def wait_closed(self, timeout: float) -> bytes:
        """Return what arrived before the server closed; fail on timeout."""
        deadline = time.monotonic() + timeout
        received = self.buffer
        try:
            while data := self._recv(deadline):
                received += data
        except ConnectionResetError:
            pass
        except TimeoutError:
            pytest.fail(f"still open after {timeout} s; received {received!r}")
        return received

    def close(self) -> None:
        self.sock.close()


def request_head(method: str, path: str, *headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}", *headers, "", ""]
    return "\r\n".join(lines).encode()


def post_head(
    body: bytes,
    *headers: str,
    path: str = CREATE,
    content_type: str = "application/json",
) -> bytes:
    """The head of a POST of ``body``: its Content-Type and Content-Length."""
    return request_head(
        "POST",
        path,
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        *headers,
    )


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.fixture
def live(transactional_db: None, isolated_channel_layer: str) -> Iterator[LiveStack]:
    with checked_stack(
        isolated_channel_layer,
        worker=False,
        WEB_HEAD_TIMEOUT=str(HEAD_TIMEOUT),
        WEB_BODY_TIMEOUT=str(BODY_TIMEOUT),
    ) as stack:
        yield stack


def post(live: LiveStack, body: bytes, *headers: str, **options: str) -> Response:
    """POST ``body`` on a fresh connection (post_head's ``options``); the answer."""
    client = RawClient(live.port)
    try:
        client.send(post_head(body, *headers, **options) + body)
        return client.response()
    finally:
        client.close()


def create(live: LiveStack, *headers: str) -> Response:
    """POST a valid payment on a fresh connection; return the response."""
    return post(live, b'{"amount": 1000}', *headers)


def warm(live: LiveStack) -> None:
    """One request through the whole stack, so imports and caches are in RSS."""
    assert create(live).status == 202


# 1. Request bodies ---------------------------------------------------------------


def upload(client: RawClient, chunks: Iterator[bytes]) -> threading.Thread:
    """Send ``chunks`` from a thread until they end or the server cuts us off."""

    def send_all() -> None:
        try:
            for chunk in chunks:
                client.sock.sendall(chunk)
        except OSError:
            pass  # the server stopped reading: what it should do

    thread = threading.Thread(target=send_all, daemon=True)
    thread.start()
    return thread


def zeros(total: int, *, chunked: bool) -> Iterator[bytes]:
    block = b"0" * CHUNK
    for _ in range(total // CHUNK):
        yield b"%x\r\n%s\r\n" % (CHUNK, block) if chunked else block
    if chunked:
        yield b"0\r\n\r\n"


@pytest.mark.parametrize("chunked", [False, True], ids=["declared", "chunked"])
def test_200_mb_body_is_refused_at_once_without_memory(
    live: LiveStack, chunked: bool
) -> None:
    warm(live)
    pid = live.web.popen.pid
    rss_before, fds_before = rss_bytes(pid), open_fds(pid)
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {HUGE}"
    client = RawClient(live.port)

    started = time.monotonic()
    client.send(request_head("POST", CREATE, "Content-Type: application/json", framing))
    sender = upload(client, zeros(HUGE, chunked=chunked))
    response = client.response(timeout=TIMEOUT)
    answered_after = time.monotonic() - started

    assert response.status == 413, response
    # At once, not after the 200 MB (the slack is for loaded cores).
    assert answered_after < 3.0
    client.wait_closed(timeout=LINGER + 2)
    grown = rss_bytes(pid) - rss_before
    assert grown < RSS_SLACK, f"web RSS grew {grown / 2**20:.1f} MiB"
    error = response.error()
    assert error["code"] == "request_too_large"
    assert error["message"] == f"body: larger than {API_LIMIT} bytes."
    assert response.headers["connection"] == "close"
    client.close()
    sender.join(TIMEOUT)
    wait_until(lambda: open_fds(pid) <= fds_before, "the socket's release", TIMEOUT)


def test_declared_body_over_limit_gets_no_100_continue(live: LiveStack) -> None:
    client = RawClient(live.port)
    client.send(
        request_head(
            "POST",
            CREATE,
            "Content-Type: application/json",
            f"Content-Length: {API_LIMIT + 1}",
            "Expect: 100-continue",
        )
    )

    response = client.response()

    assert response.status == 413, response
    assert response.error()["code"] == "request_too_large"
    assert client.wait_closed(timeout=LINGER + 2) == b""


def test_body_at_the_limit_is_read(live: LiveStack) -> None:
    # The largest body allowed reaches Django, which answers it (a JSON 400:
    # it is padding, not a payment); one byte more is the server's 413.
    body = b'{"amount": 1000, "description": "' + b"x" * API_LIMIT
    body = body[:API_LIMIT]

    response = post(live, body)

    assert response.status == 400, response
    assert response.error()["code"] == "parse_error"


def test_admin_may_post_more_than_the_api(live: LiveStack) -> None:
    body = b"x" * (API_LIMIT * 2)

    response = post(
        live,
        body,
        path="/admin/login/",
        content_type="application/x-www-form-urlencoded",
    )

    # Django's answer (CSRF), not the server's 413.
    assert response.status == 403


# 13. Chunked request bodies --------------------------------------------------------


def test_chunked_body_is_read(live: LiveStack) -> None:
    body = b'{"amount": 1000}'
    client = RawClient(live.port)
    client.send(
        request_head(
            "POST",
            CREATE,
            "Content-Type: application/json",
            "Transfer-Encoding: chunked",
        )
        + b"%x\r\n%s\r\n" % (6, body[:6])
        + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body) - 6, body[6:])
    )

    response = client.response()

    assert response.status == 202, response
    assert json.loads(response.body)["amount"] == 1000


# 12b. Slowloris --------------------------------------------------------------------


@contextmanager
def trickling(slow: Any, data: bytes) -> Iterator[None]:
    """Send ``data`` every 0.2 s on ``slow`` while inside; close it after."""
    stop = threading.Event()

    def trickle() -> None:
        try:
            while not stop.wait(0.2):
                slow.sock.send(data)
        except OSError:
            pass

    trickler = threading.Thread(target=trickle, daemon=True)
    trickler.start()
    try:
        yield
    finally:
        stop.set()
        trickler.join(TIMEOUT)
        slow.close()


def test_trickled_head_is_closed_within_the_bound_while_others_are_served(
    live: LiveStack,
) -> None:
    slow = RawClient(live.port)
    opened = time.monotonic()
    slow.send(b"POST /api/payments/ HTTP/1.1\r\nHost: x\r\n")
    # A byte every 0.2 s: far inside twisted's 60 s idle timeout, which
    # each byte resets.
    with trickling(slow, b"a"):
        assert create(live).status == 202  # served meanwhile

        response = slow.response(timeout=HEAD_TIMEOUT + TIMEOUT)
        closed = slow.wait_closed(timeout=LINGER + 2)

    assert response.status == 408, response
    error = response.error()
    assert error["code"] == "request_timeout"
    assert error["message"].startswith("headers: ")
    assert closed == b""
    assert time.monotonic() - opened < HEAD_TIMEOUT + LINGER + 3


@pytest.mark.parametrize("chunked", [False, True], ids=["declared", "chunked"])
def test_trickled_body_is_closed_within_its_deadline_while_others_are_served(
    live: LiveStack, chunked: bool
) -> None:
    # Well within the body limit and twisted's idle timeout (every byte
    # restarts it): only the whole-body deadline ends it.
    framing = "Transfer-Encoding: chunked" if chunked else "Content-Length: 1000"
    slow = RawClient(live.port)
    slow.send(request_head("POST", CREATE, "Content-Type: application/json", framing))
    opened = time.monotonic()
    with trickling(slow, b"1\r\n \r\n" if chunked else b" "):
        assert create(live).status == 202  # served meanwhile

        response = slow.response(timeout=BODY_TIMEOUT + TIMEOUT)
        answered_after = time.monotonic() - opened
        closed = slow.wait_closed(timeout=LINGER + 2)

    assert response.status == 408, response
    error = response.error()
    assert error["code"] == "request_timeout"
    assert error["message"] == f"body: not received whole within {BODY_TIMEOUT:g} s."
    assert response.headers["connection"] == "close"
    assert closed == b""
    # Without the deadline it would go on for as long as the bytes come;
    # the slack is for a loaded machine's event loop.
    assert BODY_TIMEOUT - 0.5 < answered_after < BODY_TIMEOUT + 5


def test_body_sent_in_time_after_a_pause_is_served(live: LiveStack) -> None:
    # The deadline is for the whole body, not for each byte: a head, a pause
    # shorter than it, then the body, on one keep-alive connection twice.
    body = b'{"amount": 1000}'
    client = RawClient(live.port)
    for _ in range(2):
        client.send(post_head(body))
        time.sleep(BODY_TIMEOUT / 4)  # the pause is the test's subject
        client.send(body)
        assert client.response().status == 202


def test_idle_connection_is_closed_without_an_answer(live: LiveStack) -> None:
    idle = RawClient(live.port)
    opened = time.monotonic()

    assert idle.wait_closed(timeout=HEAD_TIMEOUT + TIMEOUT) == b""
    assert time.monotonic() - opened < HEAD_TIMEOUT + 3


def test_keep_alive_connection_serves_one_request_after_another(
    live: LiveStack,
) -> None:
    client = RawClient(live.port)
    missing = f"/api/payments/{uuid.uuid4()}/"
    for _ in range(3):
        client.send(request_head("GET", missing))
        assert client.response().status == 404


# Server errors in the API's shape --------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        pytest.param(b"NONSENSE\r\n\r\n", "head", id="request-line"),
        pytest.param(
            request_head("GET", CREATE, "Bad Name: x"), "head", id="header-name"
        ),
        pytest.param(
            request_head("GET", CREATE, "X-A: " + "a" * 20000),
            "head",
            id="head-too-large",
        ),
        pytest.param(
            request_head("POST", CREATE, "Content-Length: 12abc"),
            "head",
            id="content-length",
        ),
        pytest.param(b"GET /\xff HTTP/1.1\r\nHost: x\r\n\r\n", "head", id="path"),
        pytest.param(b"GET /?a=\xff HTTP/1.1\r\nHost: x\r\n\r\n", "head", id="query"),
        pytest.param(
            request_head(
                "POST",
                CREATE,
                "Content-Type: application/json",
                "Transfer-Encoding: chunked",
            )
            + b"zz\r\n",
            "body",
            id="chunk-size",
        ),
    ],
)
def test_server_errors_are_json(live: LiveStack, raw: bytes, field: str) -> None:
    client = RawClient(live.port)
    client.send(raw)

    response = client.response()

    assert response.status == 400, response
    error = response.error()
    assert error["code"] == "bad_request"
    assert error["message"].startswith(f"{field}: ")


# Form bodies: Django's to parse, not twisted's --------------------------------------

BOUNDARY = "b0undary"


def multipart(*parts: bytes, boundary: str = BOUNDARY) -> bytes:
    return b"".join(b"--%s\r\n%s\r\n" % (boundary.encode(), p) for p in parts) + (
        b"--%s--\r\n" % boundary.encode()
    )


def field(name: bytes, value: bytes = b"x") -> bytes:
    return b'Content-Disposition: form-data; name="%s"\r\n\r\n%s' % (name, value)


FORM_BODIES = [
    pytest.param("multipart/form-data", multipart(field(b"a")), id="no-boundary"),
    pytest.param(
        f"multipart/form-data; boundary={BOUNDARY}",
        multipart(field(b"a"), boundary="other"),
        id="wrong-boundary",
    ),
    pytest.param(
        'multipart/form-data; boundary="',
        multipart(field(b"a")),
        id="bad-boundary",
    ),
    pytest.param(
        f"multipart/form-data; boundary={BOUNDARY}",
        multipart(field(b"\xff\xfe")),
        id="non-utf8-name",
    ),
    pytest.param(
        f"multipart/form-data; boundary={BOUNDARY}",
        multipart(*[field(b"f%d" % i) for i in range(10_000)]),
        id="10000-parts",
    ),
    pytest.param(
        "application/x-www-form-urlencoded",
        b"&".join(b"f%d=x" % i for i in range(10_000)),
        id="10000-fields",
    ),
]


@pytest.mark.parametrize(("content_type", "body"), FORM_BODIES)
def test_malformed_form_body_to_the_api_is_a_json_4xx(
    live: LiveStack, content_type: str, body: bytes
) -> None:
    response = post(live, body, content_type=content_type)

    # DRF's answer (the API takes JSON), or the body limit's; twisted's own
    # parse used to preempt both with its "malformed" 400.
    assert response.status in (413, 415), response
    assert response.error()["code"] in ("request_too_large", "unsupported_media_type")


@pytest.mark.parametrize(("content_type", "body"), FORM_BODIES)
def test_malformed_form_body_to_the_admin_login_is_djangos_4xx(
    live: LiveStack, content_type: str, body: bytes
) -> None:
    response = post(live, body, path="/admin/login/", content_type=content_type)

    # Django's own refusal (a bad form, too many fields, or CSRF), never
    # the server's "malformed" 400 nor a 5xx.
    assert response.status in (400, 403), response
    assert b"body: malformed" not in response.body


# 8b. A foreign Host outside /api/: Django's 400, logged in one line -----------------


@pytest.mark.parametrize("path", ["/admin/", "/", "/static/missing.css"])
def test_foreign_host_outside_the_api_is_logged_without_a_traceback(
    live: LiveStack, path: str
) -> None:
    marker = uuid.uuid4().hex
    client = RawClient(live.port)
    host = f"evil-{marker}.example"
    client.send(f"GET {path}?m={marker} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())

    assert client.response().status == 400
    live.web.wait_for_output(f"m={marker}")  # the fence: the request's log line

    lines = [line for line in live.web.output().splitlines() if marker in line]
    security = [line for line in lines if "django.security.DisallowedHost" in line]
    assert len(security) == 1, lines
    assert "Invalid HTTP_HOST header" in security[0]
    assert "Traceback" not in live.web.output()


# 6 and 5c. Daphne-Root-Path ----------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [b"https://evil.example", "/caf\u00e9".encode(), b"\xff\xfe"],
    ids=["absolute-url", "non-ascii", "not-utf8"],
)
def test_client_root_path_is_ignored(live: LiveStack, value: bytes) -> None:
    body = b'{"amount": 1000}'
    client = RawClient(live.port)
    client.send(
        post_head(body)[:-2] + b"Daphne-Root-Path: " + value + b"\r\n\r\n" + body
    )

    response = client.response()

    assert response.status == 202, response
    payment = json.loads(response.body)
    assert response.headers["location"] == f"/api/payments/{payment['id']}/"


@pytest.fixture
def proxied(transactional_db: None, isolated_channel_layer: str) -> Iterator[LiveStack]:
    """A web process told a proxy in front sets Daphne-Root-Path."""
    with checked_stack(
        isolated_channel_layer, worker=False, WEB_TRUST_ROOT_PATH_HEADER="true"
    ) as stack:
        yield stack


def test_trusted_root_path_prefixes_location(proxied: LiveStack) -> None:
    response = create(proxied, "Daphne-Root-Path: /pay")

    assert response.status == 202, response
    payment = json.loads(response.body)
    assert response.headers["location"] == f"/pay/api/payments/{payment['id']}/"


@pytest.mark.parametrize(
    "value",
    [b"https://evil.example", "/caf\u00e9".encode()],
    ids=["absolute-url", "non-ascii"],
)
def test_trusted_root_path_must_be_an_ascii_path(
    proxied: LiveStack, value: bytes
) -> None:
    client = RawClient(proxied.port)
    client.send(
        request_head("GET", CREATE)[:-2] + b"Daphne-Root-Path: " + value + b"\r\n\r\n"
    )

    response = client.response()

    assert response.status == 400, response
    error = response.error()
    assert error["code"] == "bad_request"
    assert error["message"].startswith("Daphne-Root-Path: ")


# 14a. The access log -----------------------------------------------------------------


def test_access_log_redacts_every_spelling_of_client_secret(live: LiveStack) -> None:
    marker = uuid.uuid4().hex
    spellings = [
        "client_secret[]",
        "CLIENT_SECRET",
        "client%5Fsecret",
        "client%255Fsecret",
        "+client_secret+",
        "client_secret%5B0%5D",
    ]
    query = "&".join(f"{name}=TOPSECRET{i}" for i, name in enumerate(spellings))
    client = RawClient(live.port)
    client.send(
        request_head("GET", f"/api/payments/{uuid.uuid4()}/?{query}&m={marker}")
    )

    assert client.response().status == 404
    live.web.wait_for_output(f"m={marker}")  # the fence: the request's log line

    assert "TOPSECRET" not in live.web.output()


# 7. WebSocket handshakes' heads ---------------------------------------------------


def upgrade_head(path: str, *raw_headers: bytes) -> bytes:
    """A WebSocket handshake's head, with ``raw_headers`` as bytes (not ASCII)."""
    head = request_head(
        "GET",
        path,
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
        "Origin: http://localhost:3000",
    )
    return head[:-2] + b"".join(h + b"\r\n" for h in raw_headers) + b"\r\n"


@pytest.mark.parametrize(
    "path", ["/ws/payments/", "/socket.io/?EIO=4&transport=websocket"]
)
@pytest.mark.parametrize(
    ("header", "field"),
    [
        pytest.param(
            b"Sec-WebSocket-Protocol: caf\xc3\xa9",
            "Sec-WebSocket-Protocol",
            id="protocol-utf8",
        ),
        pytest.param(
            b"Sec-WebSocket-Protocol: \xff",
            "Sec-WebSocket-Protocol",
            id="protocol-latin1",
        ),
    ],
)
def test_a_handshake_with_a_non_ascii_header_is_a_json_400(
    live: LiveStack, path: str, header: bytes, field: str
) -> None:
    client = RawClient(live.port)
    client.send(upgrade_head(path, header))

    response = client.response()

    assert response.status == 400, response
    error = response.error()
    assert error["code"] == "bad_request"
    assert error["message"].startswith(f"{field}: "), error
    # The fence: a handshake after it is served by the same process.
    served = RawClient(live.port)
    served.send(upgrade_head("/ws/payments/"))
    assert served.response().status == 101
