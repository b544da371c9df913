"""Writes: payment creation and the status machine.

Each transition is one conditional UPDATE (``WHERE status = expected``) and
one PaymentEvent in a single transaction. A transition that loses a race
updates no row and so writes nothing; callers get ``None`` back.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from functools import partial
from typing import Any, NamedTuple

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from ops import metrics
from ops.request_id import current_request_id, request_id_bound
from payments import outbox, tasks
from payments.gateways import GatewayResult, Outcome, get_gateway
from payments.gateways.answers import answer_taken_in, column_text, storable_text
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


# A batch's gateway answers are recorded together, in groups: a group is
# committed once this long (seconds) has passed since it began, checked
# after each call. So an answer waits for its commit at most this plus the
# next call: a slow provider's outcomes go one by one, not held back for the
# whole batch, but a fast answer followed by a slow call waits for that call.
GROUP_COMMIT_AFTER = 0.05
# When the gateway says to ask again, rounded up to this: a pending charge
# is asked at most this much later than its answer said, and answers with
# the same wait share one UPDATE (_payments_apply_outcomes). The sweep looks
# every 0.1 s anyway.
SETTLE_AT_GRANULARITY = timedelta(milliseconds=10)


class GatewayAnswers(NamedTuple):
    """What a batch's gateway calls left to their caller."""

    # The error of each payment whose call raised, by its id as a string.
    errors: dict[str, Exception]
    # Payments not asked because the caller said to stop (a worker's SIGTERM).
    not_asked: list[str]


def _never() -> bool:
    return False


class InvalidTransitionError(ValueError):
    """A transition the status machine does not allow (a programming error)."""


def stuck_deadline(since: datetime | None = None) -> datetime:
    """When a payment still open is taken for stuck (recovery looks again).

    PAYMENTS_STUCK_AFTER after ``since``: now, or when it is next due.
    """
    moment = since if since is not None else timezone.now()
    return moment + timedelta(seconds=settings.PAYMENTS_STUCK_AFTER)


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
            request_id=current_request_id(),
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
        tasks.process_payment.enqueue(payment_id=str(payment.id))
    # After the commit, which is the caller's when this runs inside its
    # transaction: a create rolled back later is neither counted nor logged.
    transaction.on_commit(partial(_created, payment), robust=True)
    return payment


def _created(payment: Payment) -> None:
    metrics.PAYMENTS_CREATED.inc()
    logger.info(
        "payment created id=%s amount=%s %s",
        payment.id,
        payment.amount,
        payment.currency,
    )


def payment_update_description(*, payment: Payment, description: str) -> None:
    """Change what the payment is for, and nothing else of its row.

    The admin's save writes every column from the copy its form loaded: a
    status committed by the worker since then would be written back over,
    with no event. This writes only the description (and ``updated_at``).
    """
    payment.description = description
    payment.save(update_fields=["description", "updated_at"])


def _payment_transition(
    *,
    payment_id: uuid.UUID | str,
    from_status: str,
    to_status: str,
    detail: dict[str, Any] | None = None,
    current: Payment | None = None,
    **fields: Any,
) -> Payment | None:
    """Move one payment; ``current``: the caller's copy, moved only at its version."""
    key = str(uuid.UUID(str(payment_id)))
    moved = _payments_transition(
        payment_ids=[key],
        from_status=from_status,
        to_status=to_status,
        details={key: detail} if detail else None,
        versions={key: current.version} if current is not None else None,
        **fields,
    )
    return moved[0] if moved else None


