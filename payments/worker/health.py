"""What ops reports of the worker runtime: /readyz's worker check, /metrics' figures.

Registered with ops by PaymentsConfig.ready() (register_check,
register_figures): ops serves them and imports no app.
"""

from __future__ import annotations

from collections.abc import Iterator

from django.conf import settings
from django.db.models import Min
from django.utils import timezone
from prometheus_client.core import GaugeMetricFamily

from ops.metrics import seconds_since
from ops.readiness import Check, failed
from payments.models import PaymentEvent, WorkerHeartbeat
from payments.worker.heartbeat import workers_alive


def check_workers() -> Check:
    """At least one db_worker renewed its heartbeat within TASKS_WORKER_DEAD_AFTER."""
    try:
        alive = workers_alive().exists()
    except Exception as exc:
        return failed("database unreachable", exc)
    if not alive:
        return Check(
            False,
            f"no worker heartbeat in the last {settings.TASKS_WORKER_DEAD_AFTER:g} s",
        )
    return Check(True)


def worker_figures() -> Iterator[GaugeMetricFamily]:
    """The outbox's backlog (status changes the worker has yet to push), heartbeats."""
    # This process's clock; the heartbeats are judged by the database's,
    # so an age here may be off by the skew between the two.
    now = timezone.now()

    unpushed = PaymentEvent.objects.filter(notified_at__isnull=True)
    backlog = unpushed.aggregate(oldest=Min("created_at"))["oldest"]
    yield GaugeMetricFamily(
        "payments_outbox_backlog",
        "Status changes not yet marked pushed.",
        value=unpushed.count(),
    )
    yield GaugeMetricFamily(
        "payments_outbox_oldest_age_seconds",
        "Age of the oldest status change not yet marked pushed (0: none).",
        value=seconds_since(backlog, now),
    )

    yield GaugeMetricFamily(
        "tasks_workers_alive",
        "Workers whose heartbeat is fresh (TASKS_WORKER_DEAD_AFTER).",
        value=workers_alive().count(),
    )
    ages = GaugeMetricFamily(
        "tasks_worker_heartbeat_age_seconds",
        "Seconds since each known worker's last heartbeat.",
        labels=["worker_id"],
    )
    for worker_id, beat_at in WorkerHeartbeat.objects.values_list(
        "worker_id", "beat_at"
    ):
        ages.add_metric([worker_id], seconds_since(beat_at, now))
    yield ages
