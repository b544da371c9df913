"""The worker: its stop on SIGTERM, its connections, its jobs, the settle sweep."""

from __future__ import annotations

import gc
import logging
import signal
import sys
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db import connection
from django.db.utils import OperationalError
from django.tasks import TaskResultStatus
from django.tasks.signals import task_finished, task_started
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_tasks_db.backend import DatabaseBackend
from django_tasks_db.models import DBTaskResult

from payments import services, tasks
from payments.gateways.simulated import SimulatedGateway
from payments.models import GatewayCall, Payment, PaymentEvent, SimulatedCharge
from payments.worker import worker as worker_module
from payments.worker.database import is_database_unavailable
from payments.worker.mark_writer import marks_batched
from payments.worker.worker import WakeableWorker, keep_connections_between_jobs
from tests.helpers import make_worker


def test_worker_freezes_what_it_loaded_before_its_loop(monkeypatch) -> None:
    """The long-running worker's full collections skip its start-up heap (ops.heap)."""
    from payments.management.commands.db_worker import Command

    frozen_at_run = []
    # Neither this process's signal handlers nor its loggers' levels change.
    monkeypatch.setattr(Command, "configure_logging", lambda self, verbosity: None)
    monkeypatch.setattr(WakeableWorker, "configure_signals", lambda self: None)
    monkeypatch.setattr(
        WakeableWorker, "run", lambda self: frozen_at_run.append(gc.get_freeze_count())
    )
    gc.unfreeze()
    try:
        Command()._run_wakeable(
            verbosity=0,
            queue_name="default",
            exclude_queues="",
            interval=1.0,
            backend_name="default",
            startup_delay=False,
            max_tasks=None,
            worker_id="freeze",
            reload=False,
        )
    finally:
        gc.unfreeze()

    assert len(frozen_at_run) == 1
    assert frozen_at_run[0] > 0, "nothing frozen"


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
    worker._run_claimed(worker._claim_batch())
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
    settings.PAYMENTS_SIMULATED_DELAY = 5  # not due yet on a slow machine
    worker = make_worker()
    worker.interval = 10  # the outcome, not the poll, ends the wait
    assert worker._idle_timeout() == worker.interval

    payment = services.payment_create(
        amount=1000, currency="usd", payment_method="pm_card_visa"
    )
    worker._run_claimed(worker._claim_batch())

    # Asked again when the gateway said, rounded up (SETTLE_AT_GRANULARITY).
    rounding = services.SETTLE_AT_GRANULARITY.total_seconds()
    assert 0 < worker._idle_timeout() <= 5 + rounding
    payment.refresh_from_db()
    assert payment.status == "processing"


@pytest.mark.django_db
def test_worker_loop_settles_due_payments_between_jobs(settings) -> None:
    settings.PAYMENTS_SIMULATED_DELAY = 5
    payment = services.payment_create(
        amount=1000, currency="usd", payment_method="pm_card_visa"
    )
    worker = make_worker()
    worker._run_claimed(worker._claim_batch())
    past = timezone.now() - timedelta(seconds=1)
    SimulatedCharge.objects.filter(payment_id=payment.id).update(settles_at=past)
    Payment.objects.filter(pk=payment.id).update(settle_at=past)

    worker._settle_due()

    payment.refresh_from_db()
    assert payment.status == "succeeded"


# Jobs in batches -------------------------------------------------------------


def enqueued_payments(*methods: str) -> list[Payment]:
    return [
        services.payment_create(amount=1000, currency="usd", payment_method=method)
        for method in methods
    ]


def job_statuses() -> dict[str, str]:
    return {
        kw["kwargs"]["payment_id"]: status
        for status, kw in DBTaskResult.objects.values_list("status", "args_kwargs")
    }


@pytest.mark.django_db
def test_one_claim_runs_every_queued_payment_job_and_records_each_result() -> None:
    visa, declined = enqueued_payments("pm_card_visa", "pm_card_chargeDeclined")
    worker = make_worker()

    claimed = worker._claim_batch()
    assert {job.status for job in DBTaskResult.objects.all()} == {"RUNNING"}
    worker._run_claimed(claimed)

    assert len(claimed) == 2
    assert worker._run_tasks == 2
    assert job_statuses() == {
        str(visa.id): "SUCCESSFUL",
        str(declined.id): "SUCCESSFUL",
    }
    statuses = dict(Payment.objects.values_list("id", "status"))
    assert statuses == {visa.id: "succeeded", declined.id: "failed"}
    for payment in (visa, declined):
        history = PaymentEvent.objects.filter(payment=payment).order_by("version")
        assert [(e.from_status, e.to_status, e.version) for e in history] == [
            ("", "pending", 1),
            ("pending", "processing", 2),
            ("processing", Payment.objects.get(pk=payment.pk).status, 3),
        ]
    assert GatewayCall.objects.filter(operation="charge").count() == 2
    assert worker._claim_batch() == []


