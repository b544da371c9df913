"""The web server's HTTP edge: the limits daphne and twisted lack, in JSON.

Daphne's HTTP layer is twisted's ``HTTPChannel`` and ``Request``. Left alone
they:

- read a request body whole before the application sees any of it (into
  memory below 100 kB, a temporary file above), so a 1 GB POST costs 1 GB
  before Django can refuse it;
- reset their only timer (60 s idle) on every byte, so a head or a body
  trickled a byte at a time holds its connection for ever (slowloris);
- parse a POST's multipart/form-data or urlencoded body themselves
  (``Request.requestReceived``) into ``request.args``, which daphne never
  reads: a second parse of up to the whole body, before Django's own, and a
  body it cannot parse is refused there, never reaching Django;
- answer errors with an HTML page (daphne) or a bare status line (twisted);
- pass a chunked body on without a Content-Length, which Django reads as
  empty;
- take ``Daphne-Root-Path`` from any client, and answer a non-ASCII one with
  daphne's HTML 500.

Here a declared body over the path's limit (``WEB_MAX_BODY_BYTES``) is
refused after the head, before a byte of it is read; a chunked one as soon as
it passes the limit; a head must arrive whole within ``WEB_HEAD_TIMEOUT``, a
body within ``WEB_BODY_TIMEOUT`` of its head; form bodies are left to Django;
``Daphne-Root-Path`` is dropped unless ``WEB_TRUST_ROOT_PATH_HEADER``; and
every error the server answers itself is the API's JSON error shape.
"""

from __future__ import annotations

import contextvars
from typing import Any
from urllib.parse import unquote, urlsplit

from daphne.http_protocol import HTTPFactory, WebRequest
from django.conf import settings
from twisted.web import http

from config import errors

#: Seconds a refused connection keeps reading (and dropping) what the client
#: still sends before it is cut. Closing a socket with unread bytes makes the
#: kernel send RST, and a client that gets RST while still uploading may never
#: read the 413 sitting in its buffer; a short linger lets it.
LINGER = 2.0
#: The request whose reply is being written: daphne writes its access-log
#: entry inside that call and passes no request (realtime.server.AccessLog).
replying: contextvars.ContextVar[http.Request | None] = contextvars.ContextVar(
    "replying", default=None
)
ROOT_PATH_HEADER = b"Daphne-Root-Path"

