"""realtime.server's command line: daphne's own flags; its listen backlog."""

from __future__ import annotations

import subprocess

import pytest

from realtime.http_edge import body_limit
from realtime.server import (
    WEB_FLAGS,
    GracefulCommandLineInterface,
    redact_query,
    with_backlog,
)
from tests.live import checked_stack

APP = "config.asgi:application"


def parse(*flags: str):
    return GracefulCommandLineInterface().parser.parse_args([*flags, APP])


def test_launch_flags_ping_every_45_s_and_size_comes_from_settings() -> None:
    args = parse(*WEB_FLAGS)

    assert (args.ping_interval, args.ping_timeout) == (45, 60)
    assert args.websocket_max_message_size is None  # REALTIME_MAX_FRAME_BYTES


def test_without_flags_the_keepalive_is_daphnes() -> None:
    """The product sets no ping default of its own: the flags say it."""
    args = parse()

    assert (args.ping_interval, args.ping_timeout) == (20, 30)


def test_flags_still_win() -> None:
    args = parse("--ping-interval", "20", "--ping-timeout", "30")

    assert (args.ping_interval, args.ping_timeout) == (20, 30)


@pytest.mark.parametrize(
    ("path", "logged"),
    [
        ("/api/p/1/?client_secret=abc", "/api/p/1/?client_secret=[redacted]"),
        (
            "/api/p/1/?a=1&client%5Fsecret=abc",
            "/api/p/1/?a=1&client%5Fsecret=[redacted]",
        ),
        ("/p/?client_secret[]=abc", "/p/?client_secret[]=[redacted]"),
        ("/p/?client_secret%5B%5D=abc", "/p/?client_secret%5B%5D=[redacted]"),
        ("/p/?CLIENT_SECRET=abc", "/p/?CLIENT_SECRET=[redacted]"),
        ("/p/?client%255Fsecret=abc", "/p/?client%255Fsecret=[redacted]"),
        ("/p/?+client_secret+=abc", "/p/?+client_secret+=[redacted]"),
        ("/p/?client-secret=abc", "/p/?client-secret=[redacted]"),
        (
            "/socket.io/?EIO=4&transport=polling&sid=abc.def&t=1",
            "/socket.io/?EIO=4&transport=polling&sid=[redacted]&t=1",
        ),
        ("/socket.io/?SID=abc", "/socket.io/?SID=[redacted]"),
        ("/socket.io/?s%69d=abc", "/socket.io/?s%69d=[redacted]"),
        ("/p/?side=1&sids=2", "/p/?side=1&sids=2"),
        ("/api/p/1/?a=1", "/api/p/1/?a=1"),
        ("/api/p/1/", "/api/p/1/"),
    ],
)
def test_access_log_redacts_client_secret_and_sid(path: str, logged: str) -> None:
    assert redact_query(path) == logged


@pytest.mark.parametrize(
    ("target", "limit"),
    [
        (b"/api/payments/", 100),
        (b"/api/payments/?a=1", 100),
        (b"/%61pi/payments/", 100),  # Django decodes it to /api/
        (b"http://evil.example/api/payments/", 100),  # absolute form
        (b"/admin/login/", 1000),
        (b"*", 100),  # matches no prefix: the smallest
    ],
)
def test_body_limit_by_longest_path_prefix(settings, target: bytes, limit: int) -> None:
    settings.WEB_MAX_BODY_BYTES = {"/api/": 100, "/": 1000}

    assert body_limit(target) == limit


def test_tcp_endpoints_get_the_listen_backlog() -> None:
    endpoints = [
        "tcp:port=8000:interface=0.0.0.0",
        "tcp:port=8001:interface=127.0.0.1:backlog=64",
        "unix:/run/web.sock",
    ]

    assert with_backlog(endpoints, 1024) == [
        "tcp:port=8000:interface=0.0.0.0:backlog=1024",
        "tcp:port=8001:interface=127.0.0.1:backlog=64",
        "unix:/run/web.sock",
    ]


@pytest.mark.django_db(transaction=True)
def test_the_web_process_listens_with_the_backlog(isolated_channel_layer) -> None:
    """What the kernel holds for the listening socket: ss's Send-Q."""
    with checked_stack(
        isolated_channel_layer, worker=False, WEB_LISTEN_BACKLOG="777"
    ) as stack:
        listening = subprocess.run(
            ["ss", "-ltnH", f"sport = :{stack.port}"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.split()
    assert listening[0] == "LISTEN"
    assert listening[2] == "777"
