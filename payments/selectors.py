"""Reads: who may see which payment; which payments have a job open."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from django.db.models import QuerySet
from django.tasks import TaskResultStatus
from django.utils.crypto import constant_time_compare
from django_tasks_db.models import DBTaskResult

from payments.models import Payment, PaymentStatus
from payments.payloads import payment_public_data


def _parse_id(payment_id: Any) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(payment_id))
    except (TypeError, ValueError, AttributeError):
        return None


def payment_is_owner(*, payment: Payment, user: Any) -> bool:
    return bool(
        user is not None
        and user.is_authenticated
        and payment.user_id is not None
        and payment.user_id == user.pk
    )


def payment_get_visible(
    *, payment_id: Any, client_secret: str | None = None, user: Any = None
) -> Payment | None:
    """Return the payment if the caller may read it, else None.

    Readable with its client_secret (compared in constant time), by its
    owner, or by staff. "Not found" and "not yours" look the same.
    """
    pk = _parse_id(payment_id)
    if pk is None:
        return None
    payment = Payment.objects.filter(pk=pk).first()
    if payment is None:
        return None
    if client_secret and constant_time_compare(
        # A lone surrogate (valid JSON, not UTF-8) is no secret we issued;
        # plain encode() would raise.
        client_secret.encode(errors="surrogatepass"),
        payment.client_secret,
    ):
        return payment
    if payment_is_owner(payment=payment, user=user):
        return payment
    if user is not None and user.is_authenticated and user.is_staff:
        return payment
    return None


def payment_public_data_if_visible(
    *, payment_id: Any, client_secret: str | None = None, user: Any = None
) -> dict[str, Any] | None:
    """Return payment_public_data (a payment-status frame's) if the caller may read it.

    The visibility rule is payment_get_visible's; None when it refuses.
    """
    payment = payment_get_visible(
        payment_id=payment_id, client_secret=client_secret, user=user
    )
    if payment is None:
        return None
    return payment_public_data(payment)


def payment_list(*, user: Any) -> QuerySet[Payment]:
    """Return the payments ``user`` may list: their own; staff: all."""
    queryset = Payment.objects.all()
    if not user.is_staff:
        queryset = queryset.filter(user=user)
    return queryset


def payment_ids_with_open_job(*, payment_ids: list[Any]) -> set[str]:
    """Return those of these payments (as strings) with a job queued or running."""
    return set(
        DBTaskResult.objects.filter(
            status__in=[TaskResultStatus.READY, TaskResultStatus.RUNNING],
            task_path__startswith="payments.tasks.",
            args_kwargs__kwargs__payment_id__in=[str(pk) for pk in payment_ids],
        ).values_list("args_kwargs__kwargs__payment_id", flat=True)
    )


def payment_method_outcomes() -> list[dict[str, str]]:
    """Return the configured gateway's payment methods and, where known, their outcomes.

    For the page at / (its card chooser): the methods the API accepts, with
    the outcome the simulated gateway gives each of its test methods (the
    same table it charges by); another gateway's methods have none to show.
    """
    from payments.gateways import get_gateway
    from payments.gateways.simulated import OUTCOMES

    accepted = get_gateway().payment_methods
    known = [method for method in OUTCOMES if method in accepted]
    methods = [*known, *sorted(accepted - set(known))]
    rows = []
    for method in methods:
        outcome, code, message = OUTCOMES.get(method, ("", "", ""))
        rows.append(
            {
                "method": method,
                "outcome": str(outcome),
                "failure_code": code,
                "failure_message": message,
            }
        )
    return rows


def payment_next_settle_at() -> datetime | None:
    """When the settle sweep next has a payment to ask the gateway about."""
    return (
        Payment.objects.filter(status=PaymentStatus.PROCESSING, settle_at__isnull=False)
        .order_by("settle_at")
        .values_list("settle_at", flat=True)
        .first()
    )
