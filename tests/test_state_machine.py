"""Services: payment creation, the status machine and processing."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta

import pytest
from django.db import close_old_connections, connection, transaction
from django.utils import timezone
from django_tasks_db.models import DBTaskResult

from ops.request_id import RequestIdFilter, request_id_bound
from payments import services
from payments.gateways import GatewayResult, Outcome
from payments.gateways.answers import (
    MAX_RETRY_AFTER,
    GatewayAnswerRefusedError,
)
from payments.gateways.simulated import SimulatedGateway
from payments.models import (
    GatewayCall,
    Payment,
    PaymentEvent,
    PaymentStatus,
    SimulatedCharge,
)
from payments.payloads import payment_owner_data
from payments.services import TRANSITIONS, InvalidTransitionError
from tests.factories import PaymentFactory
from tests.helpers import at_once

PROCESS_TASK = "payments.tasks.process_payment"
REFRESH_TASK = "payments.tasks.refresh_payment"
GATEWAY_NAME = "payments.gateways.simulated.SimulatedGateway"

ALL_STATUSES = list(PaymentStatus)

ALLOWED = [
    (PaymentStatus.PENDING, PaymentStatus.PROCESSING),
    (PaymentStatus.PENDING, PaymentStatus.CANCELED),
    (PaymentStatus.PROCESSING, PaymentStatus.SUCCEEDED),
    (PaymentStatus.PROCESSING, PaymentStatus.FAILED),
]

FORBIDDEN = [
    (src, dst)
    for src in ALL_STATUSES
    for dst in ALL_STATUSES
    if (src, dst) not in ALLOWED
]


def _call_service(to_status: str, payment_id):
    """Call the public service that moves a payment to ``to_status``."""
    if to_status == PaymentStatus.PROCESSING:
        return services.payment_start_processing(payment_id=payment_id)
    if to_status == PaymentStatus.SUCCEEDED:
        return services.payment_mark_succeeded(
            payment_id=payment_id, detail={"charge": "ch_1"}
        )
    if to_status == PaymentStatus.FAILED:
        return services.payment_mark_failed(
            payment_id=payment_id,
            failure_code="card_declined",
            failure_message="Your card was declined.",
        )
    if to_status == PaymentStatus.CANCELED:
        return services.payment_cancel(payment_id=payment_id)
    raise AssertionError(f"no service moves a payment to {to_status}")


def _snapshot(payment: Payment) -> tuple:
    payment.refresh_from_db()
    return (
        payment.status,
        payment.version,
        payment.updated_at,
        payment.failure_code,
        payment.failure_message,
    )


def _process_tasks(payment: Payment):
    return DBTaskResult.objects.filter(
        task_path=PROCESS_TASK, args_kwargs__kwargs__payment_id=str(payment.id)
    )


# The transition table ------------------------------------------------------


def test_transition_table_is_the_documented_machine():
    allowed = {(src, dst) for src, targets in TRANSITIONS.items() for dst in targets}

    assert allowed == set(ALLOWED)
    assert set(TRANSITIONS) == set(ALL_STATUSES)
    for terminal in (
        PaymentStatus.SUCCEEDED,
        PaymentStatus.FAILED,
        PaymentStatus.CANCELED,
    ):
        assert TRANSITIONS[terminal] == frozenset()


# Allowed transitions -------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(("from_status", "to_status"), ALLOWED)
def test_allowed_transition(from_status, to_status, django_capture_on_commit_callbacks):
    payment = PaymentFactory(status=from_status)
    before = payment.updated_at
    assert payment.version == 1

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        result = _call_service(to_status, payment.id)

    assert isinstance(result, Payment)
    assert result.pk == payment.pk
    assert result.status == to_status
    assert result.version == 2
    payment.refresh_from_db()
    assert payment.status == to_status
    assert payment.version == 2
    assert payment.updated_at >= before
    event = PaymentEvent.objects.get(payment=payment)
    assert event.from_status == from_status
    assert event.to_status == to_status
    assert event.version == 2
    # The push to sockets is scheduled after commit, once per transition.
    assert len(callbacks) == 1


@pytest.mark.django_db
def test_mark_failed_stores_failure_and_detail():
    payment = PaymentFactory(status=PaymentStatus.PROCESSING)

    result = services.payment_mark_failed(
        payment_id=payment.id,
        failure_code="insufficient_funds",
        failure_message="x" * 300,
        detail={"charge": "ch_9"},
    )

    assert result.failure_code == "insufficient_funds"
    assert result.failure_message == "x" * 255
    event = PaymentEvent.objects.get(payment=payment)
    assert event.detail == {"charge": "ch_9"}


class LongDeclineGateway(SimulatedGateway):
    """A provider whose decline message is longer than the payment keeps."""

    def charge(self, *, payment):
        super().charge(payment=payment)
        return GatewayResult(
            Outcome.FAILED, failure_code="card_declined", failure_message="y" * 300
        )


@pytest.mark.django_db
def test_a_batchs_long_failure_message_is_cut_as_a_single_one_is(settings):
    settings.PAYMENTS_GATEWAY = f"{__name__}.LongDeclineGateway"
    payments = [PaymentFactory() for _ in range(2)]

    services.payments_process(payment_ids=[p.id for p in payments])

    assert set(Payment.objects.values_list("failure_message", flat=True)) == {"y" * 255}


@pytest.mark.django_db
def test_mark_succeeded_without_detail_records_empty_detail():
    payment = PaymentFactory(status=PaymentStatus.PROCESSING)

    services.payment_mark_succeeded(payment_id=payment.id)

    assert PaymentEvent.objects.get(payment=payment).detail == {}


@pytest.mark.django_db
def test_full_lifecycle_versions_and_history():
    payment = services.payment_create(
        amount=1000, currency="usd", payment_method="pm_card_visa"
    )

    services.payment_start_processing(payment_id=payment.id)
    services.payment_mark_succeeded(payment_id=payment.id)

    payment.refresh_from_db()
    assert payment.status == PaymentStatus.SUCCEEDED
    assert payment.version == 3
    history = [(e.from_status, e.to_status, e.version) for e in payment.events.all()]
    assert history == [
        ("", PaymentStatus.PENDING, 1),
        (PaymentStatus.PENDING, PaymentStatus.PROCESSING, 2),
        (PaymentStatus.PROCESSING, PaymentStatus.SUCCEEDED, 3),
    ]


# Forbidden transitions -----------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("from_status", "to_status"),
    [(src, dst) for src, dst in FORBIDDEN if dst != PaymentStatus.PENDING],
)
def test_service_in_wrong_state_is_a_no_op(
    from_status, to_status, django_capture_on_commit_callbacks
):
    payment = PaymentFactory(status=from_status)
    before = _snapshot(payment)

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        result = _call_service(to_status, payment.id)

    assert result is None
    assert _snapshot(payment) == before
    assert PaymentEvent.objects.count() == 0
    assert callbacks == []


@pytest.mark.django_db
@pytest.mark.parametrize(("from_status", "to_status"), FORBIDDEN)
def test_transition_outside_table_raises(from_status, to_status):
    payment = PaymentFactory(status=from_status)
    before = _snapshot(payment)

    with pytest.raises(InvalidTransitionError, match="not allowed"):
        services._payment_transition(
            payment_id=payment.id, from_status=from_status, to_status=to_status
        )

    assert _snapshot(payment) == before
    assert PaymentEvent.objects.count() == 0


@pytest.mark.django_db
@pytest.mark.parametrize("outcome", ["succeeded", "failed"])
def test_settling_from_a_held_row_returns_the_row_as_stored(outcome):
    processing = services.payment_start_processing(payment_id=PaymentFactory().pk)
    assert processing is not None

    if outcome == "succeeded":
        settled = services.payment_mark_succeeded(
            payment_id=processing.pk, detail={"charge": "ch_1"}, current=processing
        )
    else:
        settled = services.payment_mark_failed(
            payment_id=processing.pk,
            failure_code="card_declined",
            failure_message="Your card was declined.",
            current=processing,
        )

    assert settled is not None
    stored = Payment.objects.get(pk=processing.pk)
    assert payment_owner_data(settled) == payment_owner_data(stored)
    assert stored.status == outcome
    assert processing.status == PaymentStatus.PROCESSING  # the caller's copy


@pytest.mark.django_db
def test_settling_from_a_stale_held_row_is_a_no_op():
    processing = services.payment_start_processing(payment_id=PaymentFactory().pk)
    assert processing is not None
    stale = Payment.objects.get(pk=processing.pk)
    stale.version -= 1

    assert services.payment_mark_succeeded(payment_id=stale.pk, current=stale) is None
    assert _snapshot(stale)[:2] == (PaymentStatus.PROCESSING, processing.version)


@pytest.mark.django_db
def test_transition_of_unknown_payment_is_a_no_op():
    assert services.payment_start_processing(payment_id=uuid.uuid4()) is None
    assert PaymentEvent.objects.count() == 0


# Lost races ----------------------------------------------------------------


@pytest.mark.django_db
def test_second_start_processing_loses():
    payment = PaymentFactory()

    first = services.payment_start_processing(payment_id=payment.id)
    second = services.payment_start_processing(payment_id=payment.id)

    assert first is not None
    assert second is None
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.PROCESSING
    assert payment.version == 2
    assert PaymentEvent.objects.filter(payment=payment).count() == 1


@pytest.mark.django_db
def test_cancel_after_processing_started_loses():
    payment = PaymentFactory()
    services.payment_start_processing(payment_id=payment.id)

    assert services.payment_cancel(payment_id=payment.id) is None

    payment.refresh_from_db()
    assert payment.status == PaymentStatus.PROCESSING
    assert PaymentEvent.objects.filter(payment=payment).count() == 1


@pytest.mark.django_db
def test_failed_after_succeeded_loses():
    payment = PaymentFactory(status=PaymentStatus.PROCESSING)
    services.payment_mark_succeeded(payment_id=payment.id)

    lost = services.payment_mark_failed(
        payment_id=payment.id, failure_code="card_declined", failure_message="no"
    )

    assert lost is None
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.SUCCEEDED
    assert payment.failure_code == ""
    assert payment.version == 2


@pytest.mark.django_db(transaction=True)
def test_concurrent_start_processing_has_one_winner():
    payment = PaymentFactory()
    workers = 4

    results = at_once(
        lambda: services.payment_start_processing(payment_id=payment.id), workers
    )

    assert len(results) == workers
    assert sum(r is not None for r in results) == 1
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.PROCESSING
    assert payment.version == 2
    assert PaymentEvent.objects.filter(payment=payment).count() == 1


# payment_create ------------------------------------------------------------


@pytest.mark.django_db
def test_create_writes_payment_event_and_job():
    payment = services.payment_create(
        amount=1234,
        currency="eur",
        payment_method="pm_card_mastercard",
        description="Order 7",
        socket_id="s" * 32,
    )

    stored = Payment.objects.get()
    assert stored.pk == payment.pk
    assert stored.status == PaymentStatus.PENDING
    assert stored.version == 1
    assert (stored.amount, stored.currency) == (1234, "eur")
    assert stored.payment_method == "pm_card_mastercard"
    assert stored.description == "Order 7"
    assert stored.socket_id == "s" * 32
    assert stored.user is None
    assert len(stored.client_secret) >= 40
    event = PaymentEvent.objects.get()
    assert event.payment_id == payment.pk
    assert (event.from_status, event.to_status) == ("", PaymentStatus.PENDING)
    assert event.version == 1
    job = DBTaskResult.objects.get()
    assert job.task_path == PROCESS_TASK
    assert job.args_kwargs == {"args": [], "kwargs": {"payment_id": str(payment.id)}}


@pytest.mark.django_db
def test_create_gives_each_payment_its_own_secret():
    first = services.payment_create(
        amount=1, currency="usd", payment_method="pm_card_visa"
    )
    second = services.payment_create(
        amount=1, currency="usd", payment_method="pm_card_visa"
    )

    assert first.client_secret != second.client_secret
    assert _process_tasks(first).count() == 1
    assert _process_tasks(second).count() == 1


@pytest.mark.django_db
def test_create_keeps_authenticated_user(django_user_model):
    user = django_user_model.objects.create_user(username="ann", password="pw")

    payment = services.payment_create(
        amount=1000, currency="usd", payment_method="pm_card_visa", user=user
    )

    assert Payment.objects.get(pk=payment.pk).user == user


@pytest.mark.django_db
def test_create_rolled_back_with_surrounding_transaction():
    class BoomError(Exception):
        pass

    with pytest.raises(BoomError), transaction.atomic():
        services.payment_create(
            amount=1000, currency="usd", payment_method="pm_card_visa"
        )
        assert Payment.objects.count() == 1
        assert DBTaskResult.objects.count() == 1
        raise BoomError

    assert Payment.objects.count() == 0
    assert PaymentEvent.objects.count() == 0
    assert DBTaskResult.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_create_writes_nothing_when_enqueue_fails(monkeypatch):
    class BrokenTask:
        def enqueue(self, **kwargs):
            raise RuntimeError("queue unavailable")

    monkeypatch.setattr(services.tasks, "process_payment", BrokenTask())

    with pytest.raises(RuntimeError, match="queue unavailable"):
        services.payment_create(
            amount=1000, currency="usd", payment_method="pm_card_visa"
        )

    assert Payment.objects.count() == 0
    assert PaymentEvent.objects.count() == 0
    assert DBTaskResult.objects.count() == 0


# payment_process, the settle sweep, payment_refresh --------------------


@pytest.mark.django_db
def test_process_succeeds_for_visa(settings, django_capture_on_commit_callbacks):
    assert settings.PAYMENTS_SIMULATED_DELAY == 0
    payment = PaymentFactory(payment_method="pm_card_visa")

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        services.payment_process(payment_id=payment.id)

    payment.refresh_from_db()
    assert payment.status == PaymentStatus.SUCCEEDED
    assert payment.version == 3
    assert payment.failure_code == ""
    assert [(e.from_status, e.to_status) for e in payment.events.all()] == [
        (PaymentStatus.PENDING, PaymentStatus.PROCESSING),
        (PaymentStatus.PROCESSING, PaymentStatus.SUCCEEDED),
    ]
    assert len(callbacks) == 2
    call = GatewayCall.objects.get(payment=payment)
    assert call.operation == "charge"
    assert call.outcome == "succeeded"
    assert call.gateway == GATEWAY_NAME
    assert call.response["charge"] == str(payment.id)
    assert SimulatedCharge.objects.filter(payment_id=payment.id).count() == 1
    assert not DBTaskResult.objects.filter(task_path=REFRESH_TASK).exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("method", "code"),
    [
        ("pm_card_chargeDeclined", "card_declined"),
        ("pm_card_chargeDeclinedInsufficientFunds", "insufficient_funds"),
        ("pm_card_chargeDeclinedExpiredCard", "expired_card"),
    ],
)
def test_process_fails_for_declining_methods(method, code):
    payment = PaymentFactory(payment_method=method)

    services.payment_process(payment_id=payment.id)

    payment.refresh_from_db()
    assert payment.status == PaymentStatus.FAILED
    assert payment.failure_code == code
    assert payment.failure_message
    assert payment.version == 3
    event = payment.events.last()
    assert (event.from_status, event.to_status) == (
        PaymentStatus.PROCESSING,
        PaymentStatus.FAILED,
    )
    call = GatewayCall.objects.get(payment=payment)
    assert (call.operation, call.outcome) == ("charge", "failed")
    assert call.response["failure_code"] == code


@pytest.mark.django_db
def test_process_twice_charges_once():
    payment = PaymentFactory()

    services.payment_process(payment_id=payment.id)
    payment.refresh_from_db()
    version = payment.version
    services.payment_process(payment_id=payment.id)

    payment.refresh_from_db()
    assert payment.status == PaymentStatus.SUCCEEDED
    assert payment.version == version == 3
    assert SimulatedCharge.objects.count() == 1
    assert GatewayCall.objects.filter(payment=payment).count() == 1
    assert PaymentEvent.objects.filter(payment=payment).count() == 2


@pytest.mark.django_db
def test_process_rerun_after_crash_in_processing_charges_once():
    """A worker died after charging: the rerun finds the first charge."""
    payment = PaymentFactory()
    services.payment_start_processing(payment_id=payment.id)
    services.get_gateway().charge(payment=payment)

    services.payment_process(payment_id=payment.id)

    payment.refresh_from_db()
    assert payment.status == PaymentStatus.SUCCEEDED
    assert SimulatedCharge.objects.count() == 1
    assert PaymentEvent.objects.filter(payment=payment).count() == 2


@pytest.mark.django_db
@pytest.mark.parametrize(
    "status",
    [PaymentStatus.SUCCEEDED, PaymentStatus.FAILED, PaymentStatus.CANCELED],
)
def test_process_of_terminal_payment_does_nothing(status):
    payment = PaymentFactory(status=status)

    services.payment_process(payment_id=payment.id)

    payment.refresh_from_db()
    assert payment.status == status
    assert payment.version == 1
    assert SimulatedCharge.objects.count() == 0
    assert GatewayCall.objects.count() == 0
    assert PaymentEvent.objects.count() == 0


@pytest.mark.django_db
def test_process_of_missing_payment_does_nothing():
    services.payment_process(payment_id=uuid.uuid4())

    assert SimulatedCharge.objects.count() == 0
    assert GatewayCall.objects.count() == 0


def settled_by_now(*payments) -> None:
    """Make the simulated charges and the sweep's times of ``payments`` due."""
    past = timezone.now() - timedelta(seconds=1)
    ids = [p.id for p in payments]
    SimulatedCharge.objects.filter(payment_id__in=ids).update(settles_at=past)
    Payment.objects.filter(pk__in=ids).update(settle_at=past)


