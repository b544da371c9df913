"""The worker's stop on SIGTERM: never in the middle of a database call."""

from __future__ import annotations

import signal

import pytest

from payments.worker import WakeableWorker


def make_worker() -> WakeableWorker:
    return WakeableWorker(
        queue_names=["default"],
        interval=1.0,
        batch=False,
        backend_name="default",
        startup_delay=False,
        max_tasks=None,
        worker_id="test",
        excluded_queue_names=[],
    )


def test_sigterm_during_a_database_call_stops_after_it() -> None:
    worker = make_worker()  # between jobs, not waiting: claiming, say

    worker.shutdown(signal.SIGTERM, None)  # returns: no exit mid-transaction

    assert worker.running is False  # the loop ends after this step


def test_sigterm_while_waiting_for_work_exits_at_once() -> None:
    worker = make_worker()
    worker._waiting = True

    with pytest.raises(SystemExit) as stopped:
        worker.shutdown(signal.SIGTERM, None)

    assert stopped.value.code == 0


def test_sigterm_during_a_job_lets_it_finish() -> None:
    worker = make_worker()
    worker.running_task = True

    worker.shutdown(signal.SIGTERM, None)

    assert worker.running is False
