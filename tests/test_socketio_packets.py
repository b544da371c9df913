"""The Engine.IO / Socket.IO packet codec (realtime.socketio.packets)."""

from __future__ import annotations

import json

import pytest

from realtime.socketio import packets
from realtime.socketio.packets import PacketError, SocketPacket


def test_payload_round_trip() -> None:
    body = "4hello\x1e2\x1e4world"
    assert packets.decode_payload(body) == ["4hello", "2", "4world"]
    assert packets.encode_payload(["4hello", "2", "4world"]) == body


def test_engine_packet_types() -> None:
    assert packets.decode_engine("2probe") == ("2", "probe")
    assert packets.decode_engine("3") == ("3", "")
    for bad in ("", "9", "bAQID", "x"):
        with pytest.raises(PacketError):
            packets.decode_engine(bad)


def test_open_packet_in_milliseconds() -> None:
    text = packets.open_packet(
        sid="s",
        upgrades=["websocket"],
        ping_interval=25,
        ping_timeout=20,
        max_payload=16384,
    )
    assert text[0] == "0"
    assert json.loads(text[1:]) == {
        "sid": "s",
        "upgrades": ["websocket"],
        "pingInterval": 25000,
        "pingTimeout": 20000,
        "maxPayload": 16384,
    }


@pytest.mark.parametrize(
    ("text", "packet"),
    [
        ("0", SocketPacket(0)),
        ('0{"token":"x"}', SocketPacket(0, data={"token": "x"})),
        ("0/admin,", SocketPacket(0, "/admin")),
        ("1", SocketPacket(1)),
        ('2["subscribe",{"a":1}]', SocketPacket(2, data=["subscribe", {"a": 1}])),
        ('212["x"]', SocketPacket(2, data=["x"], ack_id=12)),
        ('2/admin,3["x"]', SocketPacket(2, "/admin", ["x"], 3)),
        (
            '51-["x",{"_placeholder":true,"num":0}]',
            SocketPacket(
                5, data=["x", {"_placeholder": True, "num": 0}], attachments=1
            ),
        ),
    ],
)
def test_decode_socket(text: str, packet: SocketPacket) -> None:
    assert packets.decode_socket(text) == packet


@pytest.mark.parametrize(
    # Digits to str.isdigit(), not ASCII: int() refuses "²" and reads "٣" as 3.
    "text",
    ["", "7", "x", "2[", "5[]", "2" + "1" * 16 + "[]", "²", "٣", "5²-[]", "5٣-[]"],
)
def test_decode_socket_refuses(text: str) -> None:
    with pytest.raises(PacketError):
        packets.decode_socket(text)


def test_decode_socket_refuses_deep_json() -> None:
    with pytest.raises(PacketError):
        packets.decode_socket("2" + "[" * 100_000 + "]" * 100_000)


def test_encode_socket() -> None:
    assert packets.encode_socket(0, {"sid": "abc"}) == '40{"sid":"abc"}'
    assert (
        packets.encode_socket(4, {"message": "Invalid namespace"}, namespace="/admin")
        == '44/admin,{"message":"Invalid namespace"}'
    )
    assert packets.event("socket-id", "abc") == '42["socket-id","abc"]'
