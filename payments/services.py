"""Writes: payment creation and the status machine.

Each transition is one conditional UPDATE (``WHERE status = expected``) and
one PaymentEvent in a single transaction. A transition that loses a race
updates no row and so writes nothing; callers get ``None`` back.
"""

from __future__ import annotations

import copy
import logging
import time
import uuid
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from ops import metrics
from ops.request_id import current_request_id
from payments import outbox, tasks
from payments.gateways import GatewayResult, Outcome, get_gateway
from payments.models import (
    TERMINAL_STATUSES,
    GatewayCall,
    Payment,
    PaymentEvent,
    PaymentStatus,
)
from payments.payloads import payment_public_data
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


def _traced() -> dict[str, str]:
    """A job's ``request_id`` argument: the current request's, if any."""
    request_id = current_request_id()
    return {"request_id": request_id} if request_id else {}


def stuck_deadline(after: float = 0.0) -> datetime:
    """When a payment still open is taken for stuck (recovery looks again)."""
    return timezone.now() + timedelta(seconds=after + settings.PAYMENTS_STUCK_AFTER)


def payment_create(
    *,
    amount: int,
    currency: str,
    payment_method: str,
    description: str = "",
    socket_id: str = "",
    user: Any = None,
) -> Payment:
    """Record a pending payment and enqueue its processing, atomically.

    Inside a caller's transaction (the idempotency key's) it takes no
    savepoint: an error here is raised on and rolls the whole of that
    transaction back, so there is nothing to roll back to.
    """
    with transaction.atomic(savepoint=False):
        payment = Payment.objects.create(
            amount=amount,
            currency=currency,
            payment_method=payment_method,
            description=description,
            socket_id=socket_id,
            user=user if user is not None and user.is_authenticated else None,
            recheck_at=stuck_deadline(),
        )
        # Creation is not pushed (the response carries it): born notified.
        PaymentEvent.objects.create(
            payment=payment,
            from_status="",
            to_status=PaymentStatus.PENDING,
            version=payment.version,
            notified_at=payment.created_at,
        )
        # Same transaction as the row: no payment without its job, no job
        # without its payment.
        tasks.process_payment.enqueue(payment_id=str(payment.id), **_traced())
    metrics.PAYMENTS_CREATED.inc()
    logger.info("payment created id=%s amount=%s %s", payment.id, amount, currency)
    return payment


def _payment_transition(
    *,
    payment_id: uuid.UUID | str,
    from_status: str,
    to_status: str,
    detail: dict[str, Any] | None = None,
    current: Payment | None = None,
    **fields: Any,
) -> Payment | None:
    if to_status not in TRANSITIONS[from_status]:
        raise InvalidTransitionError(f"{from_status} → {to_status} is not allowed")
    now = timezone.now()
    # No savepoint when nested (a gateway call's record around it): a lost
    # race returns without raising, so there is nothing to roll back to.
    with transaction.atomic(savepoint=False):
        rows = Payment.objects.filter(pk=payment_id, status=from_status)
        if current is not None:
            # The caller's copy is the row if its version still is: then the
            # updated row is known without reading it back.
            rows = rows.filter(version=current.version)
        updated = rows.update(
            status=to_status, version=F("version") + 1, updated_at=now, **fields
        )
        if not updated:
            return None
        # Since when the payment was in from_status, when that is known
        # without a query: the caller's copy, or pending's one start.
        entered_at = current.updated_at if current is not None else None
        if current is not None:
            payment = copy.copy(current)
            payment.status, payment.version, payment.updated_at = (
                to_status,
                current.version + 1,
                now,
            )
            for name, value in fields.items():
                setattr(payment, name, value)
        else:
            payment = Payment.objects.get(pk=payment_id)
            if from_status == PaymentStatus.PENDING:
                entered_at = payment.created_at
        event = PaymentEvent.objects.create(
            payment=payment,
            from_status=from_status,
            to_status=to_status,
            version=payment.version,
            detail=detail or {},
        )
        transaction.on_commit(
            lambda: _committed(payment, event.pk, from_status, entered_at, now),
            robust=True,
        )
    logger.info("payment %s %s → %s", payment_id, from_status, to_status)
    return payment


def _committed(
    payment: Payment,
    event_id: int,
    from_status: str,
    entered_at: datetime | None,
    now: datetime,
) -> None:
    # Counted before the push: once a client sees it, the figures have moved.
    try:
        metrics.observe_transition(
            from_status=from_status,
            to_status=payment.status,
            terminal=payment.status in TERMINAL_STATUSES,
            now=now,
            created_at=payment.created_at,
            entered_at=entered_at,
        )
    except Exception:
        # A figure is not worth a push waiting for redelivery.
        logger.exception("transition metrics failed payment=%s", payment.id)
    payment_notify(payment=payment, event_ids=[event_id])


def payment_notify(*, payment: Payment, event_ids: list[int]) -> bool:
    """Push the payment's state; mark the events it covers as notified.

    The marks are written at once, or in db_worker in batches (outbox).
    """
    sent = notify.payment_status_changed(
        payment_id=payment.id,
        socket_id=payment.socket_id,
        user_id=payment.user_id,
        data=payment_public_data(payment),
    )
    if sent:
        outbox.marks.add(event_ids)
    return sent


def payment_start_processing(*, payment_id: uuid.UUID | str) -> Payment | None:
    return _payment_transition(
        payment_id=payment_id,
        from_status=PaymentStatus.PENDING,
        to_status=PaymentStatus.PROCESSING,
        recheck_at=stuck_deadline(),
    )


