"""WebSocket routes. Add a transport here; config.asgi refuses every other path."""

from django.urls import re_path

from realtime.consumers import PaymentConsumer
from realtime.security import refuse_handshake

payment_consumer = PaymentConsumer.as_asgi()

websocket_urlpatterns = [
    # Without the slash too, as the REST create routes accept both.
    re_path(r"^ws/payments/?$", payment_consumer),
]

#: Last in the router: Channels' URLRouter raises for a path it cannot route,
#: which daphne answers with a 500 and a traceback.
unknown_path = re_path(r"", refuse_handshake)