@pytest.mark.django_db
def test_process_with_delay_leaves_the_outcome_to_the_settle_sweep(settings):
    settings.PAYMENTS_SIMULATED_DELAY = 5
    payment = PaymentFactory(payment_method="pm_card_visa")

    started = timezone.now()
    services.payment_process(payment_id=payment.id)
    finished = timezone.now()

    payment.refresh_from_db()
    assert payment.status == PaymentStatus.PROCESSING
    assert payment.version == 2
    # No job per payment for the later look: the sweep's time is on the row.
    assert not DBTaskResult.objects.filter(task_path=REFRESH_TASK).exists()
    assert started + timedelta(seconds=4) <= payment.settle_at
    assert (
        payment.settle_at
        <= finished + timedelta(seconds=5) + services.SETTLE_AT_GRANULARITY
    )
    charge = SimulatedCharge.objects.get(payment_id=payment.id)
    assert abs((payment.settle_at - charge.settles_at).total_seconds()) < 1
    # Recovery looks only after the outcome was due and then some.
    assert payment.recheck_at > payment.settle_at
    call = GatewayCall.objects.get(payment=payment)
    assert (call.operation, call.outcome) == ("charge", "pending")
    assert 4 < call.response["retry_after"] <= 5

    # Not due yet: the sweep takes nothing.
    assert services.payments_settle_due() == 0

    # Due, but the gateway has no outcome yet: asked again later.
    Payment.objects.filter(pk=payment.id).update(
        settle_at=timezone.now() - timedelta(seconds=1)
    )
    assert services.payments_settle_due() == 1
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.PROCESSING
    assert payment.settle_at > timezone.now()

    settled_by_now(payment)
    assert services.payments_settle_due() == 1

    payment.refresh_from_db()
    assert payment.status == PaymentStatus.SUCCEEDED
    assert payment.version == 3
    assert payment.settle_at is None
    assert SimulatedCharge.objects.count() == 1
    calls = list(
        GatewayCall.objects.filter(payment=payment).values_list("operation", "outcome")
    )
    assert calls == [
        ("charge", "pending"),
        ("retrieve", "pending"),
        ("retrieve", "succeeded"),
    ]
    assert DBTaskResult.objects.count() == 0
    assert services.payments_settle_due() == 0