def _payments_transition(
    *,
    payment_ids: Iterable[uuid.UUID | str],
    from_status: str,
    to_status: str,
    details: Mapping[str, dict[str, Any]] | None = None,
    versions: Mapping[str, int] | None = None,
    **fields: Any,
) -> list[Payment]:
    """Move every payment still in ``from_status`` to ``to_status``, in one transaction.

    Return the payments moved, as stored. The rows are locked and read first
    (in primary-key order, so two batches cannot deadlock), which tells which
    rows the one UPDATE, conditional on the status too, moves: three
    statements for the batch, where a conditional UPDATE and an INSERT per
    payment cost two round trips each.
    ``details`` and ``versions`` are keyed by the payment id as a string.
    """
    if to_status not in TRANSITIONS[from_status]:
        raise InvalidTransitionError(f"{from_status} → {to_status} is not allowed")
    # Parsed before the transaction: a malformed id raises ValueError here.
    ids = sorted({uuid.UUID(str(payment_id)) for payment_id in payment_ids})
    now = timezone.now()
    # No savepoint when nested (a gateway call's record around it): a lost
    # race returns without raising, so there is nothing to roll back to.
    with transaction.atomic(savepoint=False):
        rows = [
            row
            for row in Payment.objects.select_for_update()
            .filter(pk__in=ids, status=from_status)
            .order_by("pk")
            if versions is None or versions.get(str(row.pk), row.version) == row.version
        ]
        if not rows:
            return []
        moved = Payment.objects.filter(
            pk__in=[row.pk for row in rows], status=from_status
        ).update(status=to_status, version=F("version") + 1, updated_at=now, **fields)
        if moved != len(rows):
            # Only a database that did not hold the lock: no event may be
            # written for a row that did not move.
            raise RuntimeError(f"{len(rows) - moved} locked payment(s) changed")
        events = PaymentEvent.objects.bulk_create(
            PaymentEvent(
                payment=row,
                from_status=from_status,
                to_status=to_status,
                version=row.version + 1,
                detail=(details or {}).get(str(row.pk)) or {},
            )
            for row in rows
        )
        for row, event in zip(rows, events, strict=True):
            # Since when the payment was in from_status: its last change.
            entered_at = row.updated_at
            row.status, row.version, row.updated_at = to_status, row.version + 1, now
            for name, value in fields.items():
                setattr(row, name, value)
            transaction.on_commit(
                partial(_committed, row, event.pk, from_status, entered_at, now),
                robust=True,
            )
    for row in rows:
        with request_id_bound(row.request_id):
            logger.info("payment %s %s → %s", row.pk, from_status, to_status)
    return rows


