"""Recovery of lost jobs and re-push of undelivered status changes, in process.

The channel layer is real: the "Redis away" cases point the layer at a port
nobody listens on, which fails the way a stopped Redis does.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import socket
import threading
import time
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import get_channel_layer
from django.db import transaction
from django.tasks import TaskResultStatus
from django.utils import timezone
from django_tasks_db.models import DBTaskResult

from payments import services
from payments.models import Payment, PaymentEvent, PaymentStatus, WorkerHeartbeat
from payments.worker import heartbeat, mark_writer, recovery
from payments.worker.heartbeat import heartbeat_running
from payments.worker.recovery import (
    RecoveryLoop,
    recover_once,
    tasks_release_abandoned,
    tasks_release_held_by,
)
from realtime import groups, notify
from tests.factories import PaymentFactory
from tests.helpers import TIMEOUT, at_once, wait_until

PROCESS_TASK = "payments.tasks.process_payment"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def redis_away(settings):
    """Point the channel layer at a port with no server; call the result to undo."""
    from channels.layers import channel_layers

    layers = settings.CHANNEL_LAYERS
    config = layers["default"]["CONFIG"]
    host = {**config["hosts"][0], "address": f"redis://127.0.0.1:{closed_port()}/0"}
    settings.CHANNEL_LAYERS = {
        "default": {**layers["default"], "CONFIG": {**config, "hosts": [host]}}
    }
    channel_layers.backends.clear()

    def back() -> None:
        settings.CHANNEL_LAYERS = layers
        channel_layers.backends.clear()

    yield back
    back()


def stuck(payment: Payment) -> None:
    Payment.objects.filter(pk=payment.pk).update(
        recheck_at=timezone.now() - timedelta(seconds=1)
    )


def process_tasks_for(payment: Payment) -> int:
    return DBTaskResult.objects.filter(
        task_path=PROCESS_TASK, args_kwargs__kwargs__payment_id=str(payment.pk)
    ).count()


# Stuck payments ---------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("status", [PaymentStatus.PENDING, PaymentStatus.PROCESSING])
def test_stuck_payment_is_enqueued_again_once(status):
    payment = PaymentFactory(status=status)
    stuck(payment)

    assert recovery.payment_recover_stuck() == 1
    assert process_tasks_for(payment) == 1
    payment.refresh_from_db()
    assert payment.recheck_at > timezone.now()
    # The claim moved recheck_at on: a second round leaves it alone.
    assert recovery.payment_recover_stuck() == 0
    assert process_tasks_for(payment) == 1


@pytest.mark.django_db
@pytest.mark.parametrize(
    "status", [PaymentStatus.SUCCEEDED, PaymentStatus.FAILED, PaymentStatus.CANCELED]
)
def test_terminal_payment_is_never_recovered(status):
    stuck(PaymentFactory(status=status))
    assert recovery.payment_recover_stuck() == 0
    assert DBTaskResult.objects.count() == 0


@pytest.mark.django_db
def test_payment_within_its_deadline_is_left_alone(api_client):
    api_client.post("/api/payments/", {"amount": 1000}, format="json")
    assert recovery.payment_recover_stuck() == 0
    assert DBTaskResult.objects.count() == 1


@pytest.mark.django_db
def test_recovered_job_completes_a_payment_stuck_in_processing_and_charges_once():
    payment = services.payment_create(
        amount=1000, currency="usd", payment_method="pm_card_visa"
    )
    # Its job moved it to processing, charged, and failed before the outcome
    # was recorded (the gateway's answer timed out, say).
    services.payment_start_processing(payment_id=payment.pk)
    from payments.gateways import get_gateway

    get_gateway().charge(payment=payment)
    DBTaskResult.objects.update(status=TaskResultStatus.FAILED)
    stuck(payment)

    assert recovery.payment_recover_stuck() == 1
    services.payment_process(payment_id=payment.pk)

    payment.refresh_from_db()
    assert payment.status == PaymentStatus.SUCCEEDED
    assert payment.version == 3
    from payments.models import SimulatedCharge

    assert SimulatedCharge.objects.filter(payment_id=payment.pk).count() == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_recovery_rounds_enqueue_a_payment_once():
    payments = [PaymentFactory(status=PaymentStatus.PENDING) for _ in range(10)]
    for payment in payments:
        stuck(payment)
    totals = at_once(recovery.payment_recover_stuck)

    assert sum(totals) == len(payments)
    assert all(process_tasks_for(payment) == 1 for payment in payments)


@pytest.mark.django_db(transaction=True)
def test_recovery_loop_runs_rounds_until_stopped(settings):
    payment = PaymentFactory(status=PaymentStatus.PENDING)
    stuck(payment)
    loop = RecoveryLoop(interval=0.05)

    loop.start()
    try:
        wait_until(lambda: process_tasks_for(payment), "a round's job", 10)
    finally:
        loop.stop(timeout=5)

    assert not loop.is_alive()


# Undelivered status changes ---------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_change_committed_while_redis_is_away_is_kept_and_pushed_later(
    settings, caplog, redis_away
):
    settings.PAYMENTS_REDELIVER_AFTER = 0
    payment = PaymentFactory(status=PaymentStatus.PENDING)
    failed_before = notify.stats["failed"]

    with caplog.at_level(logging.WARNING, logger="realtime.notify"):
        moved = services.payment_start_processing(payment_id=payment.pk)
    # While Redis is away, re-pushing fails too and marks nothing.
    assert recovery.payment_events_redeliver() == 0
    redis_away()

    assert moved is not None
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.PROCESSING
    event = PaymentEvent.objects.get(payment=payment, to_status="processing")
    assert event.notified_at is None
    assert notify.stats["failed"] > failed_before
    assert any("not pushed" in r.getMessage() for r in caplog.records)
    assert not any(r.exc_info for r in caplog.records)

    # Redis is back: the outbox round pushes it to the payment's group. (One
    # loop for listening and pushing: pub/sub layers are per event loop.)
    async def listen_and_redeliver() -> tuple[int, dict]:
        layer = get_channel_layer()
        channel = await layer.new_channel()
        await layer.group_add(groups.payment_group(payment.pk), channel)
        pushed = await sync_to_async(recovery.payment_events_redeliver)()
        return pushed, await asyncio.wait_for(layer.receive(channel), 5)

    pushed, message = async_to_sync(listen_and_redeliver)()

    assert pushed == 1
    assert message["type"] == "payment.status"
    assert message["payment"]["id"] == str(payment.pk)
    assert message["payment"]["version"] == 2
    event.refresh_from_db()
    assert event.notified_at is not None
    assert recovery.payment_events_redeliver() == 0


@pytest.mark.django_db(transaction=True)
def test_pushed_change_is_marked_and_not_pushed_again(settings):
    settings.PAYMENTS_REDELIVER_AFTER = 0
    payment = PaymentFactory(status=PaymentStatus.PENDING)
    services.payment_start_processing(payment_id=payment.pk)

    event = PaymentEvent.objects.get(payment=payment, to_status="processing")
    assert event.notified_at is not None
    assert recovery.payment_events_redeliver() == 0


@pytest.mark.django_db
def test_payments_are_accepted_while_redis_is_away(api_client, redis_away):
    response = api_client.post("/api/payments/", {"amount": 1000}, format="json")
    assert response.status_code == 202
    assert Payment.objects.count() == 1


# Abandoned jobs ----------------------------------------------------------------


@pytest.mark.django_db
def test_job_left_running_by_a_dead_worker_is_released(settings):
    from django.core.management import call_command
    from django.tasks import TaskResultStatus

    payment = services.payment_create(
        amount=1000, currency="usd", payment_method="pm_card_visa"
    )
    job = DBTaskResult.objects.get()
    long_ago = timezone.now() - timedelta(seconds=settings.PAYMENTS_STUCK_AFTER + 1)
    DBTaskResult.objects.filter(pk=job.pk).update(
        status=TaskResultStatus.RUNNING, started_at=long_ago
    )
    fresh = DBTaskResult.objects.create(
        args_kwargs={"args": [], "kwargs": {"payment_id": str(payment.pk)}},
        task_path=PROCESS_TASK,
        backend_name="default",
        run_after=timezone.now(),
        status=TaskResultStatus.RUNNING,
        started_at=timezone.now(),
    )
    out = io.StringIO()

    call_command("reconcile_payments", stdout=out)

    job.refresh_from_db()
    fresh.refresh_from_db()
    assert job.status == TaskResultStatus.FAILED
    assert job.exception_class_path == "payments.worker.recovery.AbandonedTaskError"
    assert fresh.status == TaskResultStatus.RUNNING
    assert "1 abandoned jobs released" in out.getvalue()


@pytest.mark.django_db(transaction=True)
def test_a_change_whose_push_failed_stays_unmarked_when_batching(redis_away):
    payment = PaymentFactory(status=PaymentStatus.PENDING)

    with mark_writer.marks_batched(interval=3600):
        assert services.payment_start_processing(payment_id=payment.pk) is not None

    event = PaymentEvent.objects.get(payment=payment, to_status="processing")
    assert event.notified_at is None


# Job-aware recovery and dead workers (payments.worker.heartbeat) ----------------


def job_for(
    payment: Payment,
    *,
    status: str,
    worker: str | None = None,
    started_ago: float = 0.0,
    run_after: timedelta = timedelta(0),
    task_path: str = PROCESS_TASK,
) -> DBTaskResult:
    started = timezone.now() - timedelta(seconds=started_ago)
    return DBTaskResult.objects.create(
        args_kwargs={"args": [], "kwargs": {"payment_id": str(payment.pk)}},
        task_path=task_path,
        backend_name="default",
        run_after=timezone.now() + run_after,
        status=status,
        started_at=started if status == TaskResultStatus.RUNNING else None,
        worker_ids=[worker] if worker else [],
    )


def beat(worker_id: str, *, ago: float) -> None:
    at = timezone.now() - timedelta(seconds=ago)
    WorkerHeartbeat.objects.update_or_create(
        worker_id=worker_id, defaults={"started_at": at, "beat_at": at}
    )


@pytest.mark.django_db
@pytest.mark.parametrize(
    "open_job",
    [
        {"status": TaskResultStatus.READY},
        {"status": TaskResultStatus.READY, "run_after": timedelta(minutes=5)},
        {
            "status": TaskResultStatus.READY,
            "run_after": timedelta(seconds=30),
            "task_path": "payments.tasks.refresh_payment",
        },
        {"status": TaskResultStatus.RUNNING, "worker": "live", "started_ago": 600},
    ],
    ids=["queued", "deferred", "deferred-refresh", "held-by-a-live-worker"],
)
def test_payment_past_its_deadline_with_an_open_job_is_not_enqueued_again(open_job):
    beat("live", ago=0)
    payment = PaymentFactory(status=PaymentStatus.PROCESSING)
    job_for(payment, **open_job)
    stuck(payment)

    assert recover_once().recovered == 0
    assert DBTaskResult.objects.count() == 1
    # Its deadline moved on, so the next rounds look at other payments.
    payment.refresh_from_db()
    assert payment.recheck_at > timezone.now()


@pytest.mark.django_db
def test_payment_waiting_for_the_settle_sweep_is_not_enqueued_again():
    """Past its deadline but still due for the sweep: the sweep is not lost."""
    payment = PaymentFactory(status=PaymentStatus.PROCESSING)
    Payment.objects.filter(pk=payment.pk).update(
        settle_at=timezone.now() - timedelta(seconds=2)
    )
    stuck(payment)

    assert recovery.payment_recover_stuck() == 0
    assert process_tasks_for(payment) == 0
    payment.refresh_from_db()
    assert payment.recheck_at > timezone.now()


@pytest.mark.django_db
def test_payment_a_sweep_took_and_never_settled_is_enqueued_again(settings):
    """A sweep's claim clears settle_at: if it dies there, recovery charges again."""
    settings.PAYMENTS_SIMULATED_DELAY = 5
    payment = PaymentFactory()
    services.payment_process(payment_id=payment.id)
    Payment.objects.filter(pk=payment.pk).update(settle_at=None)
    stuck(payment)

    assert recovery.payment_recover_stuck() == 1
    assert process_tasks_for(payment) == 1


