"""Recovery of lost jobs and re-push of undelivered status changes, in process.

The channel layer is real: the "Redis away" cases point the layer at a port
nobody listens on, which fails the way a stopped Redis does.
"""

from __future__ import annotations

import asyncio
import io
import logging
import socket
import threading
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import get_channel_layer
from django.db import connection
from django.tasks import TaskResultStatus
from django.utils import timezone
from django_tasks_db.models import DBTaskResult

from payments import outbox, services
from payments.models import Payment, PaymentEvent, PaymentStatus
from payments.recovery import RecoveryLoop
from realtime import groups, notify
from tests.factories import PaymentFactory

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

    assert services.payment_recover_stuck() == 1
    assert process_tasks_for(payment) == 1
    payment.refresh_from_db()
    assert payment.recheck_at > timezone.now()
    # The claim moved recheck_at on: a second round leaves it alone.
    assert services.payment_recover_stuck() == 0
    assert process_tasks_for(payment) == 1


@pytest.mark.django_db
@pytest.mark.parametrize(
    "status", [PaymentStatus.SUCCEEDED, PaymentStatus.FAILED, PaymentStatus.CANCELED]
)
def test_terminal_payment_is_never_recovered(status):
    stuck(PaymentFactory(status=status))
    assert services.payment_recover_stuck() == 0
    assert DBTaskResult.objects.count() == 0


@pytest.mark.django_db
def test_payment_within_its_deadline_is_left_alone(api_client):
    api_client.post("/api/payments/", {"amount": 1000}, format="json")
    assert services.payment_recover_stuck() == 0
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

    assert services.payment_recover_stuck() == 1
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
    rounds = 4
    barrier = threading.Barrier(rounds)
    totals: list[int] = []

    def round_() -> None:
        try:
            barrier.wait(timeout=30)
            totals.append(services.payment_recover_stuck())
        finally:
            connection.close()

    threads = [threading.Thread(target=round_) for _ in range(rounds)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert sum(totals) == len(payments)
    assert all(process_tasks_for(payment) == 1 for payment in payments)


@pytest.mark.django_db(transaction=True)
def test_recovery_loop_runs_rounds_until_stopped(settings):
    payment = PaymentFactory(status=PaymentStatus.PENDING)
    stuck(payment)
    seen = threading.Event()
    loop = RecoveryLoop(interval=0.05)

    def watch() -> None:
        # Wait on the database for the loop's work, with a deadline.
        deadline = timezone.now() + timedelta(seconds=10)
        try:
            while timezone.now() < deadline:
                if process_tasks_for(payment):
                    seen.set()
                    return
                threading.Event().wait(0.02)
        finally:
            connection.close()

    loop.start()
    watcher = threading.Thread(target=watch)
    watcher.start()
    watcher.join(timeout=15)
    loop.stop(timeout=5)

    assert seen.is_set()
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
    assert services.payment_events_redeliver() == 0
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
        pushed = await sync_to_async(services.payment_events_redeliver)()
        return pushed, await asyncio.wait_for(layer.receive(channel), 5)

    pushed, message = async_to_sync(listen_and_redeliver)()

    assert pushed == 1
    assert message["type"] == "payment.status"
    assert message["payment"]["id"] == str(payment.pk)
    assert message["payment"]["version"] == 2
    event.refresh_from_db()
    assert event.notified_at is not None
    assert services.payment_events_redeliver() == 0


@pytest.mark.django_db(transaction=True)
def test_pushed_change_is_marked_and_not_pushed_again(settings):
    settings.PAYMENTS_REDELIVER_AFTER = 0
    payment = PaymentFactory(status=PaymentStatus.PENDING)
    services.payment_start_processing(payment_id=payment.pk)

    event = PaymentEvent.objects.get(payment=payment, to_status="processing")
    assert event.notified_at is not None
    assert services.payment_events_redeliver() == 0


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
    assert job.exception_class_path == "payments.recovery.AbandonedTaskError"
    assert fresh.status == TaskResultStatus.RUNNING
    assert "1 abandoned jobs released" in out.getvalue()


@pytest.mark.django_db(transaction=True)
def test_a_change_whose_push_failed_stays_unmarked_when_batching(redis_away):
    payment = PaymentFactory(status=PaymentStatus.PENDING)

    with outbox.marks_batched(interval=3600):
        assert services.payment_start_processing(payment_id=payment.pk) is not None

    event = PaymentEvent.objects.get(payment=payment, to_status="processing")
    assert event.notified_at is None
