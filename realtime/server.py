"""daphne, but SIGTERM closes WebSockets with 1001 (going away) first.

Plain daphne drops sockets when it stops, which clients see as 1006
(abnormal closure) and may treat as an error. Run it exactly like daphne:

    python -m realtime.server -b 0.0.0.0 -p 8000 config.asgi:application
"""

from __future__ import annotations

import logging

from daphne.cli import CommandLineInterface
from daphne.server import Server
from daphne.ws_protocol import WebSocketProtocol
from twisted.internet import defer, reactor

logger = logging.getLogger(__name__)

GOING_AWAY = 1001
CLOSE_TIMEOUT = 5.0


class GracefulServer(Server):
    def run(self) -> None:
        reactor.addSystemEventTrigger("before", "shutdown", self.close_websockets)
        super().run()

    def close_websockets(self) -> defer.Deferred:
        """Send close 1001 to every open socket; wait for the handshakes."""
        sockets = [
            protocol
            for protocol in self.connections
            if isinstance(protocol, WebSocketProtocol)
            and protocol.state == WebSocketProtocol.STATE_OPEN
        ]
        for protocol in sockets:
            # sendClose() only lets applications use 1000 and 3000-4999;
            # 1001 is the server's own code, so send the frame directly.
            protocol.sendCloseFrame(
                code=GOING_AWAY, reasonUtf8=b"server shutting down", isReply=False
            )
        logger.info("closing %d WebSockets with 1001", len(sockets))
        closed = defer.DeferredList(
            [protocol.is_closed for protocol in sockets],
            consumeErrors=True,
        )
        closed.addTimeout(CLOSE_TIMEOUT, reactor)
        closed.addErrback(lambda _: None)
        return closed


class GracefulCommandLineInterface(CommandLineInterface):
    server_class = GracefulServer


def main() -> None:
    GracefulCommandLineInterface.entrypoint()


if __name__ == "__main__":
    main()