@pytest.mark.django_db
@pytest.mark.parametrize(
    "finished", [TaskResultStatus.FAILED, TaskResultStatus.SUCCESSFUL]
)
def test_payment_whose_job_ended_is_enqueued_again(finished):
    payment = PaymentFactory(status=PaymentStatus.PROCESSING)
    job_for(payment, status=finished)
    stuck(payment)

    assert recovery.payment_recover_stuck() == 1
    assert process_tasks_for(payment) == 2


@pytest.mark.django_db
def test_job_of_a_dead_worker_is_failed_and_enqueued_again_at_once(settings):
    settings.TASKS_WORKER_DEAD_AFTER = 5
    beat("dead", ago=6)
    payment = PaymentFactory(status=PaymentStatus.PROCESSING)
    # Its deadline is far off: the lapsed heartbeat alone brings it back.
    Payment.objects.filter(pk=payment.pk).update(
        recheck_at=timezone.now() + timedelta(minutes=5)
    )
    abandoned = job_for(payment, status=TaskResultStatus.RUNNING, worker="dead")

    assert recover_once() == (0, 0, 1)

    abandoned.refresh_from_db()
    assert abandoned.status == TaskResultStatus.FAILED
    assert abandoned.exception_class_path == (
        "payments.worker.recovery.AbandonedTaskError"
    )
    [again] = DBTaskResult.objects.exclude(pk=abandoned.pk)
    assert (again.status, again.task_path, again.args_kwargs) == (
        TaskResultStatus.READY,
        PROCESS_TASK,
        abandoned.args_kwargs,
    )
    # Released once: the next round finds a queued job, not a stuck payment.
    stuck(payment)
    assert recover_once() == (0, 0, 0)
    assert process_tasks_for(payment) == 2


