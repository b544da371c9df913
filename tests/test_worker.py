"""The worker: its stop on SIGTERM, its connections, its jobs, the settle sweep."""

from __future__ import annotations

import signal
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.tasks import TaskResultStatus
from django.utils import timezone
from django_tasks_db.models import DBTaskResult

from payments import services
from payments.models import Payment, SimulatedCharge
from payments.worker.worker import WakeableWorker, keep_connections_between_jobs


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


@pytest.fixture
def default_db_settings():
    """Restore the default connection's settings_dict after the test."""
    from django.db import connections

    connection = connections["default"]
    saved = {**connection.settings_dict}
    saved_options = {**connection.settings_dict.get("OPTIONS", {})}
    yield connection
    connection.settings_dict.clear()
    connection.settings_dict.update(saved)
    connection.settings_dict["OPTIONS"] = saved_options


@pytest.mark.parametrize(
    ("pool", "kept"),
    [(None, 60), ({"max_size": 4}, 0)],
    ids=["unpooled-keeps-its-connection", "pooled-returns-it-to-the-pool"],
)
def test_worker_keeps_connections_unless_pooled(
    default_db_settings, settings, pool, kept
) -> None:
    settings.TASKS_WORKER_CONN_MAX_AGE = 60
    options = default_db_settings.settings_dict.setdefault("OPTIONS", {})
    options.pop("pool", None)
    if pool is not None:
        options["pool"] = pool
    default_db_settings.settings_dict["CONN_MAX_AGE"] = 0

    keep_connections_between_jobs()

    assert default_db_settings.settings_dict["CONN_MAX_AGE"] == kept


@pytest.mark.django_db
def test_finished_jobs_are_pruned_and_waiting_ones_kept(settings) -> None:
    # The queue's table keeps every finished job; README has operators run
    # django-tasks-db's prune_db_task_results daily.
    settings.PAYMENTS_SIMULATED_DELAY = 0  # settled by the charge, no sweep
    services.payment_create(amount=1000, currency="usd", payment_method="pm_card_visa")
    worker = make_worker()
    worker.run_task(worker._claim())
    waiting = services.payment_create(
        amount=1000, currency="usd", payment_method="pm_card_visa"
    )
    DBTaskResult.objects.filter(status=TaskResultStatus.SUCCESSFUL).update(
        finished_at=timezone.now() - timedelta(days=15)
    )

    call_command("prune_db_task_results", verbosity=0)

    left = DBTaskResult.objects.values_list("status", "args_kwargs")
    assert [(status, kw["kwargs"]) for status, kw in left] == [
        (TaskResultStatus.READY, {"payment_id": str(waiting.id)})
    ]


@pytest.mark.django_db
def test_idle_worker_waits_until_the_next_outcome_is_due(settings) -> None:
    settings.PAYMENTS_SIMULATED_DELAY = 0.5
    worker = make_worker()
    assert worker._idle_timeout() == worker.interval

    payment = services.payment_create(
        amount=1000, currency="usd", payment_method="pm_card_visa"
    )
    worker.run_task(worker._claim())

    assert 0 < worker._idle_timeout() <= 0.5
    payment.refresh_from_db()
    assert payment.status == "processing"


@pytest.mark.django_db
def test_worker_loop_settles_due_payments_between_jobs(settings) -> None:
    settings.PAYMENTS_SIMULATED_DELAY = 5
    payment = services.payment_create(
        amount=1000, currency="usd", payment_method="pm_card_visa"
    )
    worker = make_worker()
    worker.run_task(worker._claim())
    past = timezone.now() - timedelta(seconds=1)
    SimulatedCharge.objects.filter(payment_id=payment.id).update(settles_at=past)
    Payment.objects.filter(pk=payment.id).update(settle_at=past)

    worker._settle_due()

    payment.refresh_from_db()
    assert payment.status == "succeeded"