@pytest.mark.django_db
def test_a_batch_costs_the_same_statements_whatever_its_size(monkeypatch) -> None:
    """The batch's steps are a few statements whatever its size."""
    # One group of answers however slow the machine (its commit is timed).
    monkeypatch.setattr(services, "GROUP_COMMIT_AFTER", 60)

    def statements_to_process(count: int) -> int:
        enqueued_payments(*["pm_card_visa"] * count)
        worker = make_worker()
        # The outbox marks batched, as in db_worker (its own thread).
        with marks_batched(), CaptureQueriesContext(connection) as queries:
            worker._run_claimed(worker._claim_batch())
        assert Payment.objects.filter(status="succeeded").count() == count
        Payment.objects.update(status="canceled")  # out of the next count's way
        # The simulated gateway's charge is its own INSERT, the provider's
        # work (a savepoint around it here, in the test's transaction).
        return sum(
            "simulatedcharge" not in q["sql"] and "SAVEPOINT" not in q["sql"]
            for q in queries.captured_queries
        )

    assert statements_to_process(2) == statements_to_process(10)


class ChargeRaisesGateway(SimulatedGateway):
    """A provider whose client library raises for one card."""

    def charge(self, *, payment):
        if payment.payment_method == "pm_card_mastercard":
            raise ConnectionError("provider unreachable")
        return super().charge(payment=payment)


@pytest.mark.django_db
def test_a_charge_that_raises_fails_its_own_job_only(settings) -> None:
    settings.PAYMENTS_GATEWAY = f"{__name__}.ChargeRaisesGateway"
    failing, fine = enqueued_payments("pm_card_mastercard", "pm_card_visa")
    worker = make_worker()

    worker._run_claimed(worker._claim_batch())

    assert job_statuses() == {str(failing.id): "FAILED", str(fine.id): "SUCCESSFUL"}
    job = DBTaskResult.objects.get(args_kwargs__kwargs__payment_id=str(failing.id))
    assert job.exception_class_path == "builtins.ConnectionError"
    failing.refresh_from_db()
    fine.refresh_from_db()
    # Left processing for recovery at its deadline, which charges again.
    assert failing.status == "processing"
    assert failing.recheck_at > timezone.now()
    assert fine.status == "succeeded"
    # Every call is recorded, the one that raised too.
    assert set(GatewayCall.objects.values_list("payment_id", "outcome")) == {
        (failing.id, "error"),
        (fine.id, "succeeded"),
    }


@pytest.mark.django_db
def test_two_jobs_of_one_payment_in_a_batch_both_finish_and_charge_once() -> None:
    [payment] = enqueued_payments("pm_card_visa")
    tasks.process_payment.enqueue(payment_id=str(payment.id))  # recovery's, say
    worker = make_worker()

    worker._run_claimed(worker._claim_batch())

    assert [s for (s,) in DBTaskResult.objects.values_list("status")] == [
        "SUCCESSFUL",
        "SUCCESSFUL",
    ]
    assert SimulatedCharge.objects.filter(payment_id=payment.id).count() == 1
    assert PaymentEvent.objects.filter(payment=payment).count() == 3


@pytest.mark.django_db
def test_a_malformed_job_runs_alone_and_fails_alone() -> None:
    [payment] = enqueued_payments("pm_card_visa")
    tasks.process_payment.enqueue(payment_id="not-a-uuid")
    worker = make_worker()

    worker._run_claimed(worker._claim_batch())

    assert job_statuses() == {str(payment.id): "SUCCESSFUL", "not-a-uuid": "FAILED"}
    payment.refresh_from_db()
    assert payment.status == "succeeded"