@pytest.mark.django_db
def test_settle_sweep_applies_failure(settings):
    settings.PAYMENTS_SIMULATED_DELAY = 5
    payment = PaymentFactory(payment_method="pm_card_chargeDeclinedExpiredCard")
    services.payment_process(payment_id=payment.id)
    settled_by_now(payment)

    assert services.payments_settle_due() == 1

    payment.refresh_from_db()
    assert payment.status == PaymentStatus.FAILED
    assert payment.failure_code == "expired_card"


@pytest.mark.django_db
def test_settle_sweep_takes_a_batch_and_commits_it_once(
    settings, django_capture_on_commit_callbacks
):
    settings.PAYMENTS_SIMULATED_DELAY = 5
    methods = ["pm_card_visa", "pm_card_chargeDeclined"] * 3
    payments = [PaymentFactory(payment_method=m) for m in methods]
    for payment in payments:
        services.payment_process(payment_id=payment.id)
    settled_by_now(*payments)

    with django_capture_on_commit_callbacks(execute=True) as pushes:
        assert services.payments_settle_due(limit=4) == 4
    assert len(pushes) == 4
    assert services.payments_settle_due(limit=4) == 2

    statuses = sorted(Payment.objects.values_list("status", flat=True))
    assert statuses == ["failed"] * 3 + ["succeeded"] * 3
    assert (
        PaymentEvent.objects.filter(to_status__in=["succeeded", "failed"]).count() == 6
    )
    assert GatewayCall.objects.filter(operation="retrieve").count() == 6


