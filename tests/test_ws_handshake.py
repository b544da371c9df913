"""WebSocket handshakes: the origin policy, unknown paths, the per-client cap.

Live tests run ``python -m realtime.server`` (tests/live.py) and connect with
the ``websockets`` client, from several loopback source addresses where the
client address matters; in-process tests go through config.asgi with
settings of the test's choosing (proxies, TLS termination).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from typing import Any

import pytest
from channels.testing import WebsocketCommunicator
from websockets.exceptions import InvalidStatus

from config.asgi import application
from tests.helpers import next_frame, open_socket, socket_id_of
from tests.live import HOST, LiveStack, checked_stack

CORS_ORIGIN = "http://localhost:3000"
TIMEOUT = 20.0
CAP = 3


@pytest.fixture
def live(transactional_db: None, isolated_channel_layer: str) -> Iterator[LiveStack]:
    with checked_stack(
        isolated_channel_layer,
        REALTIME_MAX_CONNECTIONS_PER_CLIENT=str(CAP),
    ) as stack:
        yield stack
    for process in stack.history:
        print(process.report())  # shown when the test fails
    assert not [p.name for p in stack.history if "Traceback" in p.output()]


async def expect_refused(live: LiveStack, status: int = 403, **kwargs: Any) -> None:
    try:
        async with open_socket(live, **kwargs):
            pytest.fail(f"the handshake was accepted: {kwargs}")
    except InvalidStatus as refused:
        assert refused.response.status_code == status, kwargs


async def expect_served(live: LiveStack, **kwargs: Any) -> None:
    async with open_socket(live, **kwargs) as ws:
        await socket_id_of(ws)
        await ws.send(json.dumps({"action": "ping"}))
        assert await next_frame(ws) == {"event": "pong"}


# Origins ---------------------------------------------------------------------------


@pytest.mark.e2e
async def test_only_exact_origins_and_the_sites_own_are_accepted(
    live: LiveStack,
) -> None:
    own = f"http://{HOST}:{live.port}"
    for origin in [
        # A host in ALLOWED_HOSTS is no origin: scheme and port count.
        "http://localhost:6666",
        "https://localhost:3000",
        "ftp://localhost",
        "chrome-extension://localhost",
        "http://localhost",
        f"http://127.0.0.1:{live.port + 1}",
        "http://127.0.0.1:9999",
        "http://127.0.0.1",
        f"https://127.0.0.1:{live.port}",
        f"ws://127.0.0.1:{live.port}",
    ]:
        await expect_refused(live, origin=origin)
    await expect_served(live, origin=CORS_ORIGIN)
    await expect_served(live, origin=own)


@pytest.mark.e2e
async def test_host_outside_allowed_hosts_is_refused(live: LiveStack) -> None:
    for host, origin in [
        ("evil.com", CORS_ORIGIN),
        ("evil.com", "http://evil.com"),
        (f"evil.com:{live.port}", f"http://evil.com:{live.port}"),
        ("localhost.evil.com", "http://localhost.evil.com"),
    ]:
        await expect_refused(live, host=host, origin=origin)
    # A Host in ALLOWED_HOSTS is its own site, on the port it names.
    await expect_served(live, host="localhost:3000", origin="http://localhost:3000")
    await expect_served(live, host="localhost:8080", origin="http://localhost:8080")


async def handshake(headers: list[tuple[bytes, bytes]], **scope: Any) -> bool:
    comm = WebsocketCommunicator(application, "/ws/payments/", headers=headers)
    comm.scope.update(scope)
    connected, _ = await comm.connect(timeout=5)
    await comm.disconnect(timeout=5)
    return connected


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("proxy_header", "forwarded_proto", "scheme", "origin", "accepted"),
    [
        # TLS ends at a trusted proxy: the page was https.
        (True, "https", "ws", "https://shop.test", True),
        (True, "https", "ws", "http://shop.test", False),
        (True, "http", "ws", "http://shop.test", True),
        (True, None, "wss", "https://shop.test", True),
        # No proxy configured: a client's X-Forwarded-Proto is not believed.
        (False, "https", "ws", "https://shop.test", False),
        (False, "https", "ws", "http://shop.test", True),
        (False, None, "wss", "https://shop.test", True),
        (False, None, "wss", "http://shop.test", False),
    ],
)
async def test_own_origin_scheme_follows_secure_proxy_ssl_header(
    settings, proxy_header, forwarded_proto, scheme, origin, accepted
) -> None:
    settings.ALLOWED_HOSTS = ["shop.test"]
    settings.SECURE_PROXY_SSL_HEADER = (
        ("HTTP_X_FORWARDED_PROTO", "https") if proxy_header else None
    )
    headers = [(b"origin", origin.encode()), (b"host", b"shop.test")]
    if forwarded_proto:
        headers.append((b"x-forwarded-proto", forwarded_proto.encode()))

    assert await handshake(headers, scheme=scheme) is accepted


@pytest.mark.django_db(transaction=True)
async def test_handshake_without_host_is_refused() -> None:
    assert await handshake([(b"origin", CORS_ORIGIN.encode())]) is False
    assert (
        await handshake([(b"origin", CORS_ORIGIN.encode()), (b"host", b"testserver")])
        is True
    )


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "content_type", [b"text/plain; a*=x'y'z", b"application/json;" + b"a=b;" * 3000]
)
async def test_a_malformed_content_type_does_not_matter_to_a_handshake(
    content_type: bytes,
) -> None:
    """Django raises for one as it builds a request (the origin check's): ignored."""
    headers = [(b"origin", CORS_ORIGIN.encode()), (b"host", b"testserver")]

    assert await handshake([*headers, (b"content-type", content_type)]) is True


# Paths -------------------------------------------------------------------------------


@pytest.mark.e2e
async def test_unknown_paths_are_refused_at_the_handshake(live: LiveStack) -> None:
    for path in [
        "/",
        "/ws/",
        "/ws/other/",
        "/ws/payments/x/",
        "/ws/payments//",
        "/api/payments/",
        "/socket.io/extra/?EIO=4&transport=websocket",
        "/%C3%A9/",
    ]:
        await expect_refused(live, path=path)
    # A client's Daphne-Root-Path is ignored (WEB_TRUST_ROOT_PATH_HEADER off).
    for root_path in ["/elsewhere", "/ws", "/%C3%A9"]:
        await expect_served(live, headers={"Daphne-Root-Path": root_path})
    # Without the slash as with it, as the REST create routes.
    await expect_served(live, path="/ws/payments")
    await expect_served(live, path="/ws/payments/")


# Per-client cap ----------------------------------------------------------------------


@pytest.mark.e2e
async def test_one_address_at_its_cap_is_refused_others_are_served(
    live: LiveStack,
) -> None:
    async with AsyncExitStack() as held:
        sockets = []
        for _ in range(CAP):
            ws = await held.enter_async_context(open_socket(live, source="127.0.0.2"))
            await socket_id_of(ws)
            sockets.append(ws)

        await expect_refused(live, source="127.0.0.2")
        # Refusals hold nothing: still refused, others served meanwhile.
        await expect_refused(live, source="127.0.0.2")
        await expect_served(live, source="127.0.0.3")
        await expect_served(live, source="127.0.0.1")

        await sockets[0].close()
        # The slot is free once the server has ended that socket's consumer.
        async with asyncio.timeout(TIMEOUT):
            while True:
                try:
                    ws = await held.enter_async_context(
                        open_socket(live, source="127.0.0.2")
                    )
                    break
                except InvalidStatus as refused:
                    assert refused.response.status_code == 403
                    await asyncio.sleep(0.05)  # polling for the release
        await socket_id_of(ws)
        # At the cap again.
        await expect_refused(live, source="127.0.0.2")


@pytest.fixture
async def comms() -> AsyncIterator[list[WebsocketCommunicator]]:
    opened: list[WebsocketCommunicator] = []
    yield opened
    for comm in opened:
        if not comm.future.done():
            await comm.disconnect(timeout=5)


@pytest.mark.django_db(transaction=True)
async def test_cap_counts_the_forwarded_client_behind_a_proxy(settings, comms) -> None:
    settings.REALTIME_MAX_CONNECTIONS_PER_CLIENT = 2
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "NUM_PROXIES": 1}

    async def open_from(forwarded_for: str) -> bool:
        comm = WebsocketCommunicator(
            application,
            "/ws/payments/",
            headers=[
                (b"origin", CORS_ORIGIN.encode()),
                (b"host", b"testserver"),
                # What the client sent, then the proxy's own entry.
                (b"x-forwarded-for", f"10.9.9.9, {forwarded_for}".encode()),
            ],
        )
        # Every connection comes from the proxy.
        comm.scope["client"] = ("127.0.0.1", 40000 + len(comms))
        comms.append(comm)
        connected, _ = await comm.connect(timeout=5)
        return connected

    assert [await open_from("203.0.113.1") for _ in range(3)] == [True, True, False]
    assert await open_from("203.0.113.2") is True
    await comms[0].disconnect(timeout=5)
    assert await open_from("203.0.113.1") is True
