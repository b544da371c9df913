"""payments.outbox: the worker marks pushed changes in batches, losing none."""

from __future__ import annotations

import pytest

from payments import outbox, services
from payments.models import PaymentEvent, PaymentStatus
from tests.factories import PaymentFactory

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
    with outbox.marks_batched(interval=3600):
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

    with outbox.marks_batched(interval=3600):
        services.payment_start_processing(payment_id=payment.pk)
        assert processing_event(payment.pk).notified_at is None

        assert services.payment_events_redeliver() == 0

    assert processing_event(payment.pk).notified_at is not None
