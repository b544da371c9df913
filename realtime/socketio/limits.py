"""The ``maxPayload`` a session advertises: the smallest limit the server keeps.

Engine.IO's client packs what it sends up to ``maxPayload`` bytes; a client
trusting a figure above what the server takes (a polling body over
SOCKETIO_MAX_PAYLOAD or the web server's body limit for the path,
WEB_MAX_BODY_BYTES; a WebSocket frame over REALTIME_MAX_FRAME_BYTES or
daphne's --websocket-max-message-size) would be refused (413) or closed (1009).
"""

from __future__ import annotations

from django.conf import settings

#: What the polling transport's requests ask for, as the web server sees it.
POLLING_TARGET = b"/socket.io/?EIO=4&transport=polling"

#: The web server's largest WebSocket message, when it says
#: (realtime.server: its --websocket-max-message-size).
server_message_limit: int | None = None
#: The web server's largest body of a polling POST, when it says
#: (realtime.server: WEB_MAX_BODY_BYTES for POLLING_TARGET, realtime.http_edge).
server_body_limit: int | None = None


def max_payload() -> int:
    """Return the largest payload every transport of this process accepts."""
    sizes = [settings.SOCKETIO_MAX_PAYLOAD, settings.REALTIME_MAX_FRAME_BYTES]
    for limit in (server_message_limit, server_body_limit):
        if limit:  # 0 is autobahn's "no limit"
            sizes.append(limit)
    return min(sizes)