REASONS = {
    400: "Bad Request",
    408: "Request Timeout",
    413: "Content Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
#: daphne's basic_error() texts, as the API's (code, message).
DAPHNE_ERRORS = {
    "Invalid header name": ("bad_request", "headers: invalid header name."),
    "Invalid header value": ("bad_request", "headers: invalid header value."),
    "Invalid characters in path": ("bad_request", "path: not ASCII."),
    "Invalid query string": ("bad_request", "query_string: not ASCII."),
    "Application failed to respond within time limit.": (
        "service_unavailable",
        "server: no response in time; retry.",
    ),
}


def error_response(status: int, code: str, message: str) -> bytes:
    """Return a whole HTTP/1.1 response that closes the connection."""
    body = errors.error_json(code, message)
    head = (
        f"HTTP/1.1 {status} {REASONS[status]}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def body_limit(target: bytes) -> int:
    """Return the largest body, in bytes, for a request target.

    The longest prefix of ``WEB_MAX_BODY_BYTES`` matching the path (decoded as
    Django will see it) wins; a path none matches gets the smallest limit.
    """
    path = unquote(urlsplit(target).path.decode("latin-1"))
    limits: dict[str, int] = settings.WEB_MAX_BODY_BYTES
    matches = [prefix for prefix in limits if path.startswith(prefix)]
    if not matches:
        return min(limits.values())
    return limits[max(matches, key=len)]


class LimitedHTTPChannel(http.HTTPChannel):
    """Twisted's HTTP/1.1 channel with a head deadline and early refusals."""

    refused = False
    _lost = False
    _head_timer: Any = None
    _body_timer: Any = None
    _linger_timer: Any = None

    # Head deadline -----------------------------------------------------------

    def connectionMade(self) -> None:  # noqa: N802
        super().connectionMade()
        self._start_head_timer()

    def requestDone(self, request: http.Request) -> None:  # noqa: N802
        # Armed before the parent replays pipelined bytes, which may hold the
        # next head whole (and so disarm it at once).
        if self.persistent and not self._lost:
            self._start_head_timer()
        super().requestDone(request)

    def _start_head_timer(self) -> None:
        self._cancel_head_timer()
        if settings.WEB_HEAD_TIMEOUT:
            self._head_timer = self.callLater(
                settings.WEB_HEAD_TIMEOUT, self._head_timed_out
            )

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None and self._head_timer.active():
            self._head_timer.cancel()
        self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._receivedHeaderSize or self._buffer:
            self.refuse(
                408,
                "request_timeout",
                f"headers: not received whole within {settings.WEB_HEAD_TIMEOUT:g} s.",
            )
        else:
            # An idle keep-alive connection: there is no request to answer.
            self.loseConnection()

    # Body limit and deadline -------------------------------------------------

    def allHeadersReceived(self) -> None:  # noqa: N802
        self._cancel_head_timer()
        limit = body_limit(self._path)
        if self.length is not None and self.length > limit:
            self.refuse_too_large(limit)
            return
        self.requests[-1].body_limit = limit
        # A body follows (declared or chunked): twisted's idle timer would
        # let it trickle in a byte a minute, so the whole of it has a deadline.
        if self.length != 0 and settings.WEB_BODY_TIMEOUT:
            self._body_timer = self.callLater(
                settings.WEB_BODY_TIMEOUT, self._body_timed_out
            )
        super().allHeadersReceived()

    def _cancel_body_timer(self) -> None:
        if self._body_timer is not None and self._body_timer.active():
            self._body_timer.cancel()
        self._body_timer = None

    def _body_timed_out(self) -> None:
        self._body_timer = None
        self.refuse(
            408,
            "request_timeout",
            f"body: not received whole within {settings.WEB_BODY_TIMEOUT:g} s.",
        )

    def refuse_too_large(self, limit: int) -> None:
        self.refuse(413, "request_too_large", f"body: larger than {limit} bytes.")

    # Refusal -----------------------------------------------------------------

    def refuse(self, status: int, code: str, message: str) -> None:
        """Answer ``status`` in JSON, stop parsing, and close after LINGER."""
        if self.refused or self._lost:
            return
        self.refused = True
        self._cancel_head_timer()
        self._cancel_body_timer()
        self._dataBuffer = []
        self.transport.write(error_response(status, code, message))
        self._networkProducer.unregisterProducer()
        # Half-close: the client reads the answer and EOF; what it still sends
        # is read and dropped until it closes or LINGER passes.
        lose_write = getattr(self.transport, "loseWriteConnection", None)
        if lose_write is None:
            self.transport.loseConnection()
            return
        lose_write()
        self._linger_timer = self.callLater(LINGER, self.transport.abortConnection)

    def _respondToBadRequestAndDisconnect(self) -> None:  # noqa: N802
        if self.line_mode:
            self.refuse(400, "bad_request", "head: malformed request line or header.")
        else:
            self.refuse(400, "bad_request", "body: malformed chunked encoding.")

    def lineLengthExceeded(self, line: bytes) -> None:  # noqa: N802
        # LineReceiver's answer is to drop the connection without a word.
        self.refuse(
            400,
            "bad_request",
            f"head: a line is longer than {self.MAX_LENGTH} bytes.",
        )

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if not self.refused:
            super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:  # noqa: N802
        if not self.refused:
            super().lineReceived(line)

    def rawDataReceived(self, data: bytes) -> None:  # noqa: N802
        if not self.refused:
            super().rawDataReceived(data)

    def allContentReceived(self) -> None:  # noqa: N802
        self._cancel_body_timer()
        if not self.refused:
            super().allContentReceived()

    def connectionLost(self, reason: Any) -> None:  # noqa: N802
        self._lost = True
        self._cancel_head_timer()
        self._cancel_body_timer()
        if self._linger_timer is not None and self._linger_timer.active():
            self._linger_timer.cancel()
        super().connectionLost(reason)


class LimitedRequest(WebRequest):
    """daphne's request, within its body limit, with JSON errors."""

    #: Set by the channel from the path once the head is in.
    body_limit: int | None = None
    _body_received = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # twisted.web.http.Request.requestReceived would parse a POST's
        # multipart/form-data (the email package, the whole body at once) or
        # urlencoded body into request.args, which daphne never reads, and
        # refuse one it cannot parse itself. Request.__init__ sets this flag
        # (True by default), so a class attribute would not hold.
        self._parsePOSTFormSubmission = False

    def handle_reply(self, message: dict[str, Any]) -> None:
        token = replying.set(self)
        try:
            super().handle_reply(message)
        finally:
            replying.reset(token)

    def gotLength(self, length: int | None) -> None:  # noqa: N802
        # A chunked body's length is unknown but bounded: a small bound is
        # kept in memory, as twisted does for a small declared length.
        super().gotLength(self.body_limit if length is None else length)

    def handleContentChunk(self, data: bytes) -> None:  # noqa: N802
        channel = self.channel
        if channel is None or channel.refused:
            return
        self._body_received += len(data)
        if self.body_limit is not None and self._body_received > self.body_limit:
            channel.refuse_too_large(self.body_limit)
            return
        super().handleContentChunk(data)

    def process(self) -> Any:
        headers = self.requestHeaders
        if not settings.WEB_TRUST_ROOT_PATH_HEADER:
            # Only a proxy may say where the application is mounted; from a
            # client it would rewrite every absolute URL (Location) we build.
            headers.removeHeader(ROOT_PATH_HEADER)
        else:
            for value in headers.getRawHeaders(ROOT_PATH_HEADER, []):
                try:
                    root_path = unquote(value.decode("ascii"))
                except UnicodeDecodeError:
                    root_path = None
                if root_path is None or not (root_path == "" or root_path[0] == "/"):
                    self.json_error(
                        400,
                        "bad_request",
                        "Daphne-Root-Path: must be an ASCII path starting with /.",
                    )
                    return None
        subprotocols = headers.getRawHeaders(b"Sec-WebSocket-Protocol", [])
        if _is_websocket_upgrade(headers) and not all(
            value.isascii() for value in subprotocols
        ):
            # daphne decodes the subprotocols as ASCII while it builds the
            # scope, and a failure there is a 500 with a traceback.
            self.json_error(
                400, "bad_request", "Sec-WebSocket-Protocol: must be ASCII."
            )
            return None
        if headers.hasHeader(b"Transfer-Encoding"):
            # Django reads CONTENT_LENGTH bytes of the body and nothing else:
            # give the decoded body its length.
            headers.removeHeader(b"Transfer-Encoding")
            self.content.seek(0, 2)
            headers.setRawHeaders(b"Content-Length", [b"%d" % self.content.tell()])
            self.content.seek(0)
        return super().process()

    def basic_error(self, status: int, status_text: bytes, body: str) -> None:
        code, message = DAPHNE_ERRORS.get(
            body,
            ("server_error", "server: internal error; retry."),
        )
        self.json_error(status, code, message)

    def json_error(self, status: int, code: str, message: str) -> None:
        body = errors.error_json(code, message)
        self.handle_reply(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"Content-Type", b"application/json"),
                    (b"Content-Length", b"%d" % len(body)),
                ],
            }
        )
        self.handle_reply({"type": "http.response.body", "body": body})


def _is_websocket_upgrade(headers: Any) -> bool:
    """Whether daphne hands the request to its WebSocket side (WebRequest.process)."""
    upgrade = headers.getRawHeaders(b"Upgrade", [b""])[0]
    return upgrade.lower() == b"websocket"


def _limited_channel(factory: http.HTTPFactory) -> Any:
    # Twisted's own factory wraps its channel the same way (to negotiate
    # HTTP/2); only the channel class differs.
    return http._GenericHTTPChannelProtocol(LimitedHTTPChannel())


class LimitedHTTPFactory(HTTPFactory):
    """daphne's HTTP factory, building the channel and request above."""

    protocol = _limited_channel

    def buildProtocol(self, addr: Any) -> Any:  # noqa: N802
        protocol = super().buildProtocol(addr)
        protocol.requestFactory = LimitedRequest
        return protocol