@pytest.fixture
def job_signals():
    """What task_started and task_finished were sent with, in order.

    Each as (signal, sender, payment id, status, the exception a receiver
    finds in sys.exc_info(), by class name, or None).
    """
    sent: list[tuple[str, type, str, str, str | None]] = []

    def record(signal, sender, task_result, **kwargs):
        name = "started" if signal is task_started else "finished"
        error = sys.exc_info()[1]
        sent.append(
            (
                name,
                sender,
                task_result.kwargs["payment_id"],
                task_result.status,
                type(error).__name__ if error else None,
            )
        )

    task_started.connect(record)
    task_finished.connect(record)
    yield sent
    task_started.disconnect(record)
    task_finished.disconnect(record)


@pytest.mark.django_db
def test_a_batchs_jobs_each_send_task_started_and_task_finished(
    settings, job_signals
) -> None:
    """As run_task does for a job alone: listeners see every batched job."""
    settings.PAYMENTS_GATEWAY = f"{__name__}.ChargeRaisesGateway"
    failing, fine = enqueued_payments("pm_card_mastercard", "pm_card_visa")
    worker = make_worker()

    worker._run_claimed(worker._claim_batch())

    assert job_signals == [
        ("started", DatabaseBackend, str(failing.id), "RUNNING", None),
        ("started", DatabaseBackend, str(fine.id), "RUNNING", None),
        # Inside the error's except, as run_task sends it: receivers (Django's
        # log line) read its traceback.
        ("finished", DatabaseBackend, str(failing.id), "FAILED", "ConnectionError"),
        ("finished", DatabaseBackend, str(fine.id), "SUCCESSFUL", None),
    ]


@pytest.mark.django_db
def test_a_whole_batchs_error_finishes_each_job_failed_with_its_traceback(
    monkeypatch, job_signals
) -> None:
    payments = enqueued_payments("pm_card_visa", "pm_card_visa")

    def database_gone(**kwargs):
        raise OperationalError("the database went away")

    monkeypatch.setattr(services, "payments_process", database_gone)
    make_worker()._run_claimed(make_worker()._claim_batch())

    assert set(job_statuses().values()) == {"FAILED"}
    assert [sent[0] for sent in job_signals] == ["started"] * 2 + ["finished"] * 2
    assert job_signals[2:] == [
        ("finished", DatabaseBackend, str(p.id), "FAILED", "OperationalError")
        for p in payments
    ]


@pytest.mark.django_db(transaction=True)
def test_a_batch_an_outage_cut_short_runs_again_once_the_database_is_back(
    monkeypatch,
) -> None:
    """Neither the answers nor the jobs' results could be stored.

    The job stays RUNNING under a live worker, whose jobs no other worker
    takes: the worker itself runs it again, charged once, before it claims
    anything else.
    """
    [payment] = enqueued_payments("pm_card_visa")
    worker = make_worker()

    def away(*args, **kwargs):
        raise OperationalError("the database went away")

    monkeypatch.setattr(services, "_payments_record_answers", away)
    monkeypatch.setattr(DBTaskResult, "set_failed", away)
    with pytest.raises(OperationalError):
        worker._round()
    assert job_statuses() == {str(payment.id): "RUNNING"}
    assert worker._database_away(OperationalError("gone")) > 0

    monkeypatch.undo()
    worker._round()
    worker._database_back()

    payment.refresh_from_db()
    assert payment.status == "succeeded"
    assert SimulatedCharge.objects.filter(payment_id=payment.id).count() == 1
    assert sorted(DBTaskResult.objects.values_list("status", "traceback")) == [
        (
            "FAILED",
            "The worker running this job (test) lost its database "
            "mid-batch; the job was enqueued again.",
        ),
        ("SUCCESSFUL", ""),
    ]


def outage_error(sqlstate_error: type[Exception] | None) -> OperationalError:
    """An OperationalError as Django raises it from psycopg's ``sqlstate_error``."""
    error = OperationalError("the database went away")
    if sqlstate_error is not None:
        error.__cause__ = sqlstate_error("from the server")
    return error


@pytest.mark.django_db
def test_only_a_database_that_cannot_be_reached_is_an_outage() -> None:
    import psycopg.errors as pg

    outage = connection.vendor != "sqlite"
    # A connection refused, closed or timed out; a server shutting down.
    for cause in (None, pg.AdminShutdown, pg.CannotConnectNow, pg.ConnectionFailure):
        assert is_database_unavailable(outage_error(cause)) is outage, cause
    # Faults: a cancelled statement, a refused password, no such table.
    for cause in (pg.QueryCanceled, pg.InvalidPassword, pg.UndefinedTable):
        assert not is_database_unavailable(outage_error(cause)), cause
    assert not is_database_unavailable(RuntimeError("a bug"))


