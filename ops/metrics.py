"""Prometheus metrics: this process's counters, and the database's figures.

Every process keeps its own counters (prometheus-client's default registry)
and serves them itself: a web process at ``/metrics`` on its own port, a
db_worker, when METRICS_WORKER_PORT is set, on that port (serve_worker). No
multiprocess mode, no shared directory: processes on several machines work
the same, and Prometheus adds the ``instance`` label that tells them apart.

Figures that belong to no process (the queue here; the outbox backlog and
the workers' heartbeats, which payments registers: register_figures) are
read from the database when a web process is scraped (DatabaseCollector);
every web process answers the same values, so aggregate them with ``max``,
not ``sum``.

Both endpoints want ``Authorization: Bearer <METRICS_TOKEN>``; without a
token set they are off (404 on the web, no port opened by the worker).
"""

from __future__ import annotations

import hmac
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from django.conf import settings
from django.db.models import Min
from django.utils import timezone
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    make_wsgi_app,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

# Seconds, from a simulated instant outcome to a provider's slow retry.
DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

# Payments ---------------------------------------------------------------------

PAYMENTS_CREATED = Counter("payments_created", "Payments created by this process.")
PAYMENTS_SETTLED = Counter(
    "payments_settled",
    "Payments this process moved to a terminal status, by that status.",
    ["status"],
)
PAYMENT_TIME_TO_TERMINAL = Histogram(
    "payments_time_to_terminal_seconds",
    "Seconds from a payment's creation to its terminal status.",
    ["status"],
    buckets=DURATION_BUCKETS,
)
PAYMENT_TRANSITION = Histogram(
    "payments_transition_seconds",
    "Seconds a payment spent in from_status before this process moved it on.",
    ["from_status", "to_status"],
    buckets=DURATION_BUCKETS,
)
THROTTLED = Counter(
    "payments_throttled_requests",
    "Requests refused by a rate limit (429), by throttle scope.",
    ["scope"],
)

# Realtime -------------------------------------------------------------------

WEBSOCKETS_OPEN = Gauge(
    "realtime_websockets_open",
    "JSON-protocol WebSockets (/ws/payments/) open on this process.",
)
SOCKETIO_SESSIONS_OPEN = Gauge(
    "realtime_socketio_sessions_open",
    "Socket.IO sessions (any transport) this process serves.",
)
FRAMES_SENT = Counter(
    "realtime_status_frames_sent",
    "payment-status frames this process sent to clients, by protocol.",
    ["protocol"],
)


def socketio_sessions_count(count: Callable[[], int]) -> None:
    """Read the Socket.IO session count from ``count`` at each scrape."""
    SOCKETIO_SESSIONS_OPEN.set_function(count)


def observe_transition(
    *,
    from_status: str,
    to_status: str,
    terminal: bool,
    now: datetime,
    created_at: datetime | None,
    entered_at: datetime | None,
) -> None:
    """Count one committed transition (called after commit)."""
    if entered_at is not None:
        PAYMENT_TRANSITION.labels(from_status, to_status).observe(
            max(0.0, (now - entered_at).total_seconds())
        )
    if terminal:
        PAYMENTS_SETTLED.labels(to_status).inc()
        if created_at is not None:
            PAYMENT_TIME_TO_TERMINAL.labels(to_status).observe(
                max(0.0, (now - created_at).total_seconds())
            )


# Database figures ---------------------------------------------------------------


def seconds_since(then: datetime | None, now: datetime) -> float:
    """An age for a gauge: 0 for nothing (``then`` None), never negative."""
    return max(0.0, (now - then).total_seconds()) if then is not None else 0.0


# Each yields metric families read from the database; see register_figures.
_figures: list[Callable[[], Iterable[Metric]]] = []


def register_figures(figures: Callable[[], Iterable[Metric]]) -> None:
    """Have every web process's /metrics answer ``figures()`` at each scrape.

    For figures read from the database, which belong to no process: an app
    registers its own from its AppConfig.ready(), so ops imports no app.
    Registering the same function again (ready() run twice) changes nothing.
    """
    if figures not in _figures:
        _figures.append(figures)


class DatabaseCollector(Collector):
    """Figures read from the database at each scrape; the same from any process."""

    def describe(self) -> list[GaugeMetricFamily]:
        return []  # no query when registered (at import, maybe before migrate)

    def collect(self) -> Iterable[Metric]:
        try:
            figures = [metric for each in _figures for metric in each()]
        except Exception as exc:
            # The scrape still answers (this process's counters); that the
            # database did not is a figure too.
            logger.warning("metrics: database figures unavailable: %r", exc)
            yield GaugeMetricFamily(
                "ops_database_figures_up", "Whether the database answered.", value=0
            )
            return
        yield GaugeMetricFamily(
            "ops_database_figures_up", "Whether the database answered.", value=1
        )
        yield from figures


def queue_figures() -> Iterator[GaugeMetricFamily]:
    """The task queue's depth and wait (django-tasks-db's table)."""
    from django_tasks_db.models import DBTaskResult, get_date_max

    # This process's clock, as the enqueue times are.
    now = timezone.now()
    # Ready jobs only: django-tasks-db indexes them (a partial index on
    # READY); finished ones, kept until pruned, are never counted.
    ready = DBTaskResult.objects.ready()
    undeferred = (
        ready.filter(run_after=get_date_max())
        .aggregate(oldest=Min("enqueued_at"))
        .get("oldest")
    )
    deferred = (
        ready.exclude(run_after=get_date_max())
        .aggregate(oldest=Min("run_after"))
        .get("oldest")
    )
    yield GaugeMetricFamily(
        "tasks_queue_depth", "Jobs ready to run now.", value=ready.count()
    )
    yield GaugeMetricFamily(
        "tasks_oldest_ready_age_seconds",
        "Seconds the longest-waiting ready job has waited (0: none).",
        value=max(seconds_since(undeferred, now), seconds_since(deferred, now)),
    )


register_figures(queue_figures)

DATABASE_REGISTRY = CollectorRegistry(auto_describe=True)
DATABASE_REGISTRY.register(DatabaseCollector())


# Access ---------------------------------------------------------------------


def token_accepted(authorization: str | None) -> bool:
    """Whether an Authorization header carries METRICS_TOKEN as a bearer token."""
    token = settings.METRICS_TOKEN
    if not token or not authorization:
        return False
    scheme, _, given = authorization.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), token.encode()
    )


# The worker's own endpoint --------------------------------------------------------


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # a scrape every few seconds is no news


def _guarded(app: Callable[..., Any]) -> Callable[..., Any]:
    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ.get("PATH_INFO") != "/metrics":
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found\n"]
        if not token_accepted(environ.get("HTTP_AUTHORIZATION")):
            start_response(
                "401 Unauthorized",
                [("Content-Type", "text/plain"), ("WWW-Authenticate", "Bearer")],
            )
            return [b"bearer token required\n"]
        return app(environ, start_response)

    return guarded


def serve_worker() -> ThreadingWSGIServer | None:
    """Serve this process's metrics on METRICS_WORKER_PORT, in a daemon thread.

    Off (None) unless both METRICS_WORKER_PORT and METRICS_TOKEN are set.
    """
    port = settings.METRICS_WORKER_PORT
    if not port or not settings.METRICS_TOKEN:
        return None
    server = make_server(
        settings.METRICS_WORKER_ADDR,
        port,
        _guarded(make_wsgi_app(REGISTRY)),
        ThreadingWSGIServer,
        handler_class=_QuietHandler,
    )
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    logger.info("serving metrics on %s:%d/metrics", settings.METRICS_WORKER_ADDR, port)
    return server