@pytest.mark.django_db
def test_settle_sweep_told_to_stop_leaves_the_rest_due_for_the_next(settings):
    """A worker's SIGTERM mid-sweep: the retrieve in hand is applied, no other."""
    settings.PAYMENTS_SIMULATED_DELAY = 5
    payments = [PaymentFactory(payment_method="pm_card_visa") for _ in range(3)]
    for payment in payments:
        services.payment_process(payment_id=payment.id)
    settled_by_now(*payments)
    looks = []

    def stopping() -> bool:
        looks.append(None)
        return len(looks) > 1  # the signal came during the first retrieve

    assert services.payments_settle_due(stopping=stopping) == 1

    assert len(looks) == 2
    assert GatewayCall.objects.filter(operation="retrieve").count() == 1
    assert sorted(Payment.objects.values_list("status", flat=True)) == [
        "processing",
        "processing",
        "succeeded",
    ]
    left = Payment.objects.filter(status=PaymentStatus.PROCESSING)
    now = timezone.now()
    assert all(p.settle_at <= now < p.recheck_at for p in left)
    assert services.payments_settle_due() == 2
    assert set(Payment.objects.values_list("status", flat=True)) == {"succeeded"}
    assert GatewayCall.objects.filter(operation="retrieve").count() == 3


@pytest.mark.django_db
def test_settle_sweep_skips_a_payment_the_gateway_cannot_answer_for(settings):
    """Its claim is cleared and recovery retries it; the rest settle."""
    settings.PAYMENTS_SIMULATED_DELAY = 5
    unanswered, answered = PaymentFactory(), PaymentFactory()
    for payment in (unanswered, answered):
        services.payment_process(payment_id=payment.id)
    settled_by_now(unanswered, answered)
    SimulatedCharge.objects.filter(payment_id=unanswered.id).delete()

    assert services.payments_settle_due() == 2

    unanswered.refresh_from_db()
    answered.refresh_from_db()
    assert (unanswered.status, unanswered.settle_at) == (PaymentStatus.PROCESSING, None)
    # The claim moved the deadline on: recovery takes it only after a while.
    assert unanswered.recheck_at > timezone.now() + timedelta(
        seconds=settings.PAYMENTS_STUCK_AFTER - 5
    )
    assert answered.status == PaymentStatus.SUCCEEDED
    # The call that raised is recorded all the same, deciding nothing.
    [call] = GatewayCall.objects.filter(payment=unanswered, operation="retrieve")
    assert call.outcome == "error"
    assert call.response == {
        "error": "GatewayError",
        "message": f"no charge was made for payment {unanswered.id}",
    }