@pytest.mark.django_db
def test_the_loop_waits_out_an_outage_and_ends_on_a_fault(monkeypatch) -> None:
    worker = make_worker()
    rounds = iter([outage_error(None), None, outage_error(None)])
    waits: list[float] = []

    def a_round() -> float | None:
        error = next(rounds, "stop")
        if error == "stop":
            worker.running = False
            return None
        if error is not None:
            raise error
        return None

    monkeypatch.setattr(worker_module, "is_database_unavailable", lambda exc: True)
    monkeypatch.setattr(worker, "_round", a_round)
    monkeypatch.setattr(worker, "_idle", waits.append)
    worker.run()
    assert waits == [worker_module.DATABASE_RETRY_INTERVAL] * 2
    assert worker._database_lost_at is None  # back at the last round

    # A fault is raised, as django-tasks-db's loop raises it.
    monkeypatch.setattr(worker_module, "is_database_unavailable", lambda exc: False)
    worker.running = True
    rounds = iter([outage_error(None)])
    with pytest.raises(OperationalError):
        worker.run()


@pytest.mark.django_db
def test_a_put_back_that_fails_leaves_the_charged_jobs_result_and_finishes_it_once(
    settings, sigterm_in_call, monkeypatch, job_signals
) -> None:
    """Told to stop, and the jobs not charged cannot go back: they fail, alone."""
    worker = sigterm_in_call
    enqueued_payments("pm_card_visa", "pm_card_visa")

    def database_gone(jobs):
        raise OperationalError("the database went away")

    monkeypatch.setattr(worker_module, "_jobs_requeue", database_gone)
    worker._run_claimed(worker._claim_batch())

    [charged] = SimulatedCharge.objects.values_list("payment_id", flat=True)
    statuses = job_statuses()
    assert statuses.pop(str(charged)) == "SUCCESSFUL"
    [(not_charged, status)] = statuses.items()
    assert status == "FAILED"  # recovery enqueues its payment again
    finished = [sent[2:4] for sent in job_signals if sent[0] == "finished"]
    assert finished == [(str(charged), "SUCCESSFUL"), (not_charged, "FAILED")]


@pytest.mark.django_db
def test_a_raising_job_signal_receiver_fails_no_batched_job(caplog) -> None:
    enqueued_payments("pm_card_visa", "pm_card_visa")

    def broken(**kwargs):
        raise RuntimeError("a listener's bug")

    task_started.connect(broken)
    task_finished.connect(broken)
    try:
        make_worker()._run_claimed(make_worker()._claim_batch())
    finally:
        task_started.disconnect(broken)
        task_finished.disconnect(broken)

    assert set(job_statuses().values()) == {"SUCCESSFUL"}
    assert Payment.objects.filter(status="succeeded").count() == 2
    assert "a listener's bug" in caplog.text  # django.dispatch logs it


@pytest.mark.django_db
def test_a_batch_claims_no_more_than_max_tasks_leaves() -> None:
    enqueued_payments(*["pm_card_visa"] * 3)
    worker = make_worker()
    worker.max_tasks = 2

    assert len(worker._claim_batch()) == 2
    assert DBTaskResult.objects.filter(status="READY").count() == 1


@pytest.mark.django_db
def test_charges_left_pending_each_wait_for_their_own_outcome(settings) -> None:
    settings.PAYMENTS_SIMULATED_DELAY = 5
    first = enqueued_payments("pm_card_visa")
    settings.PAYMENTS_SIMULATED_DELAY = 50
    second = enqueued_payments("pm_card_visa")
    worker = make_worker()

    worker._run_claimed(worker._claim_batch())

    for [payment] in (first, second):
        payment.refresh_from_db()
        charge = SimulatedCharge.objects.get(payment_id=payment.id)
        assert payment.status == "processing"
        assert abs((payment.settle_at - charge.settles_at).total_seconds()) < 1
        assert payment.recheck_at > payment.settle_at


