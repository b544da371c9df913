"""WebSocket routes. Add a transport to websocket_urlpatterns; other paths get 403."""

from typing import Any

from channels.routing import URLRouter
from django.urls import re_path

from realtime.consumers import PaymentConsumer
from realtime.security import refuse_handshake
from realtime.socketio.websocket import WebSocketConsumer as SocketIOWebSocketConsumer

websocket_urlpatterns = [
    # Without the slash too, as the REST create routes accept both.
    re_path(r"^ws/payments/?$", PaymentConsumer.as_asgi()),
    re_path(r"^socket\.io/$", SocketIOWebSocketConsumer.as_asgi()),
]


class WebsocketRouter(URLRouter):
    """Channels' URLRouter, refusing at the handshake (403) what it cannot route.

    URLRouter raises ValueError for a path no route matches, or one outside
    the scope's root_path (daphne takes it from a Daphne-Root-Path header),
    and daphne answers that with a 500 and a traceback.
    """

    def __init__(self, routes: list[Any]) -> None:
        super().__init__([*routes, re_path(r"", refuse_handshake)])

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        root_path = scope.get("root_path", "")
        if "path_remaining" not in scope and not scope["path"].startswith(root_path):
            return await refuse_handshake(scope, receive, send)
        return await super().__call__(scope, receive, send)
