"""Payments and their append-only history."""

import secrets
import uuid

from django.conf import settings
from django.db import models


def new_client_secret() -> str:
    """Return an unguessable secret (256 bits, URL-safe) for reading one payment."""
    return secrets.token_urlsafe(32)


class PaymentStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    PROCESSING = "processing", "Processing"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELED = "canceled", "Canceled"


TERMINAL_STATUSES = frozenset(
    {PaymentStatus.SUCCEEDED, PaymentStatus.FAILED, PaymentStatus.CANCELED}
)


class Payment(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    amount = models.PositiveBigIntegerField(help_text="In minor units: 1000 = 10.00.")
    currency = models.CharField(max_length=3)
    status = models.CharField(
        max_length=16, choices=PaymentStatus.choices, default=PaymentStatus.PENDING
    )
    payment_method = models.CharField(max_length=64)
    description = models.CharField(max_length=255, blank=True, default="")
    socket_id = models.CharField(max_length=64, blank=True, default="")
    client_secret = models.CharField(
        max_length=64, default=new_client_secret, editable=False
    )
    failure_code = models.CharField(max_length=64, blank=True, default="")
    failure_message = models.CharField(max_length=255, blank=True, default="")
    version = models.PositiveIntegerField(
        default=1, help_text="Increments with every status change."
    )
    # When a payment still short of a terminal state counts as stuck (its job
    # lost with a killed worker) and recovery enqueues its processing again.
    recheck_at = models.DateTimeField(null=True, blank=True)
    # When the gateway, which answered "pending", is worth asking again: the
    # worker's settle sweep (services.payments_settle_due) asks for every
    # payment whose time has come in one batch, instead of one deferred job
    # per payment.
    settle_at = models.DateTimeField(null=True, blank=True)
    # The id of the request that created it (ops.request_id): the worker's
    # log lines for the payment, its charge as its settlement, carry it.
    request_id = models.CharField(max_length=128, blank=True, default="")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="payments",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["status"], name="payment_status_idx"),
            models.Index(fields=["created_at"], name="payment_created_at_idx"),
            models.Index(
                fields=["recheck_at"],
                condition=models.Q(status__in=["pending", "processing"]),
                name="payment_recheck_idx",
            ),
            models.Index(
                fields=["settle_at"],
                condition=models.Q(status="processing", settle_at__isnull=False),
                name="payment_settle_idx",
            ),
        ]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(amount__gte=1) & models.Q(amount__lte=99_999_999),
                name="payment_amount_in_range",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.id} {self.status}"


class PaymentEvent(models.Model):
    """One status transition; rows are only ever added."""

    payment = models.ForeignKey(
        Payment, on_delete=models.PROTECT, related_name="events"
    )
    from_status = models.CharField(
        max_length=16, choices=PaymentStatus.choices, blank=True
    )
    to_status = models.CharField(max_length=16, choices=PaymentStatus.choices)
    version = models.PositiveIntegerField(help_text="The payment's version after it.")
    detail = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    # The outbox mark: NULL until the change was handed to the channel layer
    # (in db_worker, written in batches up to PAYMENTS_NOTIFIED_MARK_INTERVAL
    # later: payments.outbox). Changes left NULL (Redis away, worker killed
    # after commit) are sent again by
    # payments.worker.recovery.payment_events_redeliver.
    notified_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [
            models.Index(
                fields=["created_at"],
                condition=models.Q(notified_at__isnull=True),
                name="paymentevent_unnotified_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.from_status or '∅'} → {self.to_status}"


class GatewayCall(models.Model):
    """One request to a payment gateway and what it answered."""

    payment = models.ForeignKey(
        Payment, on_delete=models.PROTECT, related_name="gateway_calls"
    )
    gateway = models.CharField(max_length=255)
    operation = models.CharField(max_length=32)
    outcome = models.CharField(max_length=16)
    response = models.JSONField(default=dict, blank=True)
    duration_ms = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"{self.operation} → {self.outcome}"


class SimulatedCharge(models.Model):
    """The simulated gateway's own ledger: one charge per payment, ever."""

    payment_id = models.UUIDField(primary_key=True)
    payment_method = models.CharField(max_length=64)
    amount = models.PositiveBigIntegerField()
    currency = models.CharField(max_length=3)
    settles_at = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"simulated charge {self.payment_id}"


class IdempotencyKey(models.Model):
    """A create request's key and the response it got, replayed on retry."""

    # "user:<pk>" for an authenticated caller, "anonymous" otherwise: one
    # user's key never meets another's.
    scope = models.CharField(max_length=64)
    key = models.CharField(max_length=255)
    request_fingerprint = models.CharField(max_length=64)
    response_status = models.PositiveSmallIntegerField()
    response_body = models.JSONField(default=dict)
    payment = models.ForeignKey(
        Payment, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["scope", "key"], name="idempotency_key_unique_per_scope"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.scope} {self.key}"


class WorkerHeartbeat(models.Model):
    """A running db_worker's lease (payments.worker.heartbeat); one row per worker id.

    django-tasks-db records which worker claimed a job but not whether that
    worker still runs; this row says so. Both times are the database's clock.
    """

    worker_id = models.CharField(max_length=64, primary_key=True)
    hostname = models.CharField(max_length=255, blank=True, default="")
    pid = models.PositiveIntegerField(null=True, blank=True)
    started_at = models.DateTimeField()
    beat_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"worker {self.worker_id}"
