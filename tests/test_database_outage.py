"""PostgreSQL stopped and started again under a running stack.

The production configuration (PostgreSQL with the pool, Redis) on a cluster
of the test's own, so the test can stop it. While it is away every client
gets an answer it can act on (a JSON 503 naming the database, an error
frame on an open socket); the worker waits, within its lease, or ends and is
replaced by one that waits for the database. Once it is back, new payments
are accepted at once, and every payment accepted before settles, charged
once, its outcome pushed to the socket that follows it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from django.conf import settings
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as sync_connect

from payments.worker.heartbeat import LEASE_LOST_EXIT
from scripts.processes import PY, ROOT, PostgresCluster, Process
from tests.helpers import (
    CREATE,
    ORIGIN,
    WS_PATH,
    create_payment_sync,
    next_frame_sync,
    open_socket_sync,
    socket_id_of_sync,
    wait_until,
)
from tests.live import LiveStack, OutcomeGate, live_stack

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not PostgresCluster.available(), reason="needs the PostgreSQL server binaries"
    ),
]

TIMEOUT = 20.0
DATABASE = "payments"
# Recovery as in test_faults. The pool's 5 s and 5 s scaled down: requests
# wait 2 s for a connection before their 503, and a lost one is retried for
# 1 s, so once the database is back the next try comes within the wait.
OUTAGE_ENV = {
    "PAYMENTS_STUCK_AFTER": "2",
    "PAYMENTS_RECOVERY_INTERVAL": "0.5",
    "PAYMENTS_REDELIVER_AFTER": "0.5",
    "DJANGO_DB_POOL_TIMEOUT": "2",
    "DJANGO_DB_POOL_RECONNECT_TIMEOUT": "1",
}
# The worker's main loop saying the outage (payments.worker.worker).
LOOP_SAYS_AWAY = "s after each try"


@pytest.fixture
def cluster() -> Iterator[PostgresCluster]:
    """A migrated database on a PostgreSQL cluster of the test's own."""
    cluster = PostgresCluster(max_connections=100)
    try:
        cluster.start()
        cluster.execute(f"CREATE DATABASE {DATABASE}")
        subprocess.run(
            [PY, "manage.py", "migrate", "--noinput", "-v", "0"],
            cwd=ROOT,
            env={
                **os.environ,
                "DJANGO_SETTINGS_MODULE": "config.settings.test",
                "DATABASE_URL": cluster.url(DATABASE),
            },
            check=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture
def gate() -> OutcomeGate:
    return OutcomeGate()


@pytest.fixture
def start(
    cluster: PostgresCluster, gate: OutcomeGate, isolated_channel_layer: str
) -> Iterator[Callable[..., LiveStack]]:
    """Return start(**env): a stack on the cluster, its outcomes behind ``gate``."""
    stacks: list[LiveStack] = []
    with ExitStack() as running:

        def start(**env: str) -> LiveStack:
            stack = running.enter_context(
                live_stack(
                    database_url=cluster.url(DATABASE),
                    redis_url=settings.REDIS_URL,
                    channels_prefix=isolated_channel_layer,
                    **{**OUTAGE_ENV, **gate.env, **env},
                )
            )
            stacks.append(stack)
            return stack

        yield start
        for stack in stacks:
            print(stack.report())  # shown by pytest only when the test fails


class Blackhole:
    """Every packet to the cluster's port dropped: a database that stops answering.

    Its connections stay open, as after a failover that moved the address
    or in a network partition: nothing is refused or closed, nothing comes
    back. An iptables rule on the loopback interface, removed on stop().
    """

    def __init__(self, port: int) -> None:
        self.rule = ["INPUT", "-i", "lo", "-p", "tcp", "--dport", str(port)]
        self.rule += ["-j", "DROP"]
        self.active = False

    @staticmethod
    def usable() -> str | None:
        """Why this machine cannot drop packets, or None if it can."""
        if os.geteuid() != 0 and subprocess.run(["sudo", "-n", "true"]).returncode:
            return "dropping packets needs root or sudo (CI has one)"
        if not shutil.which("iptables") and not Path("/usr/sbin/iptables").exists():
            return "iptables is needed: apt-get install iptables (.ci/run does)"
        return None

    def _iptables(self, *args: str) -> None:
        command = ["iptables", "-w", *args]
        if os.geteuid() != 0:
            command = ["sudo", "-n", *command]
        subprocess.run(command, check=True, timeout=TIMEOUT, capture_output=True)

    def start(self) -> None:
        self._iptables("-A", *self.rule)
        self.active = True

    def stop(self) -> None:
        if self.active:
            self._iptables("-D", *self.rule)
            self.active = False


@pytest.fixture
def blackhole(cluster: PostgresCluster) -> Iterator[Blackhole]:
    reason = Blackhole.usable()
    if reason is not None:
        if os.geteuid() == 0:
            pytest.fail(reason)
        pytest.skip(reason)
    hole = Blackhole(cluster.port)
    try:
        yield hole
    finally:
        hole.stop()


def rows(cluster: PostgresCluster, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(cluster.url(DATABASE), autocommit=True) as db:
        return db.execute(sql, args).fetchall()


def subscribe(ws: ClientConnection, payment: dict[str, Any]) -> None:
    frame = {
        "action": "subscribe",
        "payment_id": payment["id"],
        "client_secret": payment["client_secret"],
    }
    ws.send(json.dumps(frame))


def statuses_until_terminal(
    ws: ClientConnection, ids: set[str]
) -> dict[str, list[tuple[str, int]]]:
    """Each payment's (status, version) frames, until all of ``ids`` are terminal."""
    seen: dict[str, list[tuple[str, int]]] = {}
    waiting = set(ids)
    while waiting:
        frame = next_frame_sync(ws, timeout=30)
        assert frame["event"] == "payment-status", frame
        data = frame["data"]
        seen.setdefault(data["id"], []).append((data["status"], data["version"]))
        if data["status"] in ("succeeded", "failed", "canceled"):
            waiting.discard(data["id"])
    return seen


def assert_charged_once_and_settled(cluster: PostgresCluster, ids: list[str]) -> None:
    """Each payment succeeded, one charge at the gateway, events 1, 2, 3."""
    charges = rows(
        cluster,
        "SELECT payment_id::text, count(*) FROM payments_simulatedcharge "
        "WHERE payment_id::text = ANY(%s) GROUP BY payment_id",
        ids,
    )
    assert sorted(charges) == sorted((i, 1) for i in ids), charges
    for payment_id in ids:
        events = rows(
            cluster,
            "SELECT version, from_status, to_status FROM payments_paymentevent "
            "WHERE payment_id::text = %s ORDER BY id",
            payment_id,
        )
        assert events == [
            (1, "", "pending"),
            (2, "pending", "processing"),
            (3, "processing", "succeeded"),
        ], (payment_id, events)


# A session cookie makes every request read the session table: the admin's,
# a Socket.IO session's and a WebSocket handshake's (Channels' AuthMiddleware).
SESSION_COOKIE = {"Cookie": "sessionid=nosuchsession0123456789abcdefghij"}


def assert_answers_while_away(stack: LiveStack, payment: dict[str, Any]) -> None:
    """Every answer is a JSON 503 naming the database; liveness still answers."""
    with httpx.Client(base_url=stack.http_url, trust_env=False, timeout=TIMEOUT) as c:
        created = c.post(CREATE, json={"amount": 1000})
        read = c.get(
            f"{CREATE}{payment['id']}/",
            params={"client_secret": payment["client_secret"]},
        )
        admin = c.get("/admin/", headers=SESSION_COOKIE)
        polling = c.get(
            "/socket.io/",
            params={"EIO": "4", "transport": "polling"},
            headers={**SESSION_COOKIE, "Origin": ORIGIN},
        )
        ready = c.get("/readyz")
        alive = c.get("/healthz")
    for response in (created, read, admin, polling):
        assert response.status_code == 503, response.text
        assert response.headers["content-type"] == "application/json"
        error = response.json()["error"]
        assert error["code"] == "service_unavailable", error
        assert error["message"].startswith("database:"), error
        assert int(response.headers["retry-after"]) > 0
    assert ready.status_code == 503, ready.text
    assert ready.json()["checks"]["database"]["status"] == "error", ready.text
    assert alive.status_code == 200, alive.text
    # A handshake is refused as when Redis is away (realtime.unavailable),
    # so the client tries again, rather than answered 500.
    for path in (WS_PATH, "/socket.io/?EIO=4&transport=websocket"):
        with pytest.raises(InvalidStatus) as refused:
            sync_connect(
                f"{stack.ws_url}{path}",
                origin=ORIGIN,
                proxy=None,
                open_timeout=TIMEOUT,
                additional_headers=SESSION_COOKIE,
            ).close()
        assert refused.value.response.status_code == 403, (path, refused.value)


def assert_outage_said_plainly(processes: Iterable[Process]) -> None:
    """No traceback for the outage itself: the web's answers, the worker's loops.

    A job whose batch the outage cut short may still log one (the gateway
    call's warning: the simulated gateway keeps its charges in this
    database; Django's line for a job failed), as any failed job does.
    """
    for process in processes:
        output = process.output()
        if process.name.startswith("daphne"):
            assert "Traceback" not in output, process.name
        for said in ("next round", LOOP_SAYS_AWAY, "before starting"):
            assert f"{said}\nTraceback" not in output, (process.name, said)


def test_a_database_restart_is_ridden_out_and_nothing_accepted_is_lost(
    start: Callable[..., LiveStack], cluster: PostgresCluster, gate: OutcomeGate
) -> None:
    # A lease long enough to outlast the restart: the same worker goes on.
    stack = start(TASKS_WORKER_HEARTBEAT_INTERVAL="0.5", TASKS_WORKER_DEAD_AFTER="30")
    with open_socket_sync(stack) as ws:
        socket_id = socket_id_of_sync(ws)
        before = create_payment_sync(stack, socket_id=socket_id)
        frame = next_frame_sync(ws)
        assert (frame["data"]["status"], frame["data"]["version"]) == (
            "processing",
            2,
        ), frame

        cluster.stop()
        assert_answers_while_away(stack, before)
        # The socket stays open: its subscribe is refused, its ping answered.
        subscribe(ws, before)
        frame = next_frame_sync(ws)
        assert frame["event"] == "error", frame
        assert frame["data"]["code"] == "service_unavailable", frame
        ws.send(json.dumps({"action": "ping"}))
        assert next_frame_sync(ws)["event"] == "pong"
        wait_until(
            lambda: LOOP_SAYS_AWAY in stack.worker.output(),
            "the worker to notice the database is away",
        )

        cluster.start()
        # Accepted on the first try: the pool connects again within the
        # request's wait for a connection.
        after = create_payment_sync(stack, socket_id=socket_id)
        gate.open()
        frames = statuses_until_terminal(ws, {before["id"], after["id"]})

    # Each change once, in order: the socket's frames are pushes, not polls.
    assert frames == {
        before["id"]: [("succeeded", 3)],
        after["id"]: [("processing", 2), ("succeeded", 3)],
    }, frames
    assert_charged_once_and_settled(cluster, [before["id"], after["id"]])
    assert stack.worker.returncode is None, "the worker ended in the outage"
    assert "database available again" in stack.worker.output()
    assert_outage_said_plainly(stack.processes)


def test_a_worker_whose_lease_lapsed_in_an_outage_is_replaced_by_one_that_waits(
    start: Callable[..., LiveStack], cluster: PostgresCluster, gate: OutcomeGate
) -> None:
    # A lease the outage outlasts (its 5.5 s of renewals), as test_faults'.
    stack = start(TASKS_WORKER_HEARTBEAT_INTERVAL="0.5", TASKS_WORKER_DEAD_AFTER="6")
    with open_socket_sync(stack) as ws:
        socket_id = socket_id_of_sync(ws)
        before = create_payment_sync(stack, socket_id=socket_id)
        frame = next_frame_sync(ws)
        assert frame["data"]["status"] == "processing", frame

        cluster.stop()
        # It ends itself before another worker may take its jobs, with the
        # status scripts/run restarts (compose restarts any).
        assert stack.worker.wait(TIMEOUT) == LEASE_LOST_EXIT
        # Its replacement, started while the database is still away, waits.
        replacement = stack.start_worker()
        wait_until(
            lambda: "waiting for it before starting" in replacement.output(),
            "the new worker to wait for the database",
        )
        assert replacement.returncode is None

        cluster.start()
        gate.open()
        frames = statuses_until_terminal(ws, {before["id"]})

    assert frames == {before["id"]: [("succeeded", 3)]}, frames
    assert_charged_once_and_settled(cluster, [before["id"]])
    assert replacement.returncode is None
    assert "database available; starting" in replacement.output()
    assert_outage_said_plainly(stack.history)


def test_a_database_that_stops_answering_is_given_up_on_within_its_tcp_timeout(
    start: Callable[..., LiveStack],
    cluster: PostgresCluster,
    gate: OutcomeGate,
    blackhole: Blackhole,
) -> None:
    # A lease that outlasts the test: the worker's connections, not its
    # heartbeat, must give up on the silent database.
    stack = start(
        TASKS_WORKER_HEARTBEAT_INTERVAL="0.5",
        TASKS_WORKER_DEAD_AFTER="120",
        DJANGO_DB_TCP_TIMEOUT="3",
    )
    with open_socket_sync(stack) as ws:
        socket_id = socket_id_of_sync(ws)
        before = create_payment_sync(stack, socket_id=socket_id)
        frame = next_frame_sync(ws)
        assert frame["data"]["status"] == "processing", frame

        blackhole.start()
        # Answered, within the client's TIMEOUT, not after the kernel's
        # minutes of retransmissions: the pooled connection it was lent
        # closes 3 s in (or the pool has none to lend).
        assert_answers_while_away(stack, before)
        wait_until(
            lambda: LOOP_SAYS_AWAY in stack.worker.output(),
            "the worker to give up on the silent database",
        )

        blackhole.stop()
        after = create_payment_sync(stack, socket_id=socket_id)
        gate.open()
        frames = statuses_until_terminal(ws, {before["id"], after["id"]})

    assert frames == {
        before["id"]: [("succeeded", 3)],
        after["id"]: [("processing", 2), ("succeeded", 3)],
    }, frames
    assert_charged_once_and_settled(cluster, [before["id"], after["id"]])
    assert stack.worker.returncode is None, "the worker ended in the outage"
    assert_outage_said_plainly(stack.processes)
