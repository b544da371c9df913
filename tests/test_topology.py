"""The service as deployed: HAProxy round-robin in front of two web processes.

Real processes on loopback: Debian's HAProxy with deploy/haproxy.cfg (the
file docker-compose.yml mounts; no stickiness), two daphne web processes
(realtime.server, as every launcher starts them), two db_workers, the test's
Redis and database (SQLite or PostgreSQL, as DATABASE_URL says). 200 clients:
half on the JSON protocol (/ws/payments/), half the post's Socket.IO frontend
(the Node socket.io-client, a third on each transport mode).

1. No faults: each JSON client's socket is on one web and its POST on the
   other (HAProxy's X-Served-By says which; a POST that lands on the
   socket's own web is followed by another until one does not). Socket.IO
   clients are matched to their web through HAProxy's log. Every status
   arrives, in version order.
2. One web and one worker SIGKILLed with every client's next payment in
   flight: clients reconnect through the survivor and subscribe again;
   every payment ends terminal, charged once, its outcome at its client.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.db.models import Count
from django.urls import Resolver404, resolve
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from payments.models import TERMINAL_STATUSES, GatewayCall, Payment, SimulatedCharge
from tests.live import (
    ChargeGate,
    HAProxy,
    LiveStack,
    free_port,
    started_stacks,
)

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

TESTS = Path(__file__).resolve().parent
ORIGIN = "http://localhost:3000"
# 200 clients: half JSON, half Socket.IO split over the transport modes (the
# client's default, websocket only, polling only). TOPOLOGY_CLIENTS runs
# fewer (or more) for a quick look.
CLIENTS = int(os.environ.get("TOPOLOGY_CLIENTS", "200"))
JSON_CLIENTS = CLIENTS // 2
SIO_MODES = {
    "default": CLIENTS - JSON_CLIENTS - 2 * ((CLIENTS - JSON_CLIENTS) // 3),
    "websocket": (CLIENTS - JSON_CLIENTS) // 3,
    "polling": (CLIENTS - JSON_CLIENTS) // 3,
}
SIO_TRANSPORTS = {"default": None, "websocket": ["websocket"], "polling": ["polling"]}
# Deadlines, not delays: every wait returns once its event happened.
# Generous: on two cores shared with other test runs a POST took 20 s.
TIMEOUT = 120.0
# A POST landing on its socket's own web is followed by another; with two
# webs in turn that happens about half the time, 20 in a row never.
MAX_POSTS = 20
# Milliseconds between Socket.IO clients' starts in each node process.
SIO_RAMP_MS = 30
# JSON clients' handshakes and POSTs under way at once: a hundred handshakes
# at once on two loaded cores took longer than daphne's 5 s for the
# application to accept.
# Odd: with N requests in flight, each client's next POST comes N requests
# after its last; round-robin over two webs then sends it to the other web.
# At 10 one client's 20 POSTs all landed on its socket's web.
OPENING = 9
ENV = {
    "PAYMENTS_SIMULATED_DELAY": "0.5",
    # The killed worker's job in hand runs again once its heartbeat is 20 s
    # old. Not less: on two cores shared with other test runs, renewals
    # queued behind SQLite's writers for over 9 s, and a worker that cannot
    # renew its lease in time exits (at 4 s and 10 s, both workers did).
    "TASKS_WORKER_HEARTBEAT_INTERVAL": "1",
    "TASKS_WORKER_DEAD_AFTER": "20",
    "PAYMENTS_STUCK_AFTER": "30",
    # HAProxy appends the client's address to X-Forwarded-For.
    "DJANGO_NUM_PROXIES": "1",
    # Every client comes from 127.0.0.1: per-address limits sized for 200.
    "PAYMENTS_CREATE_RATE_ANON": "100000/min",
    "REALTIME_MAX_CONNECTIONS_PER_CLIENT": "1000",
    "SOCKETIO_MAX_SESSIONS_PER_CLIENT": "1000",
    # 200 POSTs in a burst queue for the web's request threads (and, on
    # SQLite, its one write lock) on loaded cores: waiting, not refused.
    "ASGI_REQUEST_THREAD_TIMEOUT": "30",
}
# httplog: "... public web/web1 0/0/1/2/3 101 ... "GET /ws/payments/?... HTTP/1.1""
LOG_LINE = re.compile(r' public web/(?P<server>\S+) .*"(?P<method>[A-Z]+) (?P<uri>\S+)')


@dataclass
class Topology:
    first: LiveStack
    second: LiveStack
    proxy: HAProxy
    # Each charge waits at it until the test opens it: the second round is
    # held in flight until both kills are done.
    gate: ChargeGate

    def served(self) -> list[tuple[str, str, str]]:
        """(server, method, uri) of every request HAProxy has logged so far."""
        return [
            (m["server"], m["method"], m["uri"])
            for line in self.proxy.log_lines()
            if (m := LOG_LINE.search(line))
        ]


def readyz_routed() -> bool:
    # /readyz comes with the health endpoints (issue 16 item 2); until then
    # HAProxy checks that the port accepts connections.
    try:
        resolve("/readyz")
    except Resolver404:
        return False
    return True


@pytest.fixture
def topology(transactional_db: None, isolated_channel_layer: str) -> Iterator[Topology]:
    if not os.access("/usr/sbin/haproxy", os.X_OK):
        pytest.fail("HAProxy is needed: apt-get install haproxy (.ci/run does)")
    if shutil.which("node") is None:
        pytest.fail("node is needed for the Socket.IO clients (Node 20)")
    if not (TESTS / "node_modules" / "socket.io-client").is_dir():
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"], cwd=TESTS, check=True, timeout=300
        )
    gate = ChargeGate()
    with started_stacks(
        isolated_channel_layer,
        # Workers wait on wake-ups; polls only back them up.
        worker_interval="0.5",
        **gate.env,
        **ENV,
    ) as start:
        stacks = [start() for _ in range(2)]
        with HAProxy([s.port for s in stacks], http_check=readyz_routed()) as proxy:
            yield Topology(*stacks, proxy, gate)


# JSON protocol clients ----------------------------------------------------------


@dataclass
class JsonClient:
    """One JSON-protocol client: a socket, its payments, the frames it got."""

    index: int
    proxy: HAProxy
    http: httpx.AsyncClient
    ws: ClientConnection | None = None
    socket_id: str = ""
    #: The web process of each socket it opened (X-Served-By of the 101).
    socket_webs: list[str] = field(default_factory=list)
    #: Each payment it created: the create response and the POST's web.
    payments: list[tuple[dict[str, Any], str]] = field(default_factory=list)
    frames: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    reconnects: int = 0
    opening: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(1))

    async def open(self) -> None:
        async with self.opening:
            self.ws = await connect(
                f"{self.proxy.ws_url}/ws/payments/",
                origin=ORIGIN,
                proxy=None,
                open_timeout=TIMEOUT,
                max_queue=None,
            )
        assert self.ws.response is not None
        self.socket_webs.append(self.ws.response.headers["X-Served-By"])
        frame = json.loads(await asyncio.wait_for(self.ws.recv(), TIMEOUT))
        assert frame["event"] == "socket-id", frame
        self.socket_id = frame["data"]

    async def pay(self) -> dict[str, Any]:
        """Create a payment; a POST whose answer was lost is sent again.

        With the same Idempotency-Key: the same payment, never a second one.
        """
        key = str(uuid.uuid4())
        for attempt in range(3):
            try:
                async with self.opening:
                    response = await self.http.post(
                        "/api/payments/",
                        json={"amount": 1000, "socket_id": self.socket_id},
                        headers={"Idempotency-Key": key},
                    )
                break
            except httpx.TransportError:
                if attempt == 2:
                    raise
        assert response.status_code == 202, response.text
        payment = response.json()
        self.payments.append((payment, response.headers["X-Served-By"]))
        return payment

    async def pay_from_the_other_web(self) -> None:
        """Pay until a POST lands on another web than the socket's."""
        for _ in range(MAX_POSTS):
            await self.pay()
            if self.payments[-1][1] != self.socket_webs[-1]:
                return
        pytest.fail(f"client {self.index}: {MAX_POSTS} POSTs on its socket's web")

    async def receive_until_terminal(self, ids: list[str]) -> None:
        """Collect payment-status frames until each of ``ids`` is terminal.

        A socket its web dropped is opened again through the proxy, and the
        client subscribes to the payments it still waits for.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TIMEOUT
        while not all(self.terminal(i) for i in ids):
            assert self.ws is not None
            try:
                message = await asyncio.wait_for(
                    self.ws.recv(), max(0.1, deadline - loop.time())
                )
            except ConnectionClosed:
                self.reconnects += 1
                await self.open()
                for payment, _ in self.payments:
                    if payment["id"] in ids and not self.terminal(payment["id"]):
                        await self.ws.send(
                            json.dumps(
                                {
                                    "action": "subscribe",
                                    "payment_id": payment["id"],
                                    "client_secret": payment["client_secret"],
                                }
                            )
                        )
                continue
            except TimeoutError:
                pytest.fail(f"client {self.index}: no outcome for {ids}: {self.frames}")
            frame = json.loads(message)
            assert frame["event"] == "payment-status", frame
            assert "client_secret" not in frame["data"], frame
            self.frames.setdefault(frame["data"]["id"], []).append(frame["data"])

    def terminal(self, payment_id: str) -> bool:
        return any(
            f["status"] in TERMINAL_STATUSES for f in self.frames.get(payment_id, [])
        )


# Socket.IO clients ----------------------------------------------------------------


async def run_node(proxy: HAProxy, mode: str, tag: str, paid: asyncio.Queue) -> Any:
    """Run one node process of SIO_MODES[mode] clients; return their results.

    Each "paid" line goes to ``paid`` as it arrives.
    """
    env = {
        **os.environ,
        "SIO_URL": proxy.url,
        "SIO_CLIENTS": str(SIO_MODES[mode]),
        "SIO_TAG": tag,
        "SIO_TIMEOUT_MS": str(int(TIMEOUT * 1000)),
        "SIO_RAMP_MS": str(SIO_RAMP_MS),
    }
    if SIO_TRANSPORTS[mode]:
        env["SIO_TRANSPORTS"] = json.dumps(SIO_TRANSPORTS[mode])
    node = await asyncio.create_subprocess_exec(
        "node",
        str(TESTS / "socketio_client.mjs"),
        env=env,
        cwd=TESTS,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert node.stdout is not None and node.stderr is not None
    lines = []
    try:
        # The client waits up to TIMEOUT for its socket id, then for its outcome.
        async with asyncio.timeout(2 * TIMEOUT + 10):
            async for raw in node.stdout:
                line = json.loads(raw)
                lines.append(line)
                if "paid" in line:
                    paid.put_nowait(line)
            stderr = (await node.stderr.read()).decode()
            await node.wait()
    finally:
        if node.returncode is None:
            node.kill()
            await node.wait()
    assert node.returncode == 0 and lines and lines[-1] == {"done": True}, (
        lines,
        stderr,
    )
    results = [line for line in lines if "index" in line]
    assert len(results) == SIO_MODES[mode]
    return results


def sio_webs(
    topology: Topology, tag: str, *, timeout: float = TIMEOUT
) -> dict[str, list[tuple[str, str]]]:
    """The (server, transport) of every request of each tagged client, by tag.

    HAProxy logs a WebSocket when its tunnel closes, a moment after the
    client closed it: wait until every websocket-mode client's is there.
    """
    deadline = time.monotonic() + timeout
    while True:
        found: dict[str, list[tuple[str, str]]] = {}
        for server, _, uri in topology.served():
            client = re.search(r"[?&]client=([\w-]+)", uri)
            transport = re.search(r"[?&]transport=(\w+)", uri)
            if client and transport and client[1].startswith(tag):
                found.setdefault(client[1], []).append((server, transport[1]))
        upgraded = [
            f"{tag}{mode}-{i}"
            for mode in ("default", "websocket")
            for i in range(SIO_MODES[mode])
        ]
        if all(
            any(t == "websocket" for _, t in found.get(c, [])) for c in upgraded
        ) or (time.monotonic() > deadline):
            return found
        time.sleep(0.05)  # polling HAProxy's log file, not a quiet period


# The test -------------------------------------------------------------------------


@pytest.mark.timeout(600)  # each phase has its own 120-s deadline
def test_two_webs_two_workers_behind_haproxy_then_one_of_each_killed(
    topology: Topology, isolated_channel_layer: str
) -> None:
    started = time.monotonic()
    first, second, proxy = topology.first, topology.second, topology.proxy
    killed_web = proxy.names[first.port]
    survivor = proxy.names[second.port]
    sio_first: dict[str, list[dict[str, Any]]] = {}
    sio_second: dict[str, list[dict[str, Any]]] = {}

    async def sio_round(tag: str, paid: asyncio.Queue) -> dict[str, list[Any]]:
        # The tag carries the mode, so a client's log lines name it.
        results = await asyncio.gather(
            *(run_node(proxy, mode, f"{tag}{mode}-", paid) for mode in SIO_MODES)
        )
        return dict(zip(SIO_MODES, results, strict=True))

    open_gate = topology.gate.open

    def mark(what: str) -> None:
        # Shown by pytest when the test fails: how far it got, and when.
        print(f"{time.monotonic() - started:6.1f} s  {what}", flush=True)

    async def run() -> list[JsonClient]:
        async with httpx.AsyncClient(
            base_url=proxy.url, trust_env=False, timeout=TIMEOUT
        ) as http:
            opening = asyncio.Semaphore(OPENING)
            clients = [
                JsonClient(i, proxy, http, opening=opening) for i in range(JSON_CLIENTS)
            ]
            # 1. No faults: the JSON clients, then the Socket.IO ones (their
            # sockets stay open), so that two cores serve one burst at a time.
            await asyncio.gather(*(c.open() for c in clients))
            mark("JSON sockets open")
            await asyncio.gather(*(c.pay_from_the_other_web() for c in clients))
            created = sum(len(c.payments) for c in clients)
            mark(f"{created} JSON payments created")
            open_gate(created)
            await asyncio.gather(
                *(
                    c.receive_until_terminal([p["id"] for p, _ in c.payments])
                    for c in clients
                )
            )
            mark("JSON outcomes received")
            open_gate(sum(SIO_MODES.values()))
            sio_first.update(await sio_round("a", asyncio.Queue()))
            mark("Socket.IO clients done")

            # 2. Every client's next payment in flight, then the kills.
            paid: asyncio.Queue = asyncio.Queue()
            sio = asyncio.create_task(sio_round("b", paid))
            second_round = await asyncio.gather(*(c.pay() for c in clients))
            for _ in range(sum(SIO_MODES.values())):
                await asyncio.wait_for(paid.get(), TIMEOUT)
            mark("second round created; killing a web and a worker")
            first.kill_web()
            first.kill_worker()
            # Every charge of the round, and one more: the killed worker's
            # charge, abandoned at the gate, is made again by the survivor.
            open_gate(JSON_CLIENTS + sum(SIO_MODES.values()) + 1)
            await asyncio.gather(
                *(
                    c.receive_until_terminal([p["id"]])
                    for c, p in zip(clients, second_round, strict=True)
                )
            )
            mark("JSON outcomes received")
            sio_second.update(await sio)
            mark("Socket.IO clients done")
            return clients

    clients = asyncio.run(run())

    # 1. Each socket on one web, its POST on the other; both webs serve
    # sockets and POSTs.
    for client in clients:
        socket_web = client.socket_webs[0]
        crossed = [p for p, web in client.payments[:-1] if web != socket_web]
        assert len(crossed) == 1, (client.index, client.socket_webs, client.payments)
    socket_webs = {c.socket_webs[0] for c in clients}
    assert socket_webs == {killed_web, survivor}
    # Every status, in version order, for every payment of the first round.
    for client in clients:
        for payment, _ in client.payments[:-1]:
            frames = client.frames[payment["id"]]
            assert [(f["status"], f["version"]) for f in frames] == [
                ("processing", 2),
                ("succeeded", 3),
            ], (client.index, frames)

    webs = sio_webs(topology, "a")
    for mode, results in sio_first.items():
        for result in results:
            assert result["ok"], (result.get("error"), result)
            assert result["statuses"] == ["processing", "succeeded"], result
            assert result["transport"] == (
                "polling" if mode == "polling" else "websocket"
            )
        # The POST's web, against the web of the socket's WebSocket.
        if mode != "polling":
            crossed = [
                r
                for r in results
                if r["postServedBy"]
                not in {s for s, t in webs[f"a{mode}-{r['index']}"] if t == "websocket"}
            ]
            # Round-robin and no stickiness: about half cross over (never
            # all on one web; a sticky proxy would cross none).
            assert len(crossed) >= len(results) // 5, (mode, webs)
    # Polling: one session's requests served by both webs.
    polled = [webs[f"apolling-{i}"] for i in range(SIO_MODES["polling"])]
    assert sum(len({s for s, _ in p}) == 2 for p in polled) >= len(polled) // 2, polled

    # 2. The kills: sockets on the killed web came back through the survivor.
    dropped = [c for c in clients if c.socket_webs[0] == killed_web]
    assert dropped and all(c.reconnects for c in dropped)
    assert all(c.socket_webs[-1] == survivor for c in dropped)
    for client in clients:
        payment = client.payments[-1][0]
        frames = client.frames[payment["id"]]
        # Never backwards. A reconnected client may get a version again (its
        # new socket's subscribe answers with the current one, which the old
        # socket may have pushed already): README's clients drop those.
        versions = [f["version"] for f in frames]
        assert versions == sorted(versions), (client.index, frames)
        assert client.reconnects or versions == [2, 3], (client.index, frames)
        assert (frames[-1]["status"], frames[-1]["version"]) == ("succeeded", 3)
        assert [f["status"] for f in frames].count("succeeded") == 1, frames
    reconnected = 0
    for results in sio_second.values():
        for result in results:
            assert result["ok"], result
            assert result["final"] == "succeeded", result
            reconnected += result["connects"] > 1
    assert reconnected, "no Socket.IO client was on the killed web"

    # Every payment terminal and charged once: one charge in the simulated
    # gateway's ledger and one recorded charge call.
    ids = [p["id"] for c in clients for p, _ in c.payments] + [
        r["paymentId"] for rs in (*sio_first.values(), *sio_second.values()) for r in rs
    ]
    assert len(set(ids)) == len(ids)
    rows = Payment.objects.filter(pk__in=ids)
    assert rows.count() == len(ids)
    assert set(rows.values_list("status", flat=True)) == {"succeeded"}
    assert SimulatedCharge.objects.filter(payment_id__in=ids).count() == len(ids)
    calls = (
        GatewayCall.objects.filter(payment_id__in=ids, operation="charge")
        .values("payment_id")
        .annotate(n=Count("id"))
    )
    assert {c["n"] for c in calls} == {1} and len(calls) == len(ids)
    # Out of rotation once checked dead, and the surviving worker took over.
    assert re.search(rf"Server web/{killed_web} is DOWN", proxy.process.output())
    print(f"{len(ids)} payments in {time.monotonic() - started:.1f} s")


def test_the_proxy_answers_in_the_api_error_shape_when_no_web_is_up() -> None:
    """HAProxy's own 503 (every web down or not ready) is JSON, not its HTML page."""
    with HAProxy([free_port()], http_check=False) as proxy:
        with httpx.Client(base_url=proxy.url, trust_env=False, timeout=20) as client:
            response = client.get("/api/payments/")
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["code"] == "service_unavailable"
