"""ASGI entry point: HTTP through Django, WebSocket through Channels."""

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")

# Set up Django (apps, settings) before importing anything that touches models,
# as get_asgi_application() does; its handler is swapped for one that runs
# each request's middleware and view in one thread (config.handlers).
django.setup(set_prefix=False)

from config.handlers import SyncStackASGIHandler  # noqa: E402

django_asgi_app = SyncStackASGIHandler()

from django.core.management.base import BaseCommand  # noqa: E402

# The settings' system checks (config.checks), which manage.py's commands
# run and daphne does not: a bad setting stops the web here. Only those: the
# model checks would open a database connection at import.
BaseCommand().check(tags=["payments"])

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter  # noqa: E402
from django.urls import get_resolver  # noqa: E402

from ops.heap import freeze_startup_objects  # noqa: E402
from realtime.routing import (  # noqa: E402
    HttpRouter,
    WebsocketRouter,
    websocket_urlpatterns,
)
from realtime.security import ConnectionCap, SiteOriginValidator  # noqa: E402
from realtime.socketio.polling import PollingConsumer  # noqa: E402
from realtime.unavailable import (  # noqa: E402
    DatabaseUnavailable,
    RedisUnavailable,
)

application = ProtocolTypeRouter(
    {
        # Socket.IO's polling transport before Django; it checks origins
        # itself (realtime.socketio.polling.origin_allowed).
        "http": HttpRouter(
            socketio=DatabaseUnavailable(
                RedisUnavailable(
                    AuthMiddlewareStack(PollingConsumer.as_asgi()),
                    name="socket.io polling",
                ),
                name="socket.io polling",
            ),
            django=django_asgi_app,
        ),
        # The cap first: it bounds what one client holds, refused or not.
        "websocket": ConnectionCap(
            SiteOriginValidator(
                DatabaseUnavailable(
                    AuthMiddlewareStack(WebsocketRouter(websocket_urlpatterns)),
                    name="websocket",
                )
            )
        ),
    }
)

# The URLconf is loaded lazily by the first request: loaded now, it is frozen
# with the rest of what the process serves with.
get_resolver().url_patterns  # noqa: B018
freeze_startup_objects()