@pytest.mark.django_db
def test_pending_charges_share_one_update_per_time_and_none_is_asked_early(
    settings, monkeypatch
) -> None:
    settings.PAYMENTS_SIMULATED_DELAY = 5
    # One group for the batch, however slow this machine charges.
    monkeypatch.setattr(services, "GROUP_COMMIT_AFTER", 60)
    enqueued_payments(*["pm_card_visa"] * 10)
    worker = make_worker()

    started = timezone.now()
    with CaptureQueriesContext(connection) as queries:
        worker._run_claimed(worker._claim_batch())
    took = timezone.now() - started

    payments = list(Payment.objects.all())
    times = {payment.settle_at for payment in payments}
    updates = [
        q["sql"]
        for q in queries.captured_queries
        if q["sql"].startswith('UPDATE "payments_payment"') and "settle_at" in q["sql"]
    ]
    # The same wait from the gateway: one time, or two across a 10-ms step
    # (more only where the gateway's own times are further apart).
    charges = SimulatedCharge.objects.filter(payment_id__in=[p.id for p in payments])
    spread = max(c.settles_at for c in charges) - min(c.settles_at for c in charges)
    assert len(updates) == len(times) <= 2 + spread // services.SETTLE_AT_GRANULARITY
    for payment in payments:
        charge = SimulatedCharge.objects.get(payment_id=payment.id)
        # Never before the gateway's time; after it by at most the wait for
        # the group's write and the rounding.
        late = payment.settle_at - charge.settles_at
        assert timedelta(0) <= late <= took + services.SETTLE_AT_GRANULARITY
        assert payment.settle_at.microsecond % 10_000 == 0


@pytest.mark.django_db
def test_a_claim_adds_its_worker_to_each_jobs_earlier_workers() -> None:
    [fresh, run_before, run_twice] = enqueued_payments(*["pm_card_visa"] * 3)
    earlier = {str(fresh.id): [], str(run_before.id): ["old"]}
    earlier[str(run_twice.id)] = ["old", "older"]
    for job in DBTaskResult.objects.all():
        job.worker_ids = earlier[job.args_kwargs["kwargs"]["payment_id"]]
        job.save(update_fields=["worker_ids"])

    claimed = make_worker()._claim_batch()

    assert len(claimed) == 3
    assert {
        job.args_kwargs["kwargs"]["payment_id"]: job.worker_ids
        for job in DBTaskResult.objects.all()
    } == {
        str(fresh.id): ["test"],
        str(run_before.id): ["old", "test"],
        str(run_twice.id): ["old", "older", "test"],
    }
    assert set(DBTaskResult.objects.values_list("status", flat=True)) == {"RUNNING"}


class OutcomeSeenGateway(SimulatedGateway):
    """Notes, at each charge, the payments already settled in the database."""

    settled_before: dict[str, list[str]] = {}

    def charge(self, *, payment):
        OutcomeSeenGateway.settled_before[payment.description] = sorted(
            Payment.objects.filter(status="succeeded").values_list(
                "description", flat=True
            )
        )
        return super().charge(payment=payment)


@pytest.mark.django_db
def test_a_slow_gateways_answers_commit_before_the_batch_ends(
    settings, monkeypatch
) -> None:
    """A group's answers commit once GROUP_COMMIT_AFTER has passed."""
    settings.PAYMENTS_GATEWAY = f"{__name__}.OutcomeSeenGateway"
    monkeypatch.setattr(services, "GROUP_COMMIT_AFTER", 0.0)
    monkeypatch.setattr(OutcomeSeenGateway, "settled_before", {})
    for name in ("first", "second"):
        services.payment_create(
            amount=1000, currency="usd", payment_method="pm_card_visa", description=name
        )
    worker = make_worker()

    worker._run_claimed(worker._claim_batch())

    charged_first, charged_second = sorted(
        OutcomeSeenGateway.settled_before.items(), key=lambda seen: len(seen[1])
    )
    assert charged_first[1] == []
    assert charged_second[1] == [charged_first[0]]  # committed before this charge


# Told to stop mid-batch ------------------------------------------------------


class SigtermInCallGateway(SimulatedGateway):
    """SIGTERM reaches ``worker`` while its first gateway call waits on the provider.

    ``signals`` of them (a second one forces the exit).
    """

    worker: WakeableWorker
    signals = 1

    def charge(self, *, payment):
        result = super().charge(payment=payment)
        self._signal()
        return result

    def retrieve(self, *, payment):
        result = super().retrieve(payment=payment)
        self._signal()
        return result

    def _signal(self) -> None:
        if self.worker.running:
            for _ in range(self.signals):
                self.worker.shutdown(signal.SIGTERM, None)


