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
from rest_framework.throttling import AnonRateThrottle, UserRateThrottle

logger = logging.getLogger(__name__)


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
    """Count a client's requests per fixed window in Redis; fail open.

    Payments keep being accepted while Redis is down (the queue is the
    database); a missing rate limit for that time beats refusing everyone.
    """

    rate: str | None
    num_requests: int
    duration: int
    timer: Any
    get_cache_key: Callable[[Any, Any], str | None]

    def allow_request(self, request: Any, view: Any) -> bool:
        if self.rate is None:
            return True
        ident = self.get_cache_key(request, view)
        if ident is None:
            return True
        # Each client's windows start at an offset of their own (a stable
        # hash: the same in every web process), so clients are not all
        # reset, and told to come back, at one instant.
        now = self.timer() + zlib.crc32(ident.encode()) % self.duration
        window = int(now // self.duration)
        self._wait = self.duration - (now % self.duration)
        try:
            store = counters()
            key = store.make_key(f"{ident}:{window}")
            pipe = store.client.pipeline(transaction=False)
            pipe.incr(key)
            pipe.expire(key, self.duration + 1)
            count, _ = pipe.execute()
        except Exception as exc:
            logger.warning("throttle store unavailable, request allowed: %r", exc)
            return True
        return int(count) <= self.num_requests

    def wait(self) -> float:
        return max(self._wait, 1.0)


class PaymentCreateAnonThrottle(WindowCounterMixin, AnonRateThrottle):
    scope = "payments_create_anon"


class PaymentCreateUserThrottle(WindowCounterMixin, UserRateThrottle):
    scope = "payments_create_user"


class AuthTokenThrottle(WindowCounterMixin, AnonRateThrottle):
    """Password guesses per client address at the token endpoint."""

    scope = "auth_token"
