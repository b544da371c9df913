"""Engine.IO v4 and Socket.IO v5 packets: encode and decode, no I/O.

Specifications: socketio/engine.io-protocol and socketio/socket.io-protocol.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

# Engine.IO packet types.
OPEN, CLOSE, PING, PONG, MESSAGE, UPGRADE, NOOP = "0123456"
ENGINE_TYPES = frozenset("0123456")
# Polling payloads join packets with the record separator.
SEPARATOR = "\x1e"

# Socket.IO packet types.
CONNECT, DISCONNECT, EVENT, ACK, CONNECT_ERROR, BINARY_EVENT, BINARY_ACK = range(7)
DEFAULT_NAMESPACE = "/"


class PacketError(ValueError):
    """A packet that does not follow the protocol."""


# Engine.IO --------------------------------------------------------------------


def decode_payload(body: str) -> list[str]:
    """Split a polling request body into its Engine.IO packets."""
    return body.split(SEPARATOR)


def encode_payload(packets: list[str]) -> str:
    """Join Engine.IO packets into one polling response body."""
    return SEPARATOR.join(packets)


def decode_engine(packet: str) -> tuple[str, str]:
    """Return ``(type, data)`` of a text Engine.IO packet.

    Binary packets (``b`` + base64 on polling) raise PacketError: this
    server takes text only.
    """
    if not packet or packet[0] not in ENGINE_TYPES:
        raise PacketError(f"packet: unknown Engine.IO packet type in {packet[:8]!r}")
    return packet[0], packet[1:]


def open_packet(
    *,
    sid: str,
    upgrades: list[str],
    ping_interval: float,
    ping_timeout: float,
    max_payload: int,
) -> str:
    """Return the handshake's open packet (intervals in seconds, sent as ms)."""
    return OPEN + json.dumps(
        {
            "sid": sid,
            "upgrades": upgrades,
            "pingInterval": round(ping_interval * 1000),
            "pingTimeout": round(ping_timeout * 1000),
            "maxPayload": max_payload,
        },
        separators=(",", ":"),
    )


# Socket.IO --------------------------------------------------------------------


@dataclass(frozen=True)
class SocketPacket:
    type: int
    namespace: str = DEFAULT_NAMESPACE
    data: Any = None
    ack_id: int | None = None
    attachments: int = 0


def encode_socket(
    type: int,
    data: Any = None,
    *,
    namespace: str = DEFAULT_NAMESPACE,
    ack_id: int | None = None,
) -> str:
    """Return the Engine.IO message packet carrying a Socket.IO packet."""
    text = MESSAGE + str(type)
    if namespace != DEFAULT_NAMESPACE:
        text += namespace + ","
    if ack_id is not None:
        text += str(ack_id)
    if data is not None:
        text += json.dumps(data, separators=(",", ":"))
    return text


def event(name: str, *args: Any) -> str:
    """Return the Engine.IO packet of a Socket.IO event ``42[name, *args]``."""
    return encode_socket(EVENT, [name, *args])


def decode_socket(text: str) -> SocketPacket:
    """Parse the data of an Engine.IO message packet as a Socket.IO packet."""
    # ASCII digits only: str.isdigit() takes "²" too, which int() refuses.
    if not text or text[0] not in "0123456789" or int(text[0]) > BINARY_ACK:
        raise PacketError("packet: unknown Socket.IO packet type")
    kind, rest = int(text[0]), text[1:]
    attachments = 0
    if kind in (BINARY_EVENT, BINARY_ACK):
        count, dash, rest = rest.partition("-")
        if not dash or not (count.isascii() and count.isdigit()) or len(count) > 6:
            raise PacketError("packet: malformed attachment count")
        attachments = int(count)
    namespace = DEFAULT_NAMESPACE
    if rest.startswith("/"):
        namespace, comma, rest = rest.partition(",")
        if not comma and rest:
            raise PacketError("packet: namespace without a comma")
    digits = len(rest) - len(rest.lstrip("0123456789"))
    ack_id = None
    if digits:
        if digits > 15:
            raise PacketError("packet: ack id too long")
        ack_id, rest = int(rest[:digits]), rest[digits:]
    data = None
    if rest:
        try:
            data = json.loads(rest)
        except (ValueError, RecursionError):
            raise PacketError("packet: payload is not valid JSON") from None
    return SocketPacket(kind, namespace, data, ack_id, attachments)