@pytest.fixture
def sigterm_in_call(settings):
    """Install SigtermInCallGateway for a new worker; return the worker."""
    simulated = settings.PAYMENTS_GATEWAY
    settings.PAYMENTS_GATEWAY = f"{__name__}.SigtermInCallGateway"
    worker = SigtermInCallGateway.worker = make_worker()
    yield worker
    SigtermInCallGateway.signals = 1
    settings.PAYMENTS_GATEWAY = simulated


def run_the_rest(settings) -> None:
    """A worker on the plain simulated gateway runs what is queued and due."""
    settings.PAYMENTS_GATEWAY = "payments.gateways.simulated.SimulatedGateway"
    following = make_worker()
    following._run_claimed(following._claim_batch())
    following._settle_check_at = 0.0
    following._settle_due()


@pytest.mark.django_db
def test_a_batch_charging_too_long_leaves_the_rest_to_the_other_workers(
    monkeypatch, caplog
) -> None:
    """A slow provider's queue is shared: past its time a batch puts the rest back.

    And its worker's next claim takes only what it charged in the time, so
    the other workers, woken, find the rest.
    """
    monkeypatch.setattr(worker_module, "BATCH_CHARGE_TIME", 0.0)
    payments = enqueued_payments(*["pm_card_visa"] * 4)
    slow, other = make_worker(), make_worker()

    with caplog.at_level(logging.INFO, logger="django_tasks_db"):
        slow._run_claimed(slow._claim_batch())

    # The first charge is always made, then the time is up.
    [charged] = SimulatedCharge.objects.values_list("payment_id", flat=True)
    rest = {str(p.id) for p in payments} - {str(charged)}
    assert job_statuses() == {
        str(charged): "SUCCESSFUL",
        **dict.fromkeys(rest, "READY"),
    }
    assert "3 job(s) back in the queue" in caplog.text
    assert "shutting down" not in caplog.text
    assert slow.running
    assert len(slow._claim_batch()) == 1
    assert len(other._claim_batch()) == 2


@pytest.mark.django_db
def test_a_batch_in_time_lets_the_next_claim_grow_back() -> None:
    worker = make_worker()
    worker._claim_limit = 1
    enqueued_payments(*["pm_card_visa"] * 3)

    worker._run_claimed(worker._claim_batch())
    assert worker._claim_limit == 2
    assert len(worker._claim_batch()) == 2


@pytest.mark.django_db
def test_sigterm_in_a_batchs_charge_puts_the_jobs_not_charged_back(
    settings, sigterm_in_call
) -> None:
    worker = sigterm_in_call
    payments = enqueued_payments(*["pm_card_visa"] * 3)

    worker._run_claimed(worker._claim_batch())

    # The charge in hand is finished and recorded; no other is made.
    [charged] = SimulatedCharge.objects.values_list("payment_id", flat=True)
    assert GatewayCall.objects.get().payment_id == charged
    rest = {str(p.id) for p in payments} - {str(charged)}
    assert job_statuses() == {
        str(charged): "SUCCESSFUL",
        **dict.fromkeys(rest, "READY"),
    }
    assert worker._run_tasks == 1
    assert set(
        Payment.objects.filter(pk__in=rest).values_list("status", flat=True)
    ) == {"processing"}

    # The next worker runs them at once, each charged once.
    run_the_rest(settings)
    assert set(Payment.objects.values_list("status", flat=True)) == {"succeeded"}
    assert SimulatedCharge.objects.count() == 3
    assert GatewayCall.objects.filter(operation="charge").count() == 3


@pytest.mark.django_db
def test_a_second_sigterm_in_a_batch_exits_with_every_job_back_in_the_queue(
    settings, sigterm_in_call
) -> None:
    """Forced out mid-charge: no job failed, none left running."""
    SigtermInCallGateway.signals = 2
    worker = sigterm_in_call
    payments = enqueued_payments(*["pm_card_visa"] * 3)

    with pytest.raises(SystemExit) as stopped:
        worker._run_claimed(worker._claim_batch())

    assert stopped.value.code == 1
    assert set(job_statuses().values()) == {"READY"}
    # Charged at the gateway, not recorded: the next run charges it again,
    # once at the provider (its idempotency on the payment id).
    assert SimulatedCharge.objects.count() == 1
    assert not GatewayCall.objects.exists()
    run_the_rest(settings)
    assert set(Payment.objects.values_list("status", flat=True)) == {"succeeded"}
    assert SimulatedCharge.objects.count() == len(payments)
    assert GatewayCall.objects.filter(operation="charge").count() == len(payments)


