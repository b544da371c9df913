"""A gateway that behaves like Stripe's test payment methods, offline."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from datetime import timedelta
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from payments.models import SimulatedCharge

from .base import BaseGateway, GatewayError, GatewayResult, Outcome

if TYPE_CHECKING:
    from payments.models import Payment

# payment method → (outcome, failure code, failure message), after Stripe's
# test cards so frontend developers meet names they know.
OUTCOMES: dict[str, tuple[Outcome, str, str]] = {
    "pm_card_visa": (Outcome.SUCCEEDED, "", ""),
    "pm_card_mastercard": (Outcome.SUCCEEDED, "", ""),
    "pm_card_chargeDeclined": (
        Outcome.FAILED,
        "card_declined",
        "Your card was declined.",
    ),
    "pm_card_chargeDeclinedInsufficientFunds": (
        Outcome.FAILED,
        "insufficient_funds",
        "Your card has insufficient funds.",
    ),
    "pm_card_chargeDeclinedExpiredCard": (
        Outcome.FAILED,
        "expired_card",
        "Your card has expired.",
    ),
}


def _own_transaction() -> AbstractContextManager[object]:
    """A savepoint inside a caller's transaction; otherwise nothing.

    In autocommit the INSERT is its own transaction already, and a failed one
    breaks nothing: an atomic block would only add a BEGIN and a COMMIT (two
    round trips of a worker's eighteen per payment).
    """
    if connection.in_atomic_block or not connection.get_autocommit():
        return transaction.atomic()
    return nullcontext()


class SimulatedGateway(BaseGateway):
    """Settle each charge PAYMENTS_SIMULATED_DELAY seconds after it is made.

    The delay is a timestamp, not a sleep: until it passes the charge is
    PENDING and the caller schedules a later ``retrieve``, so no worker waits.
    Charges live in SimulatedCharge, keyed by payment id, so a repeated
    ``charge`` finds the first one instead of charging again.
    """

    payment_methods = frozenset(OUTCOMES)

    def charge(self, *, payment: Payment) -> GatewayResult:
        delay = timedelta(seconds=settings.PAYMENTS_SIMULATED_DELAY)
        record = SimulatedCharge(
            payment_id=payment.id,
            payment_method=payment.payment_method,
            amount=payment.amount,
            currency=payment.currency,
            settles_at=timezone.now() + delay,
        )
        try:
            # Insert first (get_or_create reads first): a payment is charged
            # once, so its row is almost never there yet.
            with _own_transaction():
                record.save(force_insert=True)
        except IntegrityError:
            record = SimulatedCharge.objects.get(payment_id=payment.id)
        return self._result(record)

    def retrieve(self, *, payment: Payment) -> GatewayResult:
        record = SimulatedCharge.objects.filter(payment_id=payment.id).first()
        if record is None:
            raise GatewayError(f"no charge was made for payment {payment.id}")
        return self._result(record)

    def _result(self, record: SimulatedCharge) -> GatewayResult:
        remaining = (record.settles_at - timezone.now()).total_seconds()
        if remaining > 0:
            return GatewayResult(Outcome.PENDING, retry_after=remaining)
        outcome, code, message = OUTCOMES[record.payment_method]
        return GatewayResult(
            outcome,
            failure_code=code,
            failure_message=message,
            data={"charge": str(record.payment_id)},
        )
