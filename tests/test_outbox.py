"""payments.outbox: the worker marks pushed changes in batches, losing none."""

from __future__ import annotations

import pytest
from django.db import OperationalError

from payments import outbox, services
from payments.models import PaymentEvent, PaymentStatus
from payments.worker import mark_writer, recovery
from tests.factories import PaymentFactory
from tests.helpers import wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def processing_event(payment_id) -> PaymentEvent:
    return PaymentEvent.objects.get(payment_id=payment_id, to_status="processing")


def test_outside_the_worker_a_push_is_marked_at_once():
    payment = PaymentFactory(status=PaymentStatus.PENDING)

    services.payment_start_processing(payment_id=payment.pk)

    assert processing_event(payment.pk).notified_at is not None


def test_batched_marks_are_written_by_a_flush_and_on_exit():
    first = PaymentFactory(status=PaymentStatus.PENDING)
    second = PaymentFactory(status=PaymentStatus.PENDING)

    # An interval no test waits for: only flush() and the exit write.
    with mark_writer.marks_batched(interval=3600):
        services.payment_start_processing(payment_id=first.pk)
        assert processing_event(first.pk).notified_at is None

        assert outbox.marks.flush() == 1
        assert processing_event(first.pk).notified_at is not None

        services.payment_start_processing(payment_id=second.pk)
        assert processing_event(second.pk).notified_at is None

    assert processing_event(second.pk).notified_at is not None
    assert outbox.marks.flush() == 0
    assert not outbox.marks.batching


def test_redelivery_does_not_push_again_what_was_pushed_but_not_marked(settings):
    settings.PAYMENTS_REDELIVER_AFTER = 0
    payment = PaymentFactory(status=PaymentStatus.PENDING)

    with mark_writer.marks_batched(interval=3600):
        services.payment_start_processing(payment_id=payment.pk)
        assert processing_event(payment.pk).notified_at is None

        assert recovery.payment_events_redeliver() == 0

    assert processing_event(payment.pk).notified_at is not None


def test_the_writer_flushes_on_its_own_interval():
    payment = PaymentFactory(status=PaymentStatus.PENDING)

    with mark_writer.marks_batched(interval=0.05):
        services.payment_start_processing(payment_id=payment.pk)
        wait_until(
            lambda: processing_event(payment.pk).notified_at, "the writer's flush", 10
        )
        assert outbox.marks.flush() == 0


def test_a_failed_write_keeps_the_marks_for_the_next_flush(monkeypatch):
    payments = [PaymentFactory(status=PaymentStatus.PENDING) for _ in range(5)]
    real_write = outbox._write
    calls: list[list[int]] = []

    def failing_once(event_ids: list[int]) -> None:
        calls.append(event_ids)
        if len(calls) == 2:
            raise OperationalError("database is locked")
        real_write(event_ids)

    monkeypatch.setattr(outbox.NotifiedMarks, "CHUNK", 2)
    monkeypatch.setattr(outbox, "_write", failing_once)
    with mark_writer.marks_batched(interval=3600):
        for payment in payments:
            services.payment_start_processing(payment_id=payment.pk)
        with pytest.raises(OperationalError):
            outbox.marks.flush()
        # The first chunk was written; the failed one and the rest wait.
        assert outbox.marks.flush() == 3

    assert [len(ids) for ids in calls] == [2, 2, 2, 1]
    assert all(processing_event(p.pk).notified_at for p in payments)