@pytest.mark.django_db
def test_sigterm_in_a_job_run_alone_runs_none_of_the_rest(
    settings, sigterm_in_call
) -> None:
    settings.PAYMENTS_SIMULATED_DELAY = 5
    first, second = enqueued_payments("pm_card_visa", "pm_card_visa")
    worker = sigterm_in_call
    SigtermInCallGateway.signals = 0  # the charges leave both processing
    worker._run_claimed(worker._claim_batch())
    SigtermInCallGateway.signals = 1
    # Two jobs that run alone (a retrieve each), and a payment's.
    for payment in (first, second):
        tasks.refresh_payment.enqueue(payment_id=str(payment.id))
    [third] = enqueued_payments("pm_card_visa")

    worker._run_claimed(worker._claim_batch())

    refreshed = GatewayCall.objects.filter(operation="retrieve")
    assert refreshed.count() == 1
    statuses = sorted(
        (kw["kwargs"]["payment_id"] == str(third.id), task.rsplit(".")[-1], status)
        for task, status, kw in DBTaskResult.objects.values_list(
            "task_path", "status", "args_kwargs"
        )
    )
    assert statuses == [
        (False, "process_payment", "SUCCESSFUL"),
        (False, "process_payment", "SUCCESSFUL"),
        (False, "refresh_payment", "READY"),
        (False, "refresh_payment", "SUCCESSFUL"),
        (True, "process_payment", "READY"),
    ]


@pytest.mark.django_db
def test_sigterm_in_the_settle_sweep_leaves_the_rest_due(
    settings, sigterm_in_call
) -> None:
    settings.PAYMENTS_SIMULATED_DELAY = 5
    payments = enqueued_payments("pm_card_visa", "pm_card_visa")
    worker = sigterm_in_call
    SigtermInCallGateway.signals = 0
    worker._run_claimed(worker._claim_batch())
    SigtermInCallGateway.signals = 1
    past = timezone.now() - timedelta(seconds=1)
    SimulatedCharge.objects.update(settles_at=past)
    Payment.objects.update(settle_at=past)

    worker._settle_due()

    assert worker.running is False
    assert GatewayCall.objects.filter(operation="retrieve").count() == 1
    [left] = Payment.objects.filter(status="processing")
    assert left.settle_at <= timezone.now()
    run_the_rest(settings)
    assert set(Payment.objects.values_list("status", flat=True)) == {"succeeded"}
    assert GatewayCall.objects.filter(operation="retrieve").count() == len(payments)


@pytest.mark.django_db
def test_a_second_sigterm_in_the_settle_sweep_leaves_every_unanswered_one_due(
    settings, sigterm_in_call
) -> None:
    settings.PAYMENTS_SIMULATED_DELAY = 5
    enqueued_payments("pm_card_visa", "pm_card_visa")
    worker = sigterm_in_call
    SigtermInCallGateway.signals = 0
    worker._run_claimed(worker._claim_batch())
    SigtermInCallGateway.signals = 2
    past = timezone.now() - timedelta(seconds=1)
    SimulatedCharge.objects.update(settles_at=past)
    Payment.objects.update(settle_at=past)

    with pytest.raises(SystemExit):
        worker._settle_due()

    assert not GatewayCall.objects.filter(operation="retrieve").exists()
    now = timezone.now()
    assert all(
        p.status == "processing" and p.settle_at <= now for p in Payment.objects.all()
    )


@pytest.mark.django_db
def test_sigterm_before_claimed_jobs_start_runs_none_of_them() -> None:
    """The signal came during the claim: neither kind of job is started."""
    [payment] = enqueued_payments("pm_card_visa")
    tasks.process_payment.enqueue(payment_id="not-a-uuid")  # one that runs alone
    worker = make_worker()
    claimed = worker._claim_batch()
    worker.shutdown(signal.SIGTERM, None)

    worker._run_claimed(claimed)

    assert job_statuses() == {str(payment.id): "READY", "not-a-uuid": "READY"}
    assert Payment.objects.get().status == "pending"
    assert worker._run_tasks == 0
