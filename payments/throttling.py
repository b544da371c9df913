"""Rate limits on creating payments, per client address and per user."""

from __future__ import annotations

import logging
from typing import Any

from rest_framework.throttling import AnonRateThrottle, UserRateThrottle

logger = logging.getLogger(__name__)


class FailOpenMixin:
    """Let the request through when the counter store (Redis) is away.

    Payments keep being accepted while Redis is down (the queue is the
    database); a missing rate limit for that time beats refusing everyone.
    """

    def allow_request(self, request: Any, view: Any) -> bool:
        try:
            return super().allow_request(request, view)  # type: ignore[misc]
        except Exception as exc:
            logger.warning("throttle store unavailable, request allowed: %r", exc)
            return True


class PaymentCreateAnonThrottle(FailOpenMixin, AnonRateThrottle):
    scope = "payments_create_anon"


class PaymentCreateUserThrottle(FailOpenMixin, UserRateThrottle):
    scope = "payments_create_user"


class AuthTokenThrottle(FailOpenMixin, AnonRateThrottle):
    """Password guesses per client address at the token endpoint."""

    scope = "auth_token"