@pytest.mark.django_db
def test_job_of_a_live_worker_is_left_to_it_however_long_it_runs(settings):
    settings.TASKS_WORKER_DEAD_AFTER = 5
    beat("live", ago=4)
    payment = PaymentFactory(status=PaymentStatus.PROCESSING)
    held = job_for(
        payment,
        status=TaskResultStatus.RUNNING,
        worker="live",
        started_ago=settings.PAYMENTS_STUCK_AFTER * 10,
    )
    stuck(payment)

    assert recover_once() == (0, 0, 0)
    held.refresh_from_db()
    assert held.status == TaskResultStatus.RUNNING
    assert DBTaskResult.objects.count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize(("started_ago", "released"), [(1, 0), (61, 1)])
def test_worker_without_a_heartbeat_keeps_the_started_at_rule(
    settings, started_ago, released
):
    # django-tasks-db's own worker, or one from before heartbeats.
    settings.PAYMENTS_STUCK_AFTER = 60
    payment = PaymentFactory(status=PaymentStatus.PROCESSING)
    job_for(
        payment, status=TaskResultStatus.RUNNING, worker="old", started_ago=started_ago
    )

    assert tasks_release_abandoned() == released


@pytest.mark.django_db
def test_a_lease_is_claimed_new_or_lapsed_never_from_a_live_worker(settings):
    settings.TASKS_WORKER_DEAD_AFTER = 5
    assert heartbeat.heartbeat_claim(worker_id="w") is True
    assert heartbeat.heartbeat_claim(worker_id="w") is False  # live: its own beat
    beat("w", ago=60)
    assert heartbeat.heartbeat_claim(worker_id="w") is True
    lease = WorkerHeartbeat.objects.get(worker_id="w")
    assert lease.beat_at > timezone.now() - timedelta(seconds=5)


