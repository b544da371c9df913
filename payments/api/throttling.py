"""Rate limits on creating payments, per client address and per user.

DRF's throttles keep, per client, the list of its request times in the
cache: two Redis round trips and the whole list unpickled and pickled again
per request and per throttle, growing with the limit. These count requests
per fixed window instead: one pipelined INCR and EXPIRE per throttle, the
same few bytes whatever the limit. A client can thus get up to twice its
limit across a window boundary, the usual price of fixed windows.
"""

from __future__ import annotations

import logging
import threading
import zlib
from collections.abc import Callable
from typing import Any, NamedTuple

import redis
from django.conf import settings
from django.core.cache import caches
from django.core.signals import setting_changed
from django.dispatch import receiver
from rest_framework.throttling import AnonRateThrottle, BaseThrottle, UserRateThrottle

from ops.metrics import THROTTLED
from payments.errors import ApplicationError

logger = logging.getLogger(__name__)


def client_address(request: Any) -> str | None:
    """The client's address as every limit sees it (DJANGO_NUM_PROXIES honoured).

    DRF's own reading, also given to django-axes, so that a client cannot
    pick its address for the login lockout with an X-Forwarded-For header.
    """
    return BaseThrottle().get_ident(request)


class ThrottleStoreUnavailableError(ApplicationError):
    code = "service_unavailable"
    status_code = 503
    retry_after = 5


class CounterStore(NamedTuple):
    client: redis.Redis
    make_key: Callable[[str], str]


_store: CounterStore | None = None
_store_lock = threading.Lock()


def counters() -> CounterStore:
    """The process's one Redis client for throttle counters: the "default" cache's.

    redis-py's client is thread-safe and keeps a pool; Django's cache instead
    builds a client object per call (about 0.1 ms each) and a cache object
    per request context. Keys are the cache's (its KEY_PREFIX keeps test
    runs and deployments apart).
    """
    global _store
    with _store_lock:
        if _store is None:
            config = settings.CACHES["default"]
            options = config.get("OPTIONS", {})
            _store = CounterStore(
                client=redis.Redis.from_url(
                    config["LOCATION"],
                    socket_connect_timeout=options.get("socket_connect_timeout", 1),
                    socket_timeout=options.get("socket_timeout", 1),
                ),
                make_key=caches.create_connection("default").make_key,
            )
        return _store


@receiver(setting_changed)
def _forget_counters(*, setting: str, **kwargs: Any) -> None:
    global _store
    if setting == "CACHES":
        with _store_lock:
            _store = None


class WindowCounterMixin:
    """Count a client's requests per fixed window in Redis; fail open or closed.

    Payments keep being accepted while Redis is down (the queue is the
    database); a missing rate limit for that time beats refusing everyone.
    Password guessing is the opposite: a limit that vanishes with Redis is
    an invitation, so those throttles set ``fail_open = False`` (503).
    """

    fail_open = True

    rate: str | None
    num_requests: int
    duration: int
    timer: Any
    get_cache_key: Callable[[Any, Any], str | None]

    def allow_request(self, request: Any, view: Any) -> bool:
        return not throttles_refusing([self], request, view)

    def window(self, request: Any, view: Any) -> str | None:
        """The client's counter for the current window; None if not limited."""
        if self.rate is None:
            return None
        ident = self.get_cache_key(request, view)
        if ident is None:
            return None
        # Each client's windows start at an offset of their own (a stable
        # hash: the same in every web process), so clients are not all
        # reset, and told to come back, at one instant.
        now = self.timer() + zlib.crc32(ident.encode()) % self.duration
        self._wait = self.duration - (now % self.duration)
        return f"{ident}:{int(now // self.duration)}"

    def wait(self) -> float:
        return max(self._wait, 1.0)


def throttles_refusing(
    throttles: list[WindowCounterMixin], request: Any, view: Any
) -> list[WindowCounterMixin]:
    """The ``throttles`` that refuse ``request``; all counted in one round trip.

    Every throttle counts the request, refused or not, as DRF's
    check_throttles has each of them do; one pipeline for all of them
    instead of one each (a create has two: 0.47 → 0.30 ms of CPU per create,
    bench.create_path).
    """
    windows = [(throttle, throttle.window(request, view)) for throttle in throttles]
    counted = [(throttle, window) for throttle, window in windows if window]
    if not counted:
        return []
    try:
        store = counters()
        pipe = store.client.pipeline(transaction=False)
        for throttle, window in counted:
            key = store.make_key(window)
            pipe.incr(key)
            pipe.expire(key, throttle.duration + 1)
        results = pipe.execute()
    except Exception as exc:
        if not all(throttle.fail_open for throttle, _ in counted):
            logger.warning("throttle store unavailable, request refused: %r", exc)
            raise ThrottleStoreUnavailableError(
                "unavailable; retry shortly.", field="rate_limiter"
            ) from None
        logger.warning("throttle store unavailable, request allowed: %r", exc)
        return []
    refused = []
    for (throttle, _), count in zip(counted, results[::2], strict=True):
        if int(count) > throttle.num_requests:
            THROTTLED.labels(throttle.scope).inc()
            refused.append(throttle)
    return refused


class PaymentCreateAnonThrottle(WindowCounterMixin, AnonRateThrottle):
    scope = "payments_create_anon"


class PaymentCreateUserThrottle(WindowCounterMixin, UserRateThrottle):
    scope = "payments_create_user"


class AuthTokenThrottle(WindowCounterMixin, AnonRateThrottle):
    """Password guesses per client address at the token endpoint; fails closed.

    Per username, and the admin's login, is django-axes' lockout (settings).
    """

    scope = "auth_token"
    fail_open = False