class RetrieveRaisesGateway(SimulatedGateway):
    """A provider whose client library raises its own error, not GatewayError."""

    def retrieve(self, *, payment):
        if payment.payment_method == "pm_card_mastercard":
            # What no jsonb takes, as a provider's message may hold.
            raise ConnectionError("provider\x00 unreachable \ud800")
        return super().retrieve(payment=payment)


@pytest.mark.django_db
def test_settle_sweep_survives_any_error_of_one_payments_retrieve(settings):
    settings.PAYMENTS_SIMULATED_DELAY = 5
    settings.PAYMENTS_GATEWAY = f"{__name__}.RetrieveRaisesGateway"
    failing = PaymentFactory(payment_method="pm_card_mastercard")
    fine = PaymentFactory(payment_method="pm_card_visa")
    for payment in (failing, fine):
        services.payment_process(payment_id=payment.id)
    settled_by_now(failing, fine)

    assert services.payments_settle_due() == 2

    failing.refresh_from_db()
    fine.refresh_from_db()
    assert (failing.status, failing.settle_at) == (PaymentStatus.PROCESSING, None)
    assert fine.status == PaymentStatus.SUCCEEDED
    assert set(
        GatewayCall.objects.filter(operation="retrieve").values_list(
            "payment_id", "outcome"
        )
    ) == {(failing.id, "error"), (fine.id, "succeeded")}
    error = GatewayCall.objects.get(payment=failing, outcome="error").response
    assert error == {
        "error": "ConnectionError",
        "message": "provider unreachable \\ud800",
    }