@pytest.mark.django_db
def test_a_lease_taken_over_by_another_process_is_not_renewed_by_the_old_one(
    settings,
):
    settings.TASKS_WORKER_DEAD_AFTER = 5
    assert heartbeat.heartbeat_claim(worker_id="w") is True
    assert heartbeat.heartbeat_renew(worker_id="w") is True
    # A new process (another pid) claimed the id while this one was frozen.
    WorkerHeartbeat.objects.filter(worker_id="w").update(pid=os.getpid() + 1)
    assert heartbeat.heartbeat_renew(worker_id="w") is False


@pytest.mark.django_db
def test_claiming_a_live_lease_gives_up_after_waiting_out_a_dead_ones(settings):
    # The wait ends at dead_after + 2 intervals (2 s); the dead lease lapses
    # at 1 s: a second of slack for a slow claim on loaded cores.
    settings.TASKS_WORKER_DEAD_AFTER = 1.0
    settings.TASKS_WORKER_HEARTBEAT_INTERVAL = 0.5
    # A live worker keeps its lease current through the whole wait.
    beat("w", ago=-60)
    assert heartbeat.heartbeat_claim_waiting(worker_id="w") is False
    beat("w", ago=0)  # a dead process's fresh lease: waited out, then taken
    assert heartbeat.heartbeat_claim_waiting(worker_id="w") is True


