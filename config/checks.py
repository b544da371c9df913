"""System checks of the project's settings (Django's check framework).

Registered by ``PaymentsConfig.ready``. Management commands run them
(``db_worker`` and ``migrate`` among them) and so does the web process at
start (``config.asgi``: daphne runs none of its own), so a bad value stops a
process with Django's message naming the variable, rather than an
``ImproperlyConfigured`` at import or a failure under load. Values django-
environ cannot parse, and production secrets with no default, still fail at
import: there is nothing to check without them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning

# Settings read from the environment variable of the same name that must be
# a finite number above 0; then those where 0 is allowed (no delay, no limit).
POSITIVE = [
    "ASGI_REQUEST_THREADS",
    "ASGI_REQUEST_THREAD_TIMEOUT",
    "TASKS_WORKER_HEARTBEAT_INTERVAL",
    "TASKS_WORKER_DEAD_AFTER",
    "TASKS_WORKER_CONN_MAX_AGE",
    "PAYMENTS_STUCK_AFTER",
    "PAYMENTS_IDEMPOTENCY_KEY_TTL",
    "PAYMENTS_RECOVERY_INTERVAL",
    "PAYMENTS_REDELIVER_AFTER",
    "PAYMENTS_NOTIFIED_MARK_INTERVAL",
    "AXES_FAILURE_LIMIT",
    "REALTIME_MAX_SUBSCRIPTIONS",
    "REALTIME_MAX_FRAME_BYTES",
    "REALTIME_RATE_LIMIT",
    "REALTIME_MAX_CONNECTIONS_PER_CLIENT",
    "SOCKETIO_PING_INTERVAL",
    "SOCKETIO_PING_TIMEOUT",
    "SOCKETIO_MAX_PAYLOAD",
    "SOCKETIO_MAX_SESSIONS_PER_CLIENT",
    "SOCKETIO_MAX_REDIS_CONNECTIONS",
    "SOCKETIO_UPGRADE_TIMEOUT",
    "WEB_LISTEN_BACKLOG",
]
NOT_NEGATIVE = [
    "PAYMENTS_SIMULATED_DELAY",
    "WEB_HEAD_TIMEOUT",
    "WEB_BODY_TIMEOUT",
]


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    return [
        *_numbers(),
        *_database(),
        *_worker(),
        *_delivery(),
        *_socketio(),
        *_payments(),
        *_operations(),
    ]


def _error(number: int, message: str, hint: str | None = None) -> Error:
    return Error(message, hint=hint, id=f"payments.E{number:03d}")


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _numbers() -> Iterator[CheckMessage]:
    for name in POSITIVE:
        value = getattr(settings, name)
        if not (_finite(value) and value > 0):
            yield _error(1, f"{name}: a number above 0 is needed, not {value!r}.")
    for name in NOT_NEGATIVE:
        value = getattr(settings, name)
        if not (_finite(value) and value >= 0):
            yield _error(2, f"{name}: a number of 0 or more is needed, not {value!r}.")
    proxies = settings.REST_FRAMEWORK.get("NUM_PROXIES")
    if proxies is not None and not (isinstance(proxies, int) and proxies >= 0):
        yield _error(2, f"DJANGO_NUM_PROXIES: 0 or more is needed, not {proxies!r}.")
    if not settings.WEB_MAX_BODY_BYTES:
        yield _error(3, "WEB_MAX_BODY_BYTES: at least one path=size is needed.")
    for prefix, limit in settings.WEB_MAX_BODY_BYTES.items():
        if not prefix.startswith("/") or limit < 0:
            yield _error(
                3,
                f"WEB_MAX_BODY_BYTES: {prefix}={limit} needs a path starting with / "
                "and a size of 0 bytes or more.",
            )


def _database() -> Iterator[CheckMessage]:
    tcp_timeout = getattr(settings, "DATABASE_TCP_TIMEOUT", None)
    if tcp_timeout is not None and not (
        isinstance(tcp_timeout, int) and tcp_timeout >= 2
    ):
        # libpq takes a connect_timeout below 2 s as 2 s.
        yield _error(
            13,
            f"DJANGO_DB_TCP_TIMEOUT: whole seconds, at least 2, are needed, "
            f"not {tcp_timeout!r}.",
        )
    for alias, database in settings.DATABASES.items():
        pool = database.get("OPTIONS", {}).get("pool")
        if not pool:
            continue
        if database.get("CONN_MAX_AGE"):
            # Django would refuse it at the first connection, under load.
            yield _error(
                4,
                f"DJANGO_CONN_MAX_AGE: persistent connections and DJANGO_DB_POOL "
                f"exclude each other (database {alias!r}); unset one of them.",
            )
        if isinstance(pool, dict):
            # psycopg_pool's defaults: min_size 4, max_size min_size.
            low = pool.get("min_size", 4)
            high = pool.get("max_size", low)
            timeout = pool.get("timeout", 30.0)
            if not 0 <= low <= high or high < 1:
                yield _error(
                    5,
                    "DJANGO_DB_POOL_MIN_SIZE, DJANGO_DB_POOL_MAX_SIZE: sizes with "
                    f"0 <= min <= max and max above 0 are needed, not {low}, {high} "
                    f"(database {alias!r}).",
                )
            threads = settings.ASGI_REQUEST_THREADS
            if isinstance(threads, int) and high <= threads:
                # Each busy request thread holds a connection, the WebSocket
                # consumers' thread one more; with fewer, requests wait for
                # the pool and are answered 503. A worker opens only what it
                # uses: the larger cap costs it nothing.
                yield _error(
                    10,
                    f"DJANGO_DB_POOL_MAX_SIZE ({high}, database {alias!r}) must be "
                    f"at least ASGI_REQUEST_THREADS + 1 ({threads + 1}).",
                )
            reconnect = pool.get("reconnect_timeout", 300.0)
            for name, seconds in (
                ("DJANGO_DB_POOL_TIMEOUT", timeout),
                ("DJANGO_DB_POOL_RECONNECT_TIMEOUT", reconnect),
            ):
                if not (_finite(seconds) and seconds > 0):
                    yield _error(
                        6,
                        f"{name}: a number of seconds above 0 is needed, "
                        f"not {seconds!r} (database {alias!r}).",
                    )


def _worker() -> Iterator[CheckMessage]:
    interval = settings.TASKS_WORKER_HEARTBEAT_INTERVAL
    dead_after = settings.TASKS_WORKER_DEAD_AFTER
    if _finite(interval) and _finite(dead_after) and dead_after < 2 * interval:
        # A worker exits when it could not renew within dead_after - interval:
        # below two intervals, one slow renewal ends it.
        yield _error(
            7,
            f"TASKS_WORKER_DEAD_AFTER ({dead_after}) must be at least twice "
            f"TASKS_WORKER_HEARTBEAT_INTERVAL ({interval}).",
        )


def _delivery() -> Iterator[CheckMessage]:
    mark = settings.PAYMENTS_NOTIFIED_MARK_INTERVAL
    redeliver = settings.PAYMENTS_REDELIVER_AFTER
    if _finite(mark) and _finite(redeliver) and mark * 2 > redeliver:
        # Changes pushed but not yet marked are pushed again by recovery.
        yield _error(
            8,
            f"PAYMENTS_NOTIFIED_MARK_INTERVAL ({mark}) must be at most half of "
            f"PAYMENTS_REDELIVER_AFTER ({redeliver}), or pushed changes not yet "
            "marked are pushed twice.",
        )
    recovery = settings.PAYMENTS_RECOVERY_INTERVAL
    stuck = settings.PAYMENTS_STUCK_AFTER
    if _finite(recovery) and _finite(stuck) and recovery > stuck:
        yield Warning(
            f"PAYMENTS_RECOVERY_INTERVAL ({recovery}) is above PAYMENTS_STUCK_AFTER "
            f"({stuck}): stuck payments wait for the next round, not the deadline.",
            id="payments.W001",
        )


def _socketio() -> Iterator[CheckMessage]:
    interval = settings.SOCKETIO_PING_INTERVAL
    if _finite(interval) and interval >= 60:
        # A polling GET waits up to one interval for its next packet.
        yield Warning(
            f"SOCKETIO_PING_INTERVAL ({interval} s): polling requests are held "
            "that long, past the 60-s idle timeout of common proxies.",
            id="payments.W002",
        )


def _payments() -> Iterator[CheckMessage]:
    currencies: Iterable[str] = settings.PAYMENTS_CURRENCIES
    if settings.PAYMENTS_DEFAULT_CURRENCY not in currencies:
        yield _error(
            9,
            f"PAYMENTS_DEFAULT_CURRENCY ({settings.PAYMENTS_DEFAULT_CURRENCY!r}) "
            "must be one of PAYMENTS_CURRENCIES.",
        )


def _operations() -> Iterator[CheckMessage]:
    if settings.LOG_FORMAT not in settings.LOG_FORMATS:
        yield _error(
            11,
            f"DJANGO_LOG_FORMAT ({settings.LOG_FORMAT!r}) must be one of "
            f"{', '.join(settings.LOG_FORMATS)}.",
        )
    if not 0 <= settings.METRICS_WORKER_PORT <= 65535:
        yield _error(
            12,
            f"METRICS_WORKER_PORT ({settings.METRICS_WORKER_PORT}) must be a "
            "port number, or 0 for none.",
        )