# What a provider answers for a payment, by its payment method; pm_card_visa
# is charged as the simulated gateway does, in the same batch.
HOSTILE_ANSWERS = {}


class HostileAnswerGateway(SimulatedGateway):
    """A provider whose answers hold what no column or jsonb takes as they are."""

    def charge(self, *, payment):
        if payment.payment_method in HOSTILE_ANSWERS:
            return HOSTILE_ANSWERS[payment.payment_method]
        return super().charge(payment=payment)


def charge_batch_with(settings, monkeypatch, answer):
    """Charge a payment answered ``answer`` and a plain one in one batch."""
    settings.PAYMENTS_GATEWAY = f"{__name__}.HostileAnswerGateway"
    monkeypatch.setitem(HOSTILE_ANSWERS, "pm_card_mastercard", answer)
    hostile = PaymentFactory(payment_method="pm_card_mastercard")
    plain = PaymentFactory(payment_method="pm_card_visa")
    answers = services.payments_process(payment_ids=[hostile.id, plain.id])
    hostile.refresh_from_db()
    plain.refresh_from_db()
    # One answer's values never take the batch's commit down with them.
    assert plain.status == PaymentStatus.SUCCEEDED
    return hostile, answers


@pytest.mark.django_db
def test_an_answers_texts_are_cleaned_and_cut_before_they_are_stored(
    settings, monkeypatch
):
    answer = GatewayResult(
        Outcome.FAILED,
        failure_code="card\x00_declined\ud800" + "x" * 100,
        failure_message="declined\x00 \udfff" + "y" * 300,
        data={"charge\x00": ["ch\x00_1", {"note": "\ud800"}], "n": 1.5},
    )
    hostile, answers = charge_batch_with(settings, monkeypatch, answer)

    assert answers.errors == {}
    assert hostile.status == PaymentStatus.FAILED
    assert hostile.failure_code == ("card_declined\\ud800" + "x" * 100)[:64]
    assert hostile.failure_message == ("declined \\udfff" + "y" * 300)[:255]
    [call] = GatewayCall.objects.filter(payment=hostile)
    assert call.outcome == "failed"
    assert call.response == {
        "failure_code": hostile.failure_code,
        "failure_message": hostile.failure_message,
        "retry_after": 0.0,
        "charge": ["ch_1", {"note": "\\ud800"}],
        "n": 1.5,
    }
    event = PaymentEvent.objects.get(payment=hostile, to_status=PaymentStatus.FAILED)
    assert event.detail == {"charge": ["ch_1", {"note": "\\ud800"}], "n": 1.5}


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        pytest.param(None, "answer: NoneType, not a GatewayResult", id="none"),
        pytest.param(
            GatewayResult("maybe"), "outcome: unknown ('maybe')", id="unknown-outcome"
        ),
        pytest.param(
            GatewayResult(Outcome.PENDING, retry_after=float("nan")),
            "retry_after: not a number (nan)",
            id="retry-after-nan",
        ),
        pytest.param(
            GatewayResult(Outcome.PENDING, retry_after="5"),
            "retry_after: not a number ('5')",
            id="retry-after-text",
        ),
    ],
)
@pytest.mark.django_db
def test_an_answer_with_no_outcome_to_act_on_is_refused(
    settings, monkeypatch, answer, message
):
    """Recorded as an error call and left processing, for recovery to ask again."""
    hostile, answers = charge_batch_with(settings, monkeypatch, answer)

    assert hostile.status == PaymentStatus.PROCESSING
    assert isinstance(answers.errors[str(hostile.id)], GatewayAnswerRefusedError)
    [call] = GatewayCall.objects.filter(payment=hostile)
    assert (call.outcome, call.response) == (
        "error",
        {"error": "GatewayAnswerRefusedError", "message": message},
    )


