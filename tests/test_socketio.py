"""Socket.IO at /socket.io/: the real socket.io-client against real processes."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect as ws_connect

from realtime.socketio import sessions
from tests.live import LiveStack, OutcomeGate, RoundRobinProxy, checked_stack

pytestmark = pytest.mark.e2e

TESTS = Path(__file__).resolve().parent
ORIGIN = "http://localhost:3000"
HEARTBEAT = {"SOCKETIO_PING_INTERVAL": "1", "SOCKETIO_PING_TIMEOUT": "2"}


@pytest.fixture(scope="session")
def node_client() -> Path:
    """The post's frontend script, its npm packages installed (npm ci)."""
    if shutil.which("node") is None:
        pytest.fail("node is needed for the Socket.IO tests (Node 20)")
    if not (TESTS / "node_modules" / "socket.io-client").is_dir():
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"], cwd=TESTS, check=True, timeout=300
        )
    return TESTS / "socketio_client.mjs"


@pytest.fixture
def live(transactional_db: None, isolated_channel_layer: str) -> Iterator[LiveStack]:
    with checked_stack(
        isolated_channel_layer, PAYMENTS_SIMULATED_DELAY="0.3", **HEARTBEAT
    ) as stack:
        yield stack


def run_clients(
    script: Path, url: str, *, timeout: float = 60, **options: Any
) -> list[dict[str, Any]]:
    """Run the node script; return one result per client."""
    env = {**os.environ, "SIO_URL": url}
    for name, value in options.items():
        env[f"SIO_{name.upper()}"] = (
            value if isinstance(value, str) else json.dumps(value)
        )
    done = subprocess.run(
        ["node", str(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=TESTS,
    )
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    assert done.returncode == 0 and lines and lines[-1] == {"done": True}, (
        done.stdout,
        done.stderr,
    )
    return [line for line in lines if "index" in line]


TRANSPORT_MODES = [
    pytest.param(None, "websocket", id="default"),
    pytest.param(["websocket"], "websocket", id="websocket"),
    pytest.param(["polling"], "polling", id="polling"),
]


@pytest.mark.parametrize(("transports", "ends_on"), TRANSPORT_MODES)
def test_post_frontend_gets_processing_then_succeeded(
    live: LiveStack, node_client: Path, transports: list[str] | None, ends_on: str
) -> None:
    options = {"transports": transports} if transports else {}
    [result] = run_clients(node_client, live.http_url, **options)
    assert result["ok"], result
    assert result["socketId"] == result["socketDotId"]
    assert result["socketId"] != result["engineId"]
    assert result["statuses"] == ["processing", "succeeded"], result
    assert result["transport"] == ends_on
    assert result["disconnects"] == []


@pytest.mark.parametrize(("transports", "ends_on"), TRANSPORT_MODES)
def test_heartbeat_holds_ten_pings(
    live: LiveStack, node_client: Path, transports: list[str] | None, ends_on: str
) -> None:
    options = {"transports": transports} if transports else {}
    [result] = run_clients(node_client, live.http_url, pings="10", **options)
    assert result["ok"], result
    assert result["pings"] >= 10
    assert result["disconnects"] == []
    assert result["transport"] == ends_on


def test_declined_card_arrives_as_failed(live: LiveStack, node_client: Path) -> None:
    [result] = run_clients(
        node_client, live.http_url, payment_method="pm_card_chargeDeclined"
    )
    assert result["ok"], result
    assert result["statuses"] == ["processing", "failed"]
    assert result["failureCode"] == "card_declined"


@pytest.fixture
def two_webs(
    transactional_db: None, isolated_channel_layer: str
) -> Iterator[tuple[LiveStack, LiveStack, RoundRobinProxy]]:
    """Two web processes (each with a worker) behind a non-sticky proxy.

    Heartbeat at its defaults' scale: 50 clients and four processes share
    two cores with other work. At 1 s / 2 s (five runs of the three modes,
    load average about 4) no session hit a ping timeout and no pong took
    over 0.5 s; the upgrade race found there stalled upgrades, it lost no
    ping (test_a_poll_sent_while_the_probe_is_answered_is_released_too).
    """
    options = {
        "PAYMENTS_SIMULATED_DELAY": "0.3",
        "SOCKETIO_PING_INTERVAL": "5",
        "SOCKETIO_PING_TIMEOUT": "10",
    }
    with (
        checked_stack(isolated_channel_layer, **options) as first,
        checked_stack(isolated_channel_layer, **options) as second,
        RoundRobinProxy([first.port, second.port]) as proxy,
    ):
        yield first, second, proxy


def sids_seen(proxy: RoundRobinProxy, port: int) -> set[str]:
    """Session ids in the requests the proxy sent to ``port`` (the logs redact them)."""
    return {
        sid
        for line in proxy.first_lines[port]
        for sid in re.findall(r"[?&]sid=([\w.-]+)", line)
    }


@pytest.mark.parametrize(("transports", "ends_on"), TRANSPORT_MODES)
def test_fifty_clients_across_two_processes_none_lost(
    two_webs: tuple[LiveStack, LiveStack, RoundRobinProxy],
    node_client: Path,
    transports: list[str] | None,
    ends_on: str,
) -> None:
    first, second, proxy = two_webs
    options = {"transports": transports} if transports else {}
    results = run_clients(node_client, proxy.url, clients="50", timeout=120, **options)
    assert len(results) == 50
    failed = [r for r in results if not r["ok"]]
    assert not failed, failed[:3]
    odd = [r for r in results if r["statuses"] != ["processing", "succeeded"]]
    assert not odd, odd[:3]
    assert all(r["transport"] == ends_on for r in results)
    assert len({r["socketId"] for r in results}) == 50
    for port in (first.port, second.port):
        assert any("/socket.io/" in line for line in proxy.first_lines[port]), port
    if ends_on == "polling":
        # One session's requests served by both processes: no stickiness.
        # Not asserted for the default mode: its few polls before the
        # upgrade often share one kept-alive connection, hence one process.
        assert sids_seen(proxy, first.port) & sids_seen(proxy, second.port)


def test_reconnect_through_the_other_process_after_a_kill(
    transactional_db: None, isolated_channel_layer: str, node_client: Path
) -> None:
    # The outcome waits at a gate until the session's web process is dead:
    # only the reconnect through the other process can bring it.
    gate = OutcomeGate()
    options = {**gate.env, **HEARTBEAT}
    with (
        checked_stack(isolated_channel_layer, **options) as first,
        checked_stack(isolated_channel_layer, **options) as second,
        RoundRobinProxy([first.port, second.port]) as proxy,
    ):
        env = {**os.environ, "SIO_URL": proxy.url, "SIO_TIMEOUT_MS": "40000"}
        node = subprocess.Popen(
            ["node", str(node_client)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=TESTS,
        )
        try:
            assert node.stdout is not None
            paid = json.loads(node.stdout.readline())
            assert "paid" in paid, paid
            # The handshake was the proxy's first connection: the owner of
            # the session is the first web process.
            first.kill_web()
            gate.open()
            out, err = node.communicate(timeout=60)
        finally:
            node.kill()
        first.start_web()
    lines = [json.loads(line) for line in out.splitlines() if line.strip()]
    [result] = [line for line in lines if "index" in line]
    assert result["ok"], (result, err)
    assert result["final"] == "succeeded"
    assert result["connects"] >= 2, result
    assert result["disconnects"], result


def test_polling_refusals_and_an_idle_session_leaves_nothing(live: LiveStack) -> None:
    import httpx
    import redis

    base = f"{live.http_url}/socket.io/"
    with httpx.Client(trust_env=False, timeout=20) as http:
        assert (
            http.get(base, params={"EIO": "3", "transport": "polling"}).status_code
            == 400
        )
        bad = http.get(base, params={"EIO": "4", "transport": "pigeon"})
        assert bad.status_code == 400
        assert bad.json()["error"]["message"].startswith("transport:")
        forged = http.get(
            base, params={"EIO": "4", "transport": "polling", "sid": "x.y"}
        )
        assert forged.status_code == 400
        foreign = http.get(
            base,
            params={"EIO": "4", "transport": "polling"},
            headers={"Origin": "http://evil.example"},
        )
        assert foreign.status_code == 403
        opened = http.get(base, params={"EIO": "4", "transport": "polling"})
        sid = json.loads(opened.text[1:])["sid"]
        query = {"EIO": "4", "transport": "polling", "sid": sid}
        big = http.post(base, params=query, content=b"4" * 20000)
        assert big.status_code == 413
        assert http.post(base, params=query, content=b"40/admin,").text == "ok"
        assert (
            http.get(base, params=query).text
            == '44/admin,{"message":"Invalid namespace"}'
        )
        assert http.post(base, params=query, content=b"40").text == "ok"
        first = http.get(base, params=query).text.split("\x1e")
        assert first[0].startswith('40{"sid":')
        # Never answer the pings: the next polls end on the close packet.
        packets_seen = []
        while "1" not in packets_seen:
            packets_seen += http.get(base, params=query).text.split("\x1e")
        assert http.get(base, params=query).status_code == 400
    client = redis.Redis.from_url(live.redis_url)
    assert client.keys(f"{live.channels_prefix}:sio:*") == []
    # The sid is a bearer credential of its session: never in the access log.
    log = live.web.output()
    assert "sid=[redacted]" in log
    assert sid not in log


# Engine.IO by hand: the protocol's edges the real client never takes -----------

# Pings far apart, so none releases a poll the test holds; a small cap.
QUIET = {
    "SOCKETIO_PING_INTERVAL": "20",
    "SOCKETIO_PING_TIMEOUT": "10",
    "SOCKETIO_MAX_SESSIONS_PER_CLIENT": "2",
}
WAIT = 10.0


@pytest.fixture
def quiet(transactional_db: None, isolated_channel_layer: str) -> Iterator[LiveStack]:
    """One web process (no worker): only the transport is under test."""
    with checked_stack(isolated_channel_layer, worker=False, **QUIET) as stack:
        yield stack


class Polling:
    """An Engine.IO polling session driven by hand over real HTTP."""

    def __init__(self, stack: LiveStack) -> None:
        self.stack = stack
        self.base = f"{stack.http_url}/socket.io/"
        self.http = httpx.Client(trust_env=False, timeout=WAIT)
        self.redis = redis.Redis.from_url(stack.redis_url)
        self.sid = ""

    def handshake(self) -> httpx.Response:
        return self.http.get(self.base, params={"EIO": "4", "transport": "polling"})

    def open(self) -> str:
        opened = self.handshake()
        assert opened.status_code == 200, opened.text
        self.sid = json.loads(opened.text[1:])["sid"]
        return self.sid

    @property
    def query(self) -> dict[str, str]:
        return {"EIO": "4", "transport": "polling", "sid": self.sid}

    def get(self, **kwargs: Any) -> httpx.Response:
        return self.http.get(self.base, params=self.query, **kwargs)

    def post(self, body: str) -> httpx.Response:
        return self.http.post(self.base, params=self.query, content=body.encode())

    def get_held(self, pool: ThreadPoolExecutor) -> Any:
        """Start a long-poll in ``pool``; return its future once the server holds it."""
        held = pool.submit(self.get)
        key = f"{self.stack.channels_prefix}:sio:{self.sid}:get"
        deadline = time.monotonic() + WAIT
        while not self.redis.exists(key):
            assert not held.done(), held.result().text
            assert time.monotonic() < deadline, "the GET was never held"
            time.sleep(0.01)  # polling Redis for the GET's slot, not a quiet period
        return held

    def websocket(self) -> Any:
        return ws_connect(
            f"{self.stack.ws_url}/socket.io/?EIO=4&transport=websocket&sid={self.sid}",
            origin=ORIGIN,
            proxy=None,
            open_timeout=WAIT,
        )

    def close(self) -> None:
        self.http.close()
        self.redis.close()


def recv_past_noops(websocket: Any, timeout: float = WAIT) -> str:
    """Return the next packet but noops, which the mailbox may hold after an upgrade."""
    while (packet := websocket.recv(timeout)) == "6":
        pass
    return packet


@pytest.fixture
def polling(quiet: LiveStack) -> Iterator[Polling]:
    session = Polling(quiet)
    yield session
    session.close()


def test_a_second_concurrent_get_is_refused_and_ends_the_session(
    polling: Polling,
) -> None:
    polling.open()
    with ThreadPoolExecutor(1) as pool:
        held = polling.get_held(pool)
        second = polling.get()
        assert second.status_code == 400
        assert second.json()["error"]["message"].startswith("sid: one GET at a time")
        # engine.io's server closes the session on the overlap: the held GET
        # ends on the close packet, and the sid is unknown from then on.
        assert held.result(WAIT).text == "1"
    gone = polling.post("40")
    assert gone.status_code == 400
    assert gone.json()["error"]["code"] == "unknown_sid"


def test_websocket_with_an_unknown_forged_or_upgraded_sid_is_refused(
    polling: Polling,
) -> None:
    # engine.io's server refuses such an upgrade request (its verify() fails
    # before the WebSocket is accepted: HTTP 400, socket destroyed); daphne
    # refuses a handshake the application closes with 403.
    for sid in ("x.y", "forged.AAAA", sessions.new_sid()):
        polling.sid = sid
        with pytest.raises(InvalidStatus) as refused, polling.websocket():
            pass
        assert refused.value.response.status_code == 403, sid
    polling.open()
    with polling.websocket() as upgraded:
        upgraded.send("2probe")
        assert upgraded.recv(WAIT) == "3probe"
        upgraded.send("5")
        upgraded.send("40")
        # Answered over the WebSocket: the upgrade is done.
        assert recv_past_noops(upgraded).startswith('40{"sid":')
        # A second upgrade of the same session is refused too.
        with pytest.raises(InvalidStatus) as refused, polling.websocket():
            pass
        assert refused.value.response.status_code == 403


def test_a_poll_sent_while_the_probe_is_answered_is_released_too(
    polling: Polling,
) -> None:
    """The upgrade must not wait for the next ping to release the client's poll.

    A client reads 3probe on its WebSocket and a poll's answer on HTTP in
    whatever order they arrive: it may get the first noop back before
    3probe, poll again, and only then pause polling, waiting for that poll.
    engine.io's server writes a noop every 100 ms while the upgrade is
    pending; one noop left that poll waiting for the next ping (25 s).
    """
    polling.open()
    with ThreadPoolExecutor(1) as pool, polling.websocket() as upgrade:
        held = polling.get_held(pool)
        upgrade.send("2probe")
        assert upgrade.recv(WAIT) == "3probe"
        assert held.result(WAIT).text == "6"
        # Far sooner than the ping (20 s) that would release it otherwise.
        again = polling.get(timeout=5)
        assert again.text.split("\x1e")[0] == "6"
        upgrade.send("5")
        upgrade.send("40")
        assert recv_past_noops(upgrade).startswith('40{"sid":')
    moved = polling.get()
    assert moved.status_code == 400


def test_polling_sessions_per_client_are_capped_and_freed_when_one_ends(
    polling: Polling,
) -> None:
    first = polling.open()
    polling.open()
    refused = polling.handshake()
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["code"] == "too_many_sessions"
    assert error["message"].startswith("sid: at most 2 sessions")
    # The client closes its first session; its slot is free once it is over.
    polling.sid = first
    with ThreadPoolExecutor(1) as pool:
        held = polling.get_held(pool)
        assert polling.post("1").text == "ok"
        assert held.result(WAIT).text == "1"
    assert polling.handshake().status_code == 200
    assert polling.handshake().status_code == 429


@pytest.fixture
def quick_upgrade(
    transactional_db: None, isolated_channel_layer: str
) -> Iterator[Polling]:
    """A polling session on a web process whose upgrades time out after 5 s.

    Long enough for the probe exchange on loaded cores, short for the test.
    """
    with checked_stack(
        isolated_channel_layer, worker=False, SOCKETIO_UPGRADE_TIMEOUT="5", **QUIET
    ) as stack:
        session = Polling(stack)
        yield session
        session.close()


def test_a_probe_never_followed_by_the_upgrade_is_closed(
    quick_upgrade: Polling,
) -> None:
    # engine.io's upgradeTimeout: the probe socket goes, the session stays.
    polling = quick_upgrade
    polling.open()
    with polling.websocket() as probe:
        probe.send("2probe")
        assert probe.recv(WAIT) == "3probe"
        with pytest.raises(ConnectionClosed):
            while True:
                probe.recv(WAIT)
    assert polling.post("40").text == "ok"
    # Noops the upgrade left in the mailbox come first.
    while (answer := [p for p in polling.get().text.split("\x1e") if p != "6"]) == []:
        pass
    assert answer[0].startswith('40{"sid":')


def test_a_websocket_with_a_sid_that_never_probes_is_closed(
    quick_upgrade: Polling,
) -> None:
    polling = quick_upgrade
    polling.open()
    with polling.websocket() as idle, pytest.raises(ConnectionClosed):
        idle.recv(WAIT)  # nothing sent: closed after the upgrade timeout
    assert polling.post("40").text == "ok"
    assert polling.get().text.startswith('40{"sid":')


def test_a_long_polling_session_takes_no_channel_or_key_per_request(
    polling: Polling,
) -> None:
    polling.open()
    assert polling.post("40").text == "ok"
    assert polling.get().text.startswith('40{"sid":')
    prefix = polling.stack.channels_prefix

    def subscribes() -> int:
        stats = polling.redis.info("commandstats")
        return stats.get("cmdstat_subscribe", {}).get("calls", 0)

    before = subscribes()
    for _ in range(30):
        assert polling.post('42["nonsense"]').text == "ok"
        assert '"unknown_event"' in polling.get().text
        # The session's state, and its mailbox while a packet waits in it.
        assert len(polling.redis.keys(f"{prefix}*")) <= 2
    # Channels gives every consumer a channel: on the pub/sub layer a
    # SUBSCRIBE (and an UNSUBSCRIBE) per request, none here.
    assert subscribes() == before


def test_the_open_packet_advertises_the_smallest_limit(polling: Polling) -> None:
    # SOCKETIO_MAX_PAYLOAD 16384, REALTIME_MAX_FRAME_BYTES 4096 (the defaults).
    opened = json.loads(polling.handshake().text[1:])
    assert opened["maxPayload"] == 4096


def test_the_open_packet_advertises_no_more_than_the_web_takes_on_the_path(
    transactional_db: None, isolated_channel_layer: str
) -> None:
    # The web server's body limit for /socket.io/, below the other two.
    with checked_stack(
        isolated_channel_layer,
        worker=False,
        WEB_MAX_BODY_BYTES="/api/=65536;/=3000",
        **QUIET,
    ) as stack:
        polling = Polling(stack)
        try:
            polling.open()
            opened = json.loads(polling.handshake().text[1:])
            assert opened["maxPayload"] == 3000
            # A body of that size is taken, one byte more is refused.
            assert polling.post("6" * 3000).text == "ok"
            refused = polling.post("6" * 3001)
            assert refused.status_code == 413
            assert refused.json()["error"]["code"] == "request_too_large"
        finally:
            polling.close()


@pytest.mark.timeout(600)  # 200 handshakes in turn, on a machine shared by others
def test_two_hundred_upgraded_sockets_hold_no_redis_connection_each(
    transactional_db: None, isolated_channel_layer: str
) -> None:
    clients = 200
    options = {
        # A pool far smaller than the sockets: each upgraded socket used to
        # hold one of its connections in a blocking pop on its mailbox.
        "SOCKETIO_MAX_REDIS_CONNECTIONS": "10",
        # No ping during the test: 200 handshakes in turn take minutes on a
        # busy machine, and nothing answers pings meanwhile.
        "SOCKETIO_PING_INTERVAL": "600",
        "SOCKETIO_PING_TIMEOUT": "600",
        "REALTIME_MAX_CONNECTIONS_PER_CLIENT": "1000",
        "SOCKETIO_MAX_SESSIONS_PER_CLIENT": "1000",
    }
    with checked_stack(isolated_channel_layer, worker=False, **options) as stack:
        client = redis.Redis.from_url(stack.redis_url)
        before = len(client.client_list())
        sockets = []
        try:
            for _ in range(clients):
                session = Polling(stack)
                session.open()
                assert session.post("40").text == "ok"
                assert session.get().text.startswith('40{"sid":')
                upgraded = session.websocket()
                sockets.append(upgraded)
                upgraded.send("2probe")
                assert upgraded.recv(WAIT) == "3probe"
                upgraded.send("5")
                session.close()
            held = len(client.client_list())
            # Every socket is still served: a packet goes to its owner and
            # the answer comes back over it.
            for upgraded in sockets:
                upgraded.send('42["nonsense"]')
            for upgraded in sockets:
                answer = recv_past_noops(upgraded, timeout=30)
                assert answer.startswith('42["error",{"code":"unknown_event"'), answer
            for upgraded in sockets:
                upgraded.close()
            # Each session ends with its socket: its keys and channel-layer
            # subscriptions go (and the server is not stopped with 200
            # consumers still unsubscribing one by one).
            deadline = time.monotonic() + 120
            prefix = stack.channels_prefix

            def left() -> list[bytes]:
                return client.keys(f"{prefix}:sio:*") + [
                    channel
                    for pattern in ("specific.*", "__group__*")
                    for channel in client.pubsub_channels(f"{prefix}{pattern}")
                ]

            # A few consumer channels may stay subscribed: channels-redis's
            # pub/sub receive unsubscribes in its cancellation handler, and a
            # consumer cancelled again there (daphne's close timeout, when
            # 200 unsubscribe in turn on a busy loop) leaves its channel.
            while client.keys(f"{prefix}:sio:*") or len(left()) > 5:
                assert time.monotonic() < deadline, left()[:5]
                time.sleep(0.1)  # polling Redis for the sessions' end
        finally:
            for upgraded in sockets:
                upgraded.close()
            client.close()
    # Connections the web process opened for 200 upgraded sockets: its
    # pools' (sessions, channel layer), not one per socket.
    assert held - before < 30, (before, held)
