"""WebSocket routes. Add a transport to websocket_urlpatterns; other paths get 403."""

from typing import Any

from channels.routing import URLRouter
from django.urls import re_path

from realtime.consumers import PaymentConsumer
from realtime.security import refuse_handshake
from realtime.socketio.websocket import WebSocketConsumer as SocketIOWebSocketConsumer
from realtime.unavailable import RedisUnavailable

SOCKETIO_PATH = "/socket.io/"

websocket_urlpatterns = [
    # Without the slash too, as the REST create routes accept both.
    re_path(r"^ws/payments/?$", PaymentConsumer.as_asgi()),
    re_path(
        r"^socket\.io/$",
        RedisUnavailable(SocketIOWebSocketConsumer.as_asgi(), name="socket.io"),
    ),
]


def path_below_root(scope: dict[str, Any]) -> str:
    """Return the scope's path without its root_path, as Django's handler reads it.

    A trusted proxy that mounts the site under a prefix (Daphne-Root-Path,
    WEB_TRUST_ROOT_PATH_HEADER) may pass the path with the prefix or without
    it; Django serves both, where Channels' URLRouter raises for the second.
    """
    path, root_path = scope["path"], scope.get("root_path", "")
    if root_path and path.startswith(root_path):
        return path[len(root_path) :]
    return path


class WebsocketRouter(URLRouter):
    """Channels' URLRouter, refusing at the handshake (403) what it cannot route.

    URLRouter raises ValueError for a path no route matches, which daphne
    answers with a 500 and a traceback.
    """

    def __init__(self, routes: list[Any]) -> None:
        super().__init__([*routes, re_path(r"", refuse_handshake)])

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if "path_remaining" not in scope:
            scope = {**scope, "path_remaining": path_below_root(scope)}
        return await super().__call__(scope, receive, send)


class HttpRouter:
    """Send Socket.IO's polling transport to its consumer, everything else to Django.

    Not URLRouter, which raises for a path outside the root path that Django
    serves (path_below_root), and would put a URL resolution before every
    API request for the sake of one path.
    """

    def __init__(self, *, socketio: Any, django: Any) -> None:
        self.socketio = socketio
        self.django = django

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if path_below_root(scope) == SOCKETIO_PATH:
            return await self.socketio(scope, receive, send)
        return await self.django(scope, receive, send)