def payment_mark_succeeded(
    *,
    payment_id: uuid.UUID | str,
    detail: dict[str, Any] | None = None,
    current: Payment | None = None,
) -> Payment | None:
    """Settle a processing payment as succeeded; ``current``: its row, if held."""
    return _payment_transition(
        payment_id=payment_id,
        from_status=PaymentStatus.PROCESSING,
        to_status=PaymentStatus.SUCCEEDED,
        detail=detail,
        current=current,
    )


def payment_mark_failed(
    *,
    payment_id: uuid.UUID | str,
    failure_code: str,
    failure_message: str,
    detail: dict[str, Any] | None = None,
    current: Payment | None = None,
) -> Payment | None:
    """Settle a processing payment as failed; ``current``: its row, if held."""
    return _payment_transition(
        payment_id=payment_id,
        from_status=PaymentStatus.PROCESSING,
        to_status=PaymentStatus.FAILED,
        detail=detail,
        current=current,
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
        payment = _processing_payment(payment_id)
    if payment is not None:
        _payment_ask_gateway(payment, "charge")


def payment_refresh(*, payment_id: uuid.UUID | str) -> None:
    """Ask the gateway for the outcome of a processing payment and apply it."""
    payment = _processing_payment(payment_id)
    if payment is not None:
        _payment_ask_gateway(payment, "retrieve")


def _processing_payment(payment_id: uuid.UUID | str) -> Payment | None:
    return Payment.objects.filter(
        pk=payment_id, status=PaymentStatus.PROCESSING
    ).first()


def _payment_ask_gateway(payment: Payment, operation: str) -> None:
    """Call the gateway's ``charge`` or ``retrieve`` and apply the outcome."""
    method = getattr(get_gateway(), operation)
    result, call = _gateway_call(payment, operation, lambda: method(payment=payment))
    _payment_apply_result(payment, result, call)


def _gateway_call(
    payment: Payment, operation: str, call: Any
) -> tuple[GatewayResult, GatewayCall]:
    """Make one gateway call; return its result and its (unsaved) record."""
    started = time.perf_counter()
    result: GatewayResult = call()
    record = GatewayCall(
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
    return result, record


def _payment_apply_result(
    payment: Payment, result: GatewayResult, call: GatewayCall
) -> None:
    # The call's record commits with what it decided: one write transaction
    # fewer per gateway call.
    # A job that dies before the commit repeats the call, which is
    # idempotent, and records it then.
    with transaction.atomic():
        call.save()
        _payment_apply_outcome(payment, result)


def _payment_apply_outcome(payment: Payment, result: GatewayResult) -> None:
    """Settle the payment as the gateway says, or set when to ask again."""
    if result.outcome == Outcome.SUCCEEDED:
        payment_mark_succeeded(
            payment_id=payment.id, detail=result.data, current=payment
        )
    elif result.outcome == Outcome.FAILED:
        payment_mark_failed(
            payment_id=payment.id,
            failure_code=result.failure_code,
            failure_message=result.failure_message,
            detail=result.data,
            current=payment,
        )
    else:
        # Not settled yet: the worker's settle sweep asks again when it is
        # due, so no worker sits waiting for the provider.
        Payment.objects.filter(pk=payment.id, status=PaymentStatus.PROCESSING).update(
            settle_at=timezone.now() + timedelta(seconds=result.retry_after),
            recheck_at=stuck_deadline(result.retry_after),
        )


def payments_settle_due(*, limit: int = 100) -> int:
    """Ask the gateway again for processing payments whose outcome is due.

    Return how many were asked. This is the worker's settle sweep: one
    transaction claims up to ``limit`` payments whose ``settle_at`` has come
    (``SKIP LOCKED`` on PostgreSQL, so workers sweeping together take
    different ones; SQLite's one writer serialises them; a claim clears
    ``settle_at`` and moves ``recheck_at`` on), the gateway is asked for each, and one
    transaction records every answer and applies the outcomes: the same
    conditional transitions and events as a job, a commit for the batch
    instead of a job (claim, run, result) per payment. A sweep that dies after
    its claim leaves the payments to recovery at their ``recheck_at``, which
    charges again through the gateway's idempotency.
    """
    now = timezone.now()
    due_now = Payment.objects.filter(
        status=PaymentStatus.PROCESSING, settle_at__lte=now
    )
    # A look without a transaction first: most looks find nothing, and on
    # SQLite (IMMEDIATE transactions) an empty claim would still take the
    # write lock.
    if not due_now.exists():
        return 0
    with transaction.atomic():
        due = list(
            due_now.select_for_update(skip_locked=True).order_by("settle_at")[:limit]
        )
        if not due:
            return 0
        # The deadline moves on with the claim: recovery, which claims by
        # recheck_at, cannot take these while the sweep asks for them.
        Payment.objects.filter(pk__in=[p.pk for p in due]).update(
            settle_at=None, recheck_at=stuck_deadline()
        )
    gateway = get_gateway()
    answered: list[tuple[Payment, GatewayResult, GatewayCall]] = []
    for payment in due:
        payment.settle_at = None
        try:
            result, call = _gateway_call(
                payment, "retrieve", lambda p=payment: gateway.retrieve(payment=p)
            )
        except Exception:
            # GatewayError or not (a provider's library raising its own): one
            # payment's failure is not the batch's, nor the worker's.
            logger.warning(
                "gateway retrieve failed payment=%s; recovery retries it",
                payment.id,
                exc_info=True,
            )
            continue
        answered.append((payment, result, call))
    # Independent transitions, one commit: the batch's records and outcomes
    # land together or, on an error, not at all (recovery then retries).
    with transaction.atomic():
        GatewayCall.objects.bulk_create([call for _, _, call in answered])
        for payment, result, _ in answered:
            _payment_apply_outcome(payment, result)
    return len(due)