def nested(depth: int) -> dict:
    data: dict = {}
    for _ in range(depth):
        data = {"d": data}
    return data


@pytest.mark.parametrize(
    ("data", "kept"),
    [
        pytest.param(["ch_1"], "['ch_1']", id="list"),
        pytest.param({"amount": float("inf")}, "{'amount': inf}", id="inf"),
        pytest.param({"at": {1, 2}}, "{'at': {1, 2}}", id="set"),
        pytest.param({1: "one"}, "{1: 'one'}", id="int-key"),
        pytest.param({"n": 10**5000}, "<dict>", id="5000-digit-int"),
        pytest.param(
            nested(100), "{'d': {'d': {'d': {'d': {'d': {'d': {...}}}}}}}", id="nested"
        ),
    ],
)
@pytest.mark.django_db
def test_a_settled_answers_unstorable_data_is_kept_as_its_repr(
    settings, monkeypatch, data, kept
):
    """The outcome stands: the provider would answer the same on every retry."""
    answer = GatewayResult(
        Outcome.SUCCEEDED, failure_code=None, retry_after=None, data=data
    )
    hostile, answers = charge_batch_with(settings, monkeypatch, answer)

    assert answers.errors == {}
    assert hostile.status == PaymentStatus.SUCCEEDED
    [call] = GatewayCall.objects.filter(payment=hostile)
    assert call.response == {
        "unstorable_data": kept,
        "failure_code": "",
        "failure_message": "",
        "retry_after": 0.0,
    }
    event = PaymentEvent.objects.get(payment=hostile, to_status=PaymentStatus.SUCCEEDED)
    assert event.detail == {"unstorable_data": kept}


@pytest.mark.django_db
def test_an_answers_data_cannot_overwrite_its_recorded_fields(settings, monkeypatch):
    answer = GatewayResult(
        Outcome.FAILED,
        failure_code="card_declined",
        data={"failure_code": "forged", "retry_after": 99},
    )
    hostile, _ = charge_batch_with(settings, monkeypatch, answer)

    response = GatewayCall.objects.get(payment=hostile).response
    assert (response["failure_code"], response["retry_after"]) == ("card_declined", 0.0)


