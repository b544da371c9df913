"""Rate limits on creating payments, per client address and per user."""

from __future__ import annotations

import logging
from typing import Any

from django.core.cache import BaseCache, caches
from django.core.signals import setting_changed
from django.dispatch import receiver
from rest_framework.throttling import AnonRateThrottle, UserRateThrottle

logger = logging.getLogger(__name__)

_counters: BaseCache | None = None


def counters() -> BaseCache:
    """The process's one client of the "default" cache, for throttle counters.

    Django hands out a cache object per thread or, under ASGI, per request
    context, so every POST opened a new Redis connection for its throttle
    check (about one per payment). redis-py's pool is thread-safe; one
    client serves all requests.
    """
    global _counters
    if _counters is None:
        _counters = caches.create_connection("default")
    return _counters


@receiver(setting_changed)
def _forget_counters(*, setting: str, **kwargs: Any) -> None:
    global _counters
    if setting == "CACHES":
        _counters = None


class FailOpenMixin:
    """Let the request through when the counter store (Redis) is away.

    Payments keep being accepted while Redis is down (the queue is the
    database); a missing rate limit for that time beats refusing everyone.
    """

    @property
    def cache(self) -> BaseCache:
        return counters()

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
