"""Idempotency-Key handling with Stripe's semantics.

Same key and same body: the first response again, nothing created. Same key,
another body: 422 ``idempotency_key_reused``. Concurrent requests with one
key: the unique constraint on (scope, key) lets exactly one create; the
others wait for its commit and replay it. Only requests that passed
validation are remembered, as at Stripe.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from payments.errors import ApplicationError
from payments.models import IdempotencyKey

HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 255


class IdempotencyKeyReusedError(ApplicationError):
    code = "idempotency_key_reused"
    status_code = 422


class InvalidIdempotencyKeyError(ApplicationError):
    code = "validation_error"
    status_code = 400


def idempotency_key_validate(key: str) -> str:
    if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise InvalidIdempotencyKeyError(
            f"must be 1 to {MAX_KEY_LENGTH} printable characters.", field=HEADER
        )
    return key


def idempotency_scope(user: Any) -> str:
    if user is not None and user.is_authenticated:
        return f"user:{user.pk}"
    return "anonymous"


def request_fingerprint(*, path: str, body: Any) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(f"{path}\n{canonical}".encode()).hexdigest()


def idempotent_call(
    *,
    key: str,
    scope: str,
    fingerprint: str,
    perform: Callable[[], tuple[int, dict[str, Any], Any]],
) -> tuple[int, dict[str, Any], bool]:
    """Run ``perform`` once per (scope, key); return (status, body, replayed).

    ``perform`` returns (status, body, payment) and runs in the same
    transaction as the key's row, so a failure leaves neither behind.
    """
    cutoff = timezone.now() - timedelta(seconds=settings.PAYMENTS_IDEMPOTENCY_KEY_TTL)
    with transaction.atomic():
        # An expired key is free for reuse even before the prune command runs.
        IdempotencyKey.objects.filter(
            scope=scope, key=key, created_at__lt=cutoff
        ).delete()
        try:
            with transaction.atomic():
                record = IdempotencyKey.objects.create(
                    scope=scope,
                    key=key,
                    request_fingerprint=fingerprint,
                    response_status=0,
                )
        except IntegrityError:
            record = None
        if record is None:
            earlier = IdempotencyKey.objects.get(scope=scope, key=key)
            if earlier.request_fingerprint != fingerprint:
                raise IdempotencyKeyReusedError(
                    "this key was already used with a different request body; "
                    "use a new key for a new payment.",
                    field=HEADER,
                )
            return earlier.response_status, earlier.response_body, True
        status, body, payment = perform()
        record.response_status = status
        record.response_body = body
        record.payment = payment
        record.save(update_fields=["response_status", "response_body", "payment"])
    return status, body, False


def idempotency_keys_prune() -> int:
    """Delete keys older than PAYMENTS_IDEMPOTENCY_KEY_TTL; return how many."""
    cutoff = timezone.now() - timedelta(seconds=settings.PAYMENTS_IDEMPOTENCY_KEY_TTL)
    deleted, _ = IdempotencyKey.objects.filter(created_at__lt=cutoff).delete()
    return deleted
