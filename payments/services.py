"""Writes: payment creation and the status machine.

Each transition is one conditional UPDATE (``WHERE status = expected``) and
one PaymentEvent in a single transaction. A transition that loses a race
updates no row and so writes nothing; callers get ``None`` back.
"""

from __future__ import annotations

import logging
import time
import uuid
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from payments import tasks
from payments.gateways import GatewayResult, Outcome, get_gateway
from payments.models import GatewayCall, Payment, PaymentEvent, PaymentStatus
from payments.serializers import PaymentOutputSerializer
from realtime import notify

logger = logging.getLogger(__name__)

# Allowed transitions of the status machine; terminal states have none.
TRANSITIONS: dict[str, frozenset[str]] = {
    PaymentStatus.PENDING: frozenset(
        {PaymentStatus.PROCESSING, PaymentStatus.CANCELED}
    ),
    PaymentStatus.PROCESSING: frozenset(
        {PaymentStatus.SUCCEEDED, PaymentStatus.FAILED}
    ),
    PaymentStatus.SUCCEEDED: frozenset(),
    PaymentStatus.FAILED: frozenset(),
    PaymentStatus.CANCELED: frozenset(),
}


class InvalidTransitionError(ValueError):
    """A transition the status machine does not allow (a programming error)."""


def payment_create(
    *,
    amount: int,
    currency: str,
    payment_method: str,
    description: str = "",
    socket_id: str = "",
    user: Any = None,
) -> Payment:
    """Record a pending payment and enqueue its processing, atomically."""
    with transaction.atomic():
        payment = Payment.objects.create(
            amount=amount,
            currency=currency,
            payment_method=payment_method,
            description=description,
            socket_id=socket_id,
            user=user if user is not None and user.is_authenticated else None,
        )
        PaymentEvent.objects.create(
            payment=payment, from_status="", to_status=PaymentStatus.PENDING
        )
        # Same transaction as the row: no payment without its job, no job
        # without its payment.
        tasks.process_payment.enqueue(payment_id=str(payment.id))
    logger.info("payment created id=%s amount=%s %s", payment.id, amount, currency)
    return payment


def _payment_transition(
    *,
    payment_id: uuid.UUID | str,
    from_status: str,
    to_status: str,
    detail: dict[str, Any] | None = None,
    **fields: Any,
) -> Payment | None:
    if to_status not in TRANSITIONS[from_status]:
        raise InvalidTransitionError(f"{from_status} → {to_status} is not allowed")
    with transaction.atomic():
        updated = Payment.objects.filter(pk=payment_id, status=from_status).update(
            status=to_status,
            version=F("version") + 1,
            updated_at=timezone.now(),
            **fields,
        )
        if not updated:
            return None
        payment = Payment.objects.get(pk=payment_id)
        PaymentEvent.objects.create(
            payment=payment,
            from_status=from_status,
            to_status=to_status,
            detail=detail or {},
        )
        transaction.on_commit(lambda: _notify(payment), robust=True)
    logger.info("payment %s %s → %s", payment_id, from_status, to_status)
    return payment


def _notify(payment: Payment) -> None:
    notify.payment_status_changed(
        payment_id=payment.id,
        socket_id=payment.socket_id,
        user_id=payment.user_id,
        data=dict(PaymentOutputSerializer(payment).data),
    )


def payment_start_processing(*, payment_id: uuid.UUID | str) -> Payment | None:
    return _payment_transition(
        payment_id=payment_id,
        from_status=PaymentStatus.PENDING,
        to_status=PaymentStatus.PROCESSING,
    )


def payment_mark_succeeded(
    *, payment_id: uuid.UUID | str, detail: dict[str, Any] | None = None
) -> Payment | None:
    return _payment_transition(
        payment_id=payment_id,
        from_status=PaymentStatus.PROCESSING,
        to_status=PaymentStatus.SUCCEEDED,
        detail=detail,
    )


def payment_mark_failed(
    *,
    payment_id: uuid.UUID | str,
    failure_code: str,
    failure_message: str,
    detail: dict[str, Any] | None = None,
) -> Payment | None:
    return _payment_transition(
        payment_id=payment_id,
        from_status=PaymentStatus.PROCESSING,
        to_status=PaymentStatus.FAILED,
        detail=detail,
        failure_code=failure_code,
        failure_message=failure_message[:255],
    )


def payment_cancel(*, payment_id: uuid.UUID | str) -> Payment | None:
    return _payment_transition(
        payment_id=payment_id,
        from_status=PaymentStatus.PENDING,
        to_status=PaymentStatus.CANCELED,
    )


def payment_process(*, payment_id: uuid.UUID | str) -> None:
    """Move a pending payment to processing and charge it (the worker's job).

    Safe to run again for the same payment: a second run finds it processing
    and charges through the gateway's idempotency on the payment id, or finds
    it terminal and does nothing.
    """
    payment = payment_start_processing(payment_id=payment_id)
    if payment is None:
        payment = Payment.objects.filter(pk=payment_id).first()
        if payment is None or payment.status != PaymentStatus.PROCESSING:
            return
    gateway = get_gateway()
    result = _gateway_call(payment, "charge", lambda: gateway.charge(payment=payment))
    _payment_apply_result(payment, result)


def payment_refresh(*, payment_id: uuid.UUID | str) -> None:
    """Ask the gateway for the outcome of a processing payment and apply it."""
    payment = Payment.objects.filter(pk=payment_id).first()
    if payment is None or payment.status != PaymentStatus.PROCESSING:
        return
    gateway = get_gateway()
    result = _gateway_call(
        payment, "retrieve", lambda: gateway.retrieve(payment=payment)
    )
    _payment_apply_result(payment, result)


def _gateway_call(payment: Payment, operation: str, call: Any) -> GatewayResult:
    """Make one gateway call and record it as a GatewayCall row."""
    started = time.perf_counter()
    result: GatewayResult = call()
    GatewayCall.objects.create(
        payment=payment,
        gateway=get_gateway().name,
        operation=operation,
        outcome=result.outcome,
        response={
            "failure_code": result.failure_code,
            "failure_message": result.failure_message,
            "retry_after": result.retry_after,
            **result.data,
        },
        duration_ms=int((time.perf_counter() - started) * 1000),
    )
    return result


def _payment_apply_result(payment: Payment, result: GatewayResult) -> None:
    if result.outcome == Outcome.SUCCEEDED:
        payment_mark_succeeded(payment_id=payment.id, detail=result.data)
    elif result.outcome == Outcome.FAILED:
        payment_mark_failed(
            payment_id=payment.id,
            failure_code=result.failure_code,
            failure_message=result.failure_message,
            detail=result.data,
        )
    else:
        # Not settled yet: ask again later in a deferred job, so no worker
        # sits waiting for the provider.
        tasks.refresh_payment.using(
            run_after=timezone.now() + timedelta(seconds=result.retry_after)
        ).enqueue(payment_id=str(payment.id))
