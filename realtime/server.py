"""daphne, with a graceful stop and the server's own close codes.

- SIGTERM first closes every WebSocket with 1001 (going away); plain daphne
  drops them, which clients see as 1006 (abnormal closure).
- An application may close with 1008 (policy violation) and 1009 (message too
  big), which daphne's WebSocket library refuses to send for applications.
- The largest client message defaults to REALTIME_MAX_FRAME_BYTES (daphne's
  own default is 1 MiB); bigger ones are closed with 1009 before Python reads
  them.
- The access log goes through Python's logging (logger ``realtime.access``,
  so it is JSON in production like every other line), shows
  ``client_secret=[redacted]`` (however the name is spelled: daphne logs
  each request's query string, and the polling fallback carries the secret
  there) and ``sid=[redacted]`` (Socket.IO's session id is a bearer
  credential of its session), and leaves out the probes' and scrapes'
  successful answers.
- HTTP requests go through realtime.http_edge: body limits before the body
  is read, a deadline for the request head, no client-set root path, and
  JSON errors.

Run it exactly like daphne, with daphne's own flags for the keepalive
(``WEB_FLAGS``: pings every 45 s, closing after 60 s unanswered):

    python -m realtime.server -b 0.0.0.0 -p 8000 \\
        --ping-interval 45 --ping-timeout 60 config.asgi:application
"""

from __future__ import annotations

import logging
import re
from typing import Any
from urllib.parse import unquote_plus

from daphne.cli import CommandLineInterface
from daphne.server import Server
from daphne.ws_protocol import WebSocketProtocol
from twisted.internet import defer, reactor

from realtime.http_edge import LimitedHTTPFactory, body_limit, replying
from realtime.socketio import limits as socketio_limits

logger = logging.getLogger(__name__)

GOING_AWAY = 1001
# Codes RFC 6455 §7.4.1 gives servers, beyond the 1000 and 3000-4999 that
# the library allows applications.
SERVER_CLOSE_CODES = frozenset({1001, 1008, 1009, 1011})
CLOSE_TIMEOUT = 5.0
#: daphne's own flags, as every launcher (scripts/run, tests, bench, Docker)
#: passes them. Pings every 45 s, not daphne's 20: a third of an idle
#: server's CPU at 10,000 sockets went to them (BENCHMARKS.md), and 45 s
#: still keeps a socket alive behind proxies that drop a connection idle for
#: 60 s (nginx's and AWS ALB's defaults).
WEB_FLAGS = ("--ping-interval", "45", "--ping-timeout", "60")
#: A query parameter whose name, reduced to its letters, contains this never
#: has its value logged; nor one whose name is one of REDACTED_NAMES.
REDACTED_NAME_PART = "secret"
#: Engine.IO's session id: whoever has it can read and send as the session.
REDACTED_NAMES = frozenset({"sid"})
NOT_A_LETTER = re.compile(r"[^a-z]")


def is_secret_name(name: str) -> bool:
    """Whether a query parameter's raw name spells a secret in any way.

    Decoded until stable (client%255Fsecret too) and reduced to letters, so
    case, brackets, whitespace and separators cannot hide one: logging a
    harmless parameter as redacted costs nothing, leaking a secret does.
    """
    for _ in range(5):
        decoded = unquote_plus(name)
        if decoded == name:
            break
        name = decoded
    letters = NOT_A_LETTER.sub("", name.lower())
    return REDACTED_NAME_PART in letters or letters in REDACTED_NAMES


def redact_query(path: str) -> str:
    """Return ``path`` with the values of secret query parameters replaced."""
    base, question_mark, query = path.partition("?")
    if not question_mark:
        return path
    parts = []
    for part in query.split("&"):
        name, equals, _ = part.partition("=")
        if equals and is_secret_name(name):
            part = f"{name}=[redacted]"
        parts.append(part)
    return f"{base}?{'&'.join(parts)}"


#: Paths whose successful answers are not logged: a balancer's probe every
#: few seconds per process would drown the requests (ops.middleware).
QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
#: daphne's WebSocket actions, as its NCSA access log names them.
WEBSOCKET_ACTIONS = {
    "connecting": "WSCONNECTING",
    "rejected": "WSREJECT",
    "connected": "WSCONNECT",
    "disconnected": "WSDISCONNECT",
}
access_logger = logging.getLogger("realtime.access")
REQUEST_ID_HEADER = b"X-Request-ID"


def _answered_request_id() -> str | None:
    """The X-Request-ID of the response being completed (ops.request_id set it)."""
    request = replying.get()
    if request is None:
        return None
    values = request.responseHeaders.getRawHeaders(REQUEST_ID_HEADER)
    return values[0].decode("latin-1") if values else None


