"""The ``maxPayload`` a session advertises: the smallest limit the server keeps.

Engine.IO's client packs what it sends up to ``maxPayload`` bytes; a client
trusting a figure above what the server takes (a polling body over
SOCKETIO_MAX_PAYLOAD, a WebSocket frame over REALTIME_MAX_FRAME_BYTES or
daphne's --websocket-max-message-size) would be refused or closed (1009).
"""

from __future__ import annotations

from django.conf import settings

#: The web server's largest WebSocket message, when it says
#: (realtime.server: its --websocket-max-message-size).
server_message_limit: int | None = None


def max_payload() -> int:
    """Return the largest payload every transport of this process accepts."""
    sizes = [settings.SOCKETIO_MAX_PAYLOAD, settings.REALTIME_MAX_FRAME_BYTES]
    if server_message_limit:
        sizes.append(server_message_limit)
    return min(sizes)
