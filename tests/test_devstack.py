"""scripts/devstack.py, what scripts/run runs: web and worker kept up together.

The script runs for real on the test database (already migrated) and Redis.
Its worker's lease is taken away in the database, as when renewals were
refused, so the worker exits with 70 as it would in production.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from django.conf import settings
from django.db import connection

from payments.models import WorkerHeartbeat
from scripts.processes import PY, ROOT, Process, free_port
from tests.helpers import wait_until
from tests.live import database_url, process_env

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

# Deadlines, not delays.
TIMEOUT = 60.0


def children(pid: int) -> set[int]:
    """The pids of a process's children (Linux's /proc/<pid>/task/*/children)."""
    return {
        int(child)
        for task in Path(f"/proc/{pid}/task").iterdir()
        for child in (task / "children").read_text().split()
    }


def worker_pid() -> int | None:
    """The pid in the worker's heartbeat row, once it holds a lease."""
    return WorkerHeartbeat.objects.values_list("pid", flat=True).first()


@dataclass
class Devstack:
    process: Process
    port: int


@pytest.fixture
def devstack(transactional_db: None, isolated_channel_layer: str) -> Iterator[Devstack]:
    port = free_port()
    env = process_env(
        DJANGO_SETTINGS_MODULE="config.settings.local",
        DATABASE_URL=database_url(connection.settings_dict),
        REDIS_URL=settings.REDIS_URL,
        CHANNELS_PREFIX=isolated_channel_layer,
        PORT=str(port),
        PYTHONUNBUFFERED="1",
        # Renewed every 0.5 s: a refused renewal ends the worker at once,
        # and a lease of 10 s outlasts a start-up stalled on loaded cores.
        TASKS_WORKER_HEARTBEAT_INTERVAL="0.5",
        TASKS_WORKER_DEAD_AFTER="10",
    )
    process = Process("devstack", [PY, "scripts/devstack.py"], env)
    try:
        process.wait_for_port(port)
        process.wait_for_output("Ctrl-C stops everything.")
        yield Devstack(process, port)
    finally:
        # Stops web and worker first; shown by pytest when a test fails.
        if process.alive():
            process.send_signal(signal.SIGINT)
        process.wait(TIMEOUT)
        print(process.report())


def test_a_worker_that_lost_its_lease_is_started_again_and_web_stays_up(
    devstack: Devstack,
) -> None:
    script = devstack.process
    first = wait_until(worker_pid, "the worker's lease", TIMEOUT)
    web = children(script.pid) - {first}
    assert len(web) == 1, web

    # Its next renewal is refused: exit 70 (payments.worker.heartbeat).
    WorkerHeartbeat.objects.all().delete()

    script.wait_for_output("lost its lease (exit 70)", TIMEOUT)
    second = wait_until(worker_pid, "a new worker's lease", TIMEOUT)
    assert second != first
    assert children(script.pid) == web | {second}
    with httpx.Client(trust_env=False, timeout=TIMEOUT) as client:
        response = client.get(f"http://127.0.0.1:{devstack.port}/")
    assert response.status_code == 200, response.text
    assert script.alive()

    script.send_signal(signal.SIGINT)
    assert script.wait(TIMEOUT) == 0
    assert "Traceback" not in script.output()


def test_a_worker_that_crashes_otherwise_stops_the_stack(devstack: Devstack) -> None:
    script = devstack.process
    pid = wait_until(worker_pid, "the worker's lease", TIMEOUT)
    web = children(script.pid) - {pid}

    os.kill(pid, signal.SIGKILL)

    # Not restarted: web stopped too, and the script says it failed.
    assert script.wait(TIMEOUT) == 1
    assert "The worker exited (-9)." in script.output()
    assert "lost its lease" not in script.output()
    assert not any(Path(f"/proc/{p}").exists() for p in web)


def test_restarts_back_off_to_a_bound_and_start_over_after_a_stable_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    monkeypatch.delitem(sys.modules, "devstack", raising=False)
    from devstack import Backoff

    backoff = Backoff(first=1, most=30, stable_after=60)

    delays = [backoff.after(ran_for=2) for _ in range(7)]

    assert delays == [1, 2, 4, 8, 16, 30, 30]
    assert backoff.after(ran_for=60) == 1
    assert backoff.after(ran_for=2) == 2
