"""Idempotency-Key handling with Stripe's semantics.

Same key and same body: the first response again, nothing created. Same key,
another body: 422 ``idempotency_key_reused``. Concurrent requests with one
key: the unique constraint on (scope, key) lets exactly one create; the
others wait for its commit and replay it. Only requests that passed
validation are remembered, as at Stripe.

Anonymous keys share one scope, not one per client address: a client whose
address changes between a request and its retry (mobile networks) must still
get its replay, never a second payment. So for anonymous requests the key is
the proof of being that client, as the client_secret is for reading: it must
be unguessable (a UUID v4 or at least 32 random URL-safe characters), or a
stranger could replay someone's response, client_secret included, by guessing
"order-1". Logged-in users' keys are scoped per user and may be anything.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
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
# 32 characters of base64url carry 192 bits, of hex 128: as many as a UUID v4
# (122), beyond guessing.
ANONYMOUS_KEY_MIN_LENGTH = 32
_RANDOM_KEY = re.compile(
    rf"[A-Za-z0-9_-]{{{ANONYMOUS_KEY_MIN_LENGTH},{MAX_KEY_LENGTH}}}", re.ASCII
)


class IdempotencyKeyReusedError(ApplicationError):
    code = "idempotency_key_reused"
    status_code = 422


class InvalidIdempotencyKeyError(ApplicationError):
    code = "validation_error"
    status_code = 400


_UUID = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I
)


def _is_unguessable(key: str) -> bool:
    # Other UUID versions are time, host or name based: guessable.
    if _UUID.fullmatch(key):
        return uuid.UUID(key).version == 4
    return _RANDOM_KEY.fullmatch(key) is not None


def idempotency_key_validate(key: str, *, user: Any) -> str:
    """Return ``key`` if fit for ``user``'s scope; raise a 400 naming the header."""
    if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise InvalidIdempotencyKeyError(
            f"must be 1 to {MAX_KEY_LENGTH} printable characters.", field=HEADER
        )
    if idempotency_scope(user) == "anonymous" and not _is_unguessable(key):
        raise InvalidIdempotencyKeyError(
            "without a login the key must be unguessable: a random UUID v4, or "
            f"{ANONYMOUS_KEY_MIN_LENGTH} to {MAX_KEY_LENGTH} random characters "
            "from A-Z a-z 0-9 - _ (whoever knows the key gets its replay, "
            "client_secret included).",
            field=HEADER,
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
