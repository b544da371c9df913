"""Handshake checks for every WebSocket route: the origin policy and the per-client cap.

Both read the handshake through Django's own request (``scope_request``), so
the Host is checked against ALLOWED_HOSTS, the scheme follows
SECURE_PROXY_SSL_HEADER and the client address follows DJANGO_NUM_PROXIES
exactly as they do for the REST API.
"""

from __future__ import annotations

import io
import logging
from collections import Counter
from typing import Any
from urllib.parse import SplitResult, urlsplit

from django.conf import settings
from django.core.exceptions import DisallowedHost
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpRequest
from rest_framework.throttling import BaseThrottle

logger = logging.getLogger(__name__)

#: A WebSocket scope's scheme, as the page that opened it was served.
_PAGE_SCHEMES = {"ws": "http", "wss": "https"}
_DEFAULT_PORTS = {"http": 80, "https": 443}


def scope_request(scope: dict[str, Any]) -> HttpRequest:
    """Return Django's request for an ASGI scope (HTTP or WebSocket), body empty.

    The query string and Content-Type are left out: neither is needed here,
    and Django fails on a query string that is not UTF-8 and raises for a
    malformed Content-Type.
    """
    headers = [
        (name, value)
        for name, value in scope.get("headers", [])
        if name.lower() != b"content-type"
    ]
    return ASGIRequest(
        {
            **scope,
            "method": scope.get("method", "GET"),
            "query_string": b"",
            "headers": headers,
        },
        io.BytesIO(),
    )


def is_serialized_origin(origin: SplitResult) -> bool:
    """Tell whether ``origin`` has the form browsers send: scheme://host[:port].

    "http://evil.example@localhost:3000" (userinfo) or
    "http://localhost:3000.evil.example" (a port that is no number) must not
    count as localhost; no browser sends such an origin.
    """
    try:
        origin.port  # noqa: B018 - raises ValueError for a port that is no number
    except ValueError:
        return False
    return bool(origin.scheme and origin.hostname) and not (
        origin.username is not None
        or origin.password is not None
        or origin.path
        or origin.query
        or origin.fragment
    )


def _normalized(origin: str) -> str | None:
    """Return ``scheme://host[:port]`` lower-cased, without its default port."""
    try:
        url = urlsplit(origin)
        port = url.port
    except ValueError:
        return None
    if not url.scheme or url.hostname is None:
        return None
    hostname = f"[{url.hostname}]" if ":" in url.hostname else url.hostname
    scheme = url.scheme.lower()
    if port is None or port == _DEFAULT_PORTS.get(scheme):
        return f"{scheme}://{hostname}"
    return f"{scheme}://{hostname}:{port}"


def host_allowed(scope: dict[str, Any]) -> bool:
    """Tell whether the scope's Host is in ALLOWED_HOSTS, as Django requires."""
    try:
        scope_request(scope).get_host()
    except DisallowedHost:
        return False
    return True


def origin_allowed(scope: dict[str, Any]) -> bool:
    """Tell whether a browser page at the scope's Origin may use this connection.

    The one origin policy of the site, for every transport (the JSON
    WebSocket, Socket.IO's WebSocket and polling). Allowed: an exact
    scheme://host:port of CORS_ALLOWED_ORIGINS (django-cors-headers' rule
    for REST), or the site's own origin: the handshake's Host (which must be
    in ALLOWED_HOSTS, as Django requires of every request) with the scheme
    the page was served over (X-Forwarded-Proto under
    SECURE_PROXY_SSL_HEADER). Browsers send cookies with cross-site
    WebSocket handshakes, so without this any page could open a socket as
    the logged-in user.
    """
    request = scope_request(scope)
    try:
        host = request.get_host()
    except DisallowedHost:
        return False
    origin = request.headers.get("origin")
    if not origin:
        return False
    try:
        parsed = urlsplit(origin)
    except ValueError:
        return False
    if not is_serialized_origin(parsed):
        return False
    wanted = _normalized(origin)
    if wanted is None:
        return False
    if wanted in {_normalized(o) for o in settings.CORS_ALLOWED_ORIGINS}:
        return True
    scheme = _PAGE_SCHEMES.get(request.scheme, request.scheme)
    return scheme in _DEFAULT_PORTS and wanted == _normalized(f"{scheme}://{host}")


def client_address(scope: dict[str, Any]) -> str | None:
    """Return the client's address as the REST throttles see it (DJANGO_NUM_PROXIES)."""
    return BaseThrottle().get_ident(scope_request(scope))


async def refuse_handshake(scope: Any, receive: Any, send: Any) -> None:
    """Refuse a WebSocket at its handshake: daphne answers 403.

    An ASGI app rather than channels' WebsocketDenier, which as a consumer
    opens a channel-layer channel (a Redis subscription) for each refusal.
    """
    message = await receive()
    if message["type"] == "websocket.connect":
        await send({"type": "websocket.close"})


class SiteOriginValidator:
    """Refuse WebSocket handshakes that ``origin_allowed`` refuses."""

    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "websocket" and not origin_allowed(scope):
            return await refuse_handshake(scope, receive, send)
        return await self.application(scope, receive, send)


class ClientSlots:
    """Count what each client address holds in this web process, up to a limit.

    In process memory: taking and releasing a slot needs no round trip, and
    a process that dies takes its count with it, as it does its sockets.
    """

    def __init__(self) -> None:
        self.held: Counter[str] = Counter()

    def take(self, address: str, limit: int) -> bool:
        """Take one of ``address``'s ``limit`` slots; False if it holds them all."""
        if self.held[address] >= limit:
            return False
        self.held[address] += 1
        return True

    def release(self, address: str) -> None:
        self.held[address] -= 1
        if self.held[address] <= 0:
            del self.held[address]


class ConnectionCap:
    """Hold each client address to REALTIME_MAX_CONNECTIONS_PER_CLIENT open sockets.

    Per web process: the count lives here, so it needs no round trip and is
    released whatever way the socket ends (the application returning,
    raising, or being cancelled by the server). A connection without a
    client address (a UNIX socket with no X-Forwarded-For) is not counted.
    """

    def __init__(self, application: Any) -> None:
        self.application = application
        self.open = ClientSlots()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return await self.application(scope, receive, send)
        address = client_address(scope)
        if address is None:
            return await self.application(scope, receive, send)
        if not self.open.take(address, settings.REALTIME_MAX_CONNECTIONS_PER_CLIENT):
            logger.info("WebSocket refused: %s holds its connection cap", address)
            return await refuse_handshake(scope, receive, send)
        try:
            return await self.application(scope, receive, send)
        finally:
            self.open.release(address)