def _committed(
    payment: Payment,
    event_id: int,
    from_status: str,
    entered_at: datetime | None,
    now: datetime,
) -> None:
    with request_id_bound(payment.request_id):
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
        failure_code=column_text(failure_code, "failure_code"),
        failure_message=column_text(failure_message, "failure_message"),
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
    it terminal and does nothing. The gateway's error is raised on, so that
    the job records it.
    """
    for error in payments_process(payment_ids=[payment_id]).errors.values():
        raise error


def payments_process(
    *,
    payment_ids: Sequence[uuid.UUID | str],
    stopping: Callable[[], bool] = _never,
) -> GatewayAnswers:
    """Process a batch of payments as ``payment_process`` does each one.

    Return the error of each payment whose charge raised, and the payments
    not charged because ``stopping()`` was true before their turn (a worker
    told to stop finishes the charge in hand, not the batch): those stay
    processing for their job's next run. The others were charged and their
    outcomes applied. The batch's
    ``processing`` transitions are one transaction, each charge is its own
    gateway call, and their records and outcomes commit together
    (``_payments_record_answers``), in groups of GROUP_COMMIT_AFTER seconds
    of calls, so a slow gateway does not hold back the first outcomes.
    The worker claims its queued jobs in batches for this
    (payments.worker.worker): per payment, one job's claim, run and result
    each cost a commit.
    """
    ids = {str(uuid.UUID(str(payment_id))) for payment_id in payment_ids}
    processing = _payments_transition(
        payment_ids=ids,
        from_status=PaymentStatus.PENDING,
        to_status=PaymentStatus.PROCESSING,
        recheck_at=stuck_deadline(),
    )
    # Processing already: an earlier run of the same job died before the
    # charge was recorded. Charged again too, idempotently.
    rest = ids - {str(payment.pk) for payment in processing}
    if rest:
        processing += Payment.objects.filter(
            pk__in=rest, status=PaymentStatus.PROCESSING
        )
    return _payments_ask_gateway(
        processing, "charge", get_gateway().charge, stopping=stopping
    )


def _payments_ask_gateway(
    payments: list[Payment],
    operation: str,
    method: Callable[..., GatewayResult],
    *,
    stopping: Callable[[], bool] = _never,
) -> GatewayAnswers:
    """Ask the gateway for each payment; record and apply the answers in groups.

    ``stopping()`` is asked before each call; once it is true the rest of
    the payments are not asked, and the answers so far are recorded.
    """
    errors: dict[str, Exception] = {}
    answered: list[tuple[Payment, GatewayResult]] = []
    # The group's calls in the order made, those that raised among them.
    calls: list[GatewayCall] = []
    group_started = time.monotonic()
    for index, payment in enumerate(payments):
        if stopping():
            not_asked = [str(p.id) for p in payments[index:]]
            break
        with request_id_bound(payment.request_id):
            answer, call = _gateway_call(
                payment, operation, lambda p=payment: method(payment=p)
            )
            calls.append(call)
            if isinstance(answer, Exception):
                # GatewayError or not (a provider's library raising its own):
                # one payment's failure is not the batch's, nor the worker's.
                logger.warning(
                    "gateway %s failed payment=%s; recovery retries it",
                    operation,
                    payment.id,
                    exc_info=answer,
                )
                errors[str(payment.id)] = answer
            else:
                answered.append((payment, answer))
        if time.monotonic() - group_started >= GROUP_COMMIT_AFTER:
            _payments_record_answers(calls, answered)
            calls, answered, group_started = [], [], time.monotonic()
    else:
        not_asked = []
    if calls:
        _payments_record_answers(calls, answered)
    return GatewayAnswers(errors, not_asked)


# A call's record keeps this much of the message of an error it raised.
CALL_ERROR_MESSAGE_LENGTH = 500


def _gateway_call(
    payment: Payment, operation: str, call: Callable[[], GatewayResult]
) -> tuple[GatewayResult | Exception, GatewayCall]:
    """Make one gateway call; return its answer, or the error, and its record.

    The answer is taken in (payments.gateways.answers); the error is what
    the call raised, or the intake's refusal of an answer with no outcome to
    act on. The record is unsaved. A call that raised is recorded too, with the
    outcome ``error``: a provider that timed out may have charged all the
    same, and that attempt is the one a reconciliation looks for.
    """
    started = time.perf_counter()
    answer: GatewayResult | Exception
    try:
        answer = answer_taken_in(call())
    except Exception as exc:
        answer = exc
        outcome = "error"
        response: dict[str, Any] = {
            "error": type(exc).__qualname__,
            "message": storable_text(str(exc)[:CALL_ERROR_MESSAGE_LENGTH]),
        }
    else:
        outcome = answer.outcome
        # The answer's own fields last: its data cannot overwrite them.
        response = {
            **answer.data,
            "failure_code": answer.failure_code,
            "failure_message": answer.failure_message,
            "retry_after": answer.retry_after,
        }
    record = GatewayCall(
        payment=payment,
        gateway=get_gateway().name,
        operation=operation,
        outcome=outcome,
        response=response,
        duration_ms=int((time.perf_counter() - started) * 1000),
    )
    return answer, record


def _payments_record_answers(
    calls: list[GatewayCall], answered: list[tuple[Payment, GatewayResult]]
) -> None:
    """Record the gateway calls and apply their answers: one transaction for all.

    Each call's record commits with what it decided (a call that raised
    decided nothing, and is recorded all the same), and independent
    transitions share the commit. A worker that dies before it repeats the
    calls (they are idempotent) and records them then.
    """
    with transaction.atomic():
        GatewayCall.objects.bulk_create(calls)
        _payments_apply_outcomes(answered)


def _payments_apply_outcomes(answers: list[tuple[Payment, GatewayResult]]) -> None:
    """Settle each payment as the gateway says, or set when to ask again."""
    succeeded = {
        str(p.id): r.data for p, r in answers if r.outcome == Outcome.SUCCEEDED
    }
    if succeeded:
        _payments_transition(
            payment_ids=succeeded,
            from_status=PaymentStatus.PROCESSING,
            to_status=PaymentStatus.SUCCEEDED,
            details=succeeded,
        )
    failed: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for payment, result in answers:
        if result.outcome == Outcome.FAILED:
            reason = (result.failure_code, result.failure_message)
            failed.setdefault(reason, {})[str(payment.id)] = result.data
    for (code, message), details in failed.items():
        _payments_transition(
            payment_ids=details,
            from_status=PaymentStatus.PROCESSING,
            to_status=PaymentStatus.FAILED,
            details=details,
            failure_code=code,
            failure_message=message,
        )
    # Not settled yet: the worker's settle sweep asks again when it is due,
    # so no worker sits waiting for the provider. One UPDATE per distinct
    # time, not a CASE with a WHEN per payment: Django resolving the WHENs
    # was 11 % of the worker's samples at gateway 10 s (py-spy, workload A).
    # A provider that asks for the same wait gives the group one time (two
    # across a SETTLE_AT_GRANULARITY step); one whose waits all differ costs
    # an UPDATE a payment, about what its WHENs cost.
    now = timezone.now()
    due_times: dict[datetime, list[uuid.UUID]] = {}
    for payment, result in answers:
        if result.outcome not in (Outcome.SUCCEEDED, Outcome.FAILED):
            settle_at = _round_up(
                now + timedelta(seconds=result.retry_after), SETTLE_AT_GRANULARITY
            )
            due_times.setdefault(settle_at, []).append(payment.pk)
    for settle_at, pks in due_times.items():
        Payment.objects.filter(pk__in=pks, status=PaymentStatus.PROCESSING).update(
            settle_at=settle_at,
            recheck_at=stuck_deadline(since=settle_at),
        )


def _round_up(moment: datetime, step: timedelta) -> datetime:
    """Return ``moment`` rounded up to a multiple of ``step`` since the epoch."""
    epoch = datetime(1970, 1, 1, tzinfo=moment.tzinfo)
    return moment + (epoch - moment) % step


def payment_refresh(*, payment_id: uuid.UUID | str) -> None:
    """Ask the gateway for the outcome of a processing payment and apply it."""
    payments = list(
        Payment.objects.filter(pk=payment_id, status=PaymentStatus.PROCESSING)
    )
    answers = _payments_ask_gateway(payments, "retrieve", get_gateway().retrieve)
    for error in answers.errors.values():
        raise error


def payments_settle_due(
    *, limit: int = 100, stopping: Callable[[], bool] = _never
) -> int:
    """Ask the gateway again for processing payments whose outcome is due.

    Return how many were asked. This is the worker's settle sweep: one
    transaction claims up to ``limit`` payments whose ``settle_at`` has come
    (``SKIP LOCKED`` on PostgreSQL, so workers sweeping together take
    different ones; SQLite's one writer serialises them; a claim clears
    ``settle_at`` and moves ``recheck_at`` on), the gateway is asked for each,
    and the answers are recorded and applied as a charge's are
    (``_payments_record_answers``): the same conditional transitions and
    events as a job, a commit for the batch instead of a job (claim, run,
    result) per payment. A payment whose retrieve raised is left to recovery
    at its ``recheck_at``, as is a sweep that dies after its claim; recovery
    charges again through the gateway's idempotency. Those not asked because
    ``stopping()`` said so are due again at once, for the next sweep.
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
    for payment in due:
        payment.settle_at = None
    try:
        answers = _payments_ask_gateway(
            due, "retrieve", get_gateway().retrieve, stopping=stopping
        )
    except (SystemExit, KeyboardInterrupt):
        # A second SIGTERM exits mid-sweep: what has no answer recorded yet
        # is due again too, not left to recovery.
        _payments_due_again([payment.pk for payment in due], now)
        raise
    _payments_due_again(answers.not_asked, now)
    return len(due) - len(answers.not_asked)


def _payments_due_again(payment_ids: Sequence[uuid.UUID | str], now: datetime) -> None:
    """Give payments a sweep claimed but got no answer for back to the next sweep."""
    if payment_ids:
        Payment.objects.filter(
            pk__in=payment_ids,
            status=PaymentStatus.PROCESSING,
            settle_at__isnull=True,
        ).update(settle_at=now, recheck_at=stuck_deadline(since=now))