class AccessLog:
    """daphne's access log (its "action logger"), written through logging.

    The same events as daphne's AccessLogGenerator, which writes NCSA lines
    straight to a stream; as log records they get LOGGING's format (JSON in
    production) and its handlers, and their fields (``method``, ``path``,
    ``status``...) as attributes.
    """

    def __call__(self, protocol: str, action: str, details: dict[str, Any]) -> None:
        path = details.get("path")
        if isinstance(path, str):
            path = redact_query(path)
        client = details.get("client") or "-"
        if protocol == "http" and action == "complete":
            status = details.get("status")
            if (
                isinstance(path, str)
                and path.partition("?")[0] in QUIET_PATHS
                and isinstance(status, int)
                and status < 400
            ):
                return
            access_logger.info(
                "%s %s %s %s %s",
                details.get("method"),
                path,
                status,
                details.get("size"),
                client,
                extra={
                    "method": details.get("method"),
                    "path": path,
                    "status": status,
                    "size": details.get("size"),
                    "client": client,
                    "duration_seconds": details.get("time_taken"),
                    # The application's lines for this request carry it too.
                    "request_id": _answered_request_id(),
                },
            )
        elif protocol == "websocket" and action in WEBSOCKET_ACTIONS:
            access_logger.info(
                "%s %s %s",
                WEBSOCKET_ACTIONS[action],
                path,
                client,
                extra={
                    "method": WEBSOCKET_ACTIONS[action],
                    "path": path,
                    "client": client,
                },
            )


class ServerWebSocketProtocol(WebSocketProtocol):
    def handle_reply(self, message: dict[str, Any]) -> None:
        # A frame for a socket whose close is under way (the application
        # closed it, or SIGTERM's 1001) has nowhere to go: drop it, as daphne
        # does once the close is done, rather than fail the application.
        if message.get("type") == "websocket.send" and self.state in (
            self.STATE_CLOSING,
            self.STATE_CLOSED,
        ):
            return
        super().handle_reply(message)

    def serverClose(self, code: int | None = None) -> None:  # noqa: N802
        if code in SERVER_CLOSE_CODES:
            self.sendCloseFrame(code=code, isReply=False)
        else:
            super().serverClose(code)


def with_backlog(endpoints: list[str], backlog: int) -> list[str]:
    """Give each TCP endpoint that names none the listen backlog ``backlog``.

    The post's workload opens 500 connections at once: with Twisted's
    backlog of 50 the rest retried their SYN (POST response p99 4.6 s).
    """
    return [
        f"{endpoint}:backlog={backlog}"
        if endpoint.startswith("tcp:") and ":backlog=" not in endpoint
        else endpoint
        for endpoint in endpoints
    ]


class GracefulServer(Server):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        from django.conf import settings

        kwargs["endpoints"] = with_backlog(
            kwargs.get("endpoints") or [], settings.WEB_LISTEN_BACKLOG
        )
        if kwargs.get("websocket_max_message_size") is None:
            kwargs["websocket_max_message_size"] = settings.REALTIME_MAX_FRAME_BYTES
        # Socket.IO advertises no more than these (its open packet's maxPayload).
        socketio_limits.server_message_limit = kwargs["websocket_max_message_size"]
        socketio_limits.server_body_limit = body_limit(socketio_limits.POLLING_TARGET)
        if kwargs.get("action_logger") is not None:
            # daphne's stream logger (stdout, or --access-log's file) is
            # replaced: the access log follows LOGGING like every other line.
            kwargs["action_logger"] = AccessLog()
        super().__init__(*args, **kwargs)

    def run(self) -> None:
        reactor.callWhenRunning(self._use_server_protocol)
        reactor.addSystemEventTrigger("before", "shutdown", self.close_websockets)
        super().run()

    def _use_server_protocol(self) -> None:
        # daphne builds its HTTP factory inside run(), just before listening;
        # make it ours before the first connection is accepted.
        self.http_factory.__class__ = LimitedHTTPFactory
        self.ws_factory.protocol = ServerWebSocketProtocol
        # Fail a bad connection (an oversized message) with a close frame the
        # client can read (1009), not by dropping TCP (1006).
        self.ws_factory.setProtocolOptions(failByDrop=False)

    def close_websockets(self) -> defer.Deferred:
        """Send close 1001 to every open socket; wait for the handshakes."""
        sockets = [
            protocol
            for protocol in self.connections
            if isinstance(protocol, WebSocketProtocol)
            and protocol.state == WebSocketProtocol.STATE_OPEN
        ]
        for protocol in sockets:
            # The library's sendClose() refuses 1001; send the frame directly.
            protocol.sendCloseFrame(
                code=GOING_AWAY, reasonUtf8=b"server shutting down", isReply=False
            )
        logger.info("closing %d WebSockets with 1001", len(sockets))
        closed = defer.DeferredList(
            [protocol.is_closed for protocol in sockets], consumeErrors=True
        )
        closed.addTimeout(CLOSE_TIMEOUT, reactor)
        closed.addErrback(lambda _: None)
        return closed


class GracefulCommandLineInterface(CommandLineInterface):
    server_class = GracefulServer

    def __init__(self) -> None:
        super().__init__()
        # None means "from settings" (GracefulServer): daphne's flag cannot
        # read REALTIME_MAX_FRAME_BYTES, which the consumer checks too, so
        # one setting sets both; the flag still wins.
        self.parser.set_defaults(websocket_max_message_size=None)


def main() -> None:
    GracefulCommandLineInterface.entrypoint()


if __name__ == "__main__":
    main()