@pytest.mark.django_db
def test_worker_starting_under_a_reused_id_releases_what_that_id_left():
    beat("web-1", ago=0)  # its previous process beat until a moment ago
    mine = job_for(
        PaymentFactory(status=PaymentStatus.PROCESSING),
        status=TaskResultStatus.RUNNING,
        worker="web-1",
    )
    beat("web-2", ago=0)
    other = job_for(
        PaymentFactory(status=PaymentStatus.PROCESSING),
        status=TaskResultStatus.RUNNING,
        worker="web-2",
    )

    assert tasks_release_held_by("web-1") == 1
    mine.refresh_from_db()
    other.refresh_from_db()
    assert (mine.status, other.status) == ("FAILED", "RUNNING")


@pytest.mark.django_db(transaction=True)
def test_concurrent_rounds_release_a_dead_workers_job_once(settings):
    settings.TASKS_WORKER_DEAD_AFTER = 5
    beat("dead", ago=60)
    payments = [PaymentFactory(status=PaymentStatus.PROCESSING) for _ in range(5)]
    for payment in payments:
        job_for(payment, status=TaskResultStatus.RUNNING, worker="dead")
    totals = at_once(tasks_release_abandoned)

    assert sum(totals) == len(payments)
    assert all(process_tasks_for(payment) == 2 for payment in payments)


@pytest.mark.django_db(transaction=True)
def test_heartbeat_keeps_the_lease_and_drops_it_at_a_clean_stop(settings):
    settings.TASKS_WORKER_HEARTBEAT_INTERVAL = 0.2
    settings.TASKS_WORKER_DEAD_AFTER = 5  # no slow renewal loses it
    lost = threading.Event()
    with heartbeat_running("w1") as running:
        running.on_lost = lost.set
        first = WorkerHeartbeat.objects.get().beat_at

        def renewed() -> bool:
            return WorkerHeartbeat.objects.get().beat_at > first

        wait_until(renewed, "a renewal", 5)
        assert heartbeat.workers_liveness(["w1", "w2"]) == {"w1": True}
        assert list(heartbeat.workers_alive().values_list("pk", flat=True)) == ["w1"]
    assert not lost.is_set()
    assert not WorkerHeartbeat.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_worker_whose_lease_lapsed_gives_up_instead_of_renewing(settings):
    # Frozen past its lease (SIGSTOP, a paused VM): others may run its job.
    settings.TASKS_WORKER_DEAD_AFTER = 2
    lost = threading.Event()
    running = heartbeat.Heartbeat(
        worker_id="w1", interval=0.05, dead_after=2, on_lost=lost.set
    )
    running.start()
    try:
        WorkerHeartbeat.objects.update(beat_at=timezone.now() - timedelta(seconds=3))
        assert lost.wait(5), "renewed a lapsed lease"
        assert heartbeat.workers_liveness(["w1"]) == {"w1": False}
    finally:
        running.stop()


@pytest.mark.django_db(transaction=True)
def test_worker_that_cannot_renew_gives_up_before_its_lease_ends():
    # The test holds the heartbeat row's write lock, so renewals hang in the
    # database as with a database gone away: the watch ends the worker within
    # the lease (dead_after - interval after its last renewal).
    lost = threading.Event()
    lease_used: list[float] = []  # since its last renewal was sent

    def on_lost() -> None:
        lease_used.append(time.monotonic() - running._renewed)
        lost.set()

    # A lease of seconds, not tenths: a renewal or a watch a thread switch
    # late must not end it early on a loaded machine.
    running = heartbeat.Heartbeat(
        worker_id="w1", interval=0.5, dead_after=5, on_lost=on_lost
    )
    running.start()
    try:
        with transaction.atomic():
            WorkerHeartbeat.objects.select_for_update().filter(pk="w1").update(
                hostname="locked by the test"
            )
            assert lost.wait(TIMEOUT), "kept running with its renewals hung"
        assert lease_used[0] < running.dead_after
        assert WorkerHeartbeat.objects.get().hostname == "locked by the test"
    finally:
        running.stop()