@pytest.mark.parametrize("retry_after", [1e300, float("inf"), -5])
@pytest.mark.django_db
def test_a_pending_answers_wait_is_bounded(settings, monkeypatch, retry_after):
    before = timezone.now()
    hostile, answers = charge_batch_with(
        settings, monkeypatch, GatewayResult(Outcome.PENDING, retry_after=retry_after)
    )

    assert answers.errors == {}
    assert hostile.status == PaymentStatus.PROCESSING
    wait = min(max(retry_after, 0), MAX_RETRY_AFTER)
    assert before + timedelta(seconds=wait) <= hostile.settle_at
    assert hostile.settle_at <= timezone.now() + timedelta(seconds=wait + 1)
    assert GatewayCall.objects.get(payment=hostile).response["retry_after"] == wait


@pytest.mark.django_db
def test_batch_worker_settles_everything_due(settings):
    """db_worker --batch has django-tasks-db's loop, no sweep: it settles first."""
    from payments.management.commands.db_worker import settle_all_due

    settings.PAYMENTS_SIMULATED_DELAY = 5
    payments = [PaymentFactory() for _ in range(5)]
    for payment in payments:
        services.payment_process(payment_id=payment.id)
    settled_by_now(*payments)

    settle_all_due(batch=2)

    assert set(Payment.objects.values_list("status", flat=True)) == {"succeeded"}


@pytest.mark.django_db
def test_settle_sweep_leaves_payments_no_longer_processing(settings):
    settings.PAYMENTS_SIMULATED_DELAY = 5
    payment = PaymentFactory()
    services.payment_process(payment_id=payment.id)
    settled_by_now(payment)
    Payment.objects.filter(pk=payment.id).update(status=PaymentStatus.SUCCEEDED)

    assert services.payments_settle_due() == 0
    assert not GatewayCall.objects.filter(operation="retrieve").exists()


@pytest.mark.django_db(transaction=True)
def test_settle_sweeps_together_take_different_payments(settings):
    """A payment another sweep holds is skipped, not waited for nor taken twice."""
    if connection.vendor != "postgresql":
        pytest.skip("SKIP LOCKED: SQLite runs one write transaction at a time")
    settings.PAYMENTS_SIMULATED_DELAY = 5
    held, free = PaymentFactory(), PaymentFactory()
    for payment in (held, free):
        services.payment_process(payment_id=payment.id)
    settled_by_now(held, free)
    locked, release = threading.Event(), threading.Event()

    def other_sweep() -> None:
        try:
            with transaction.atomic():
                Payment.objects.select_for_update().get(pk=held.pk)
                locked.set()
                release.wait(10)
        finally:
            close_old_connections()

    thread = threading.Thread(target=other_sweep)
    thread.start()
    try:
        assert locked.wait(10)
        assert services.payments_settle_due() == 1
    finally:
        release.set()
        thread.join(10)

    held.refresh_from_db()
    free.refresh_from_db()
    assert held.status == PaymentStatus.PROCESSING
    assert held.settle_at is not None
    assert free.status == PaymentStatus.SUCCEEDED


@pytest.mark.django_db
@pytest.mark.parametrize(
    "status",
    [
        PaymentStatus.PENDING,
        PaymentStatus.SUCCEEDED,
        PaymentStatus.FAILED,
        PaymentStatus.CANCELED,
    ],
)
def test_refresh_of_payment_not_processing_does_nothing(status):
    payment = PaymentFactory(status=status)

    services.payment_refresh(payment_id=payment.id)

    payment.refresh_from_db()
    assert payment.status == status
    assert payment.version == 1
    assert GatewayCall.objects.count() == 0
    assert DBTaskResult.objects.count() == 0


@pytest.mark.django_db
def test_the_settle_sweep_logs_each_outcome_with_its_payments_request_id(
    settings, caplog
):
    settings.PAYMENTS_SIMULATED_DELAY = 5
    payments = []
    for request_id in ("req-one", "req-two"):
        with request_id_bound(request_id):
            payments.append(
                services.payment_create(
                    amount=1000, currency="usd", payment_method="pm_card_visa"
                )
            )
    for payment in payments:
        services.payment_process(payment_id=payment.id)
    settled_by_now(*payments)
    caplog.handler.addFilter(RequestIdFilter())

    with caplog.at_level("INFO", logger="payments.services"):
        assert services.payments_settle_due() == 2

    settled = {
        record.getMessage(): record.request_id
        for record in caplog.records
        if "→ succeeded" in record.getMessage()
    }
    assert settled == {
        f"payment {payments[0].id} processing → succeeded": "req-one",
        f"payment {payments[1].id} processing → succeeded": "req-two",
    }
