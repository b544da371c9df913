"""The worker's recovery loop: re-run dead workers' and lost jobs, re-push changes."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import NamedTuple

from django.conf import settings
from django.db import transaction
from django.tasks import TaskResultStatus
from django.utils import timezone
from django_tasks_db.models import DBTaskResult

from payments import heartbeat, services
from payments.background import PeriodicThread

logger = logging.getLogger(__name__)


class AbandonedTaskError(Exception):
    """The worker running this job stopped before it finished."""


class RecoveryRound(NamedTuple):
    recovered: int  # stuck payments whose job was enqueued again
    pushed: int  # payments whose unsent status changes were pushed
    released: int  # jobs left running by a dead worker, failed and enqueued again


PAYMENT_TASKS = "payments.tasks."


def _running_payment_jobs() -> list[tuple[object, list[str], datetime]]:
    return list(
        DBTaskResult.objects.filter(
            status=TaskResultStatus.RUNNING, task_path__startswith=PAYMENT_TASKS
        ).values_list("pk", "worker_ids", "started_at")
    )


def _release(job_id: object, started_at: datetime, holder: str | None) -> bool:
    """Fail an abandoned job and enqueue it again, once, in one transaction.

    The conditional UPDATE (still RUNNING, same claim) is the claim: recovery
    in several workers releases a job once. Payment jobs are safe to run again
    (conditional transitions, the gateway's idempotency on the payment id).
    """
    now = timezone.now()
    with transaction.atomic():
        claimed = DBTaskResult.objects.filter(
            pk=job_id, status=TaskResultStatus.RUNNING, started_at=started_at
        ).update(
            status=TaskResultStatus.FAILED,
            finished_at=now,
            exception_class_path=f"{__name__}.{AbandonedTaskError.__qualname__}",
            traceback=f"The worker running this job ({holder}) stopped before "
            "it finished; the job was enqueued again.",
        )
        if not claimed:
            return False
        job = DBTaskResult.objects.get(pk=job_id)
        job.task.enqueue(*job.args_kwargs["args"], **job.args_kwargs["kwargs"])
    logger.warning(
        "job %s %s abandoned by worker %s; enqueued again",
        job_id,
        job.args_kwargs["kwargs"],
        holder,
    )
    return True


def tasks_release_abandoned() -> int:
    """Run again the payment jobs whose worker died holding them; return how many.

    A RUNNING job belongs to the last of its worker_ids. It is abandoned when
    that worker's heartbeat lapsed (TASKS_WORKER_DEAD_AFTER, payments.heartbeat),
    or when the worker has no heartbeat row (stopped, or one that keeps none:
    django-tasks-db's own worker, a release from before heartbeats) and the
    job started over PAYMENTS_STUCK_AFTER ago. A live worker's job is never
    touched.
    """
    running = _running_payment_jobs()
    if not running:
        return 0
    liveness = heartbeat.workers_liveness(ids[-1] for _, ids, _ in running if ids)
    no_heartbeat_cutoff = timezone.now() - timedelta(
        seconds=settings.PAYMENTS_STUCK_AFTER
    )
    released = 0
    for job_id, worker_ids, started_at in running:
        holder = worker_ids[-1] if worker_ids else None
        alive = liveness.get(holder) if holder is not None else None
        if alive is None:
            alive = started_at >= no_heartbeat_cutoff
        if not alive and _release(job_id, started_at, holder):
            released += 1
    return released


def tasks_release_held_by(worker_id: str) -> int:
    """At a worker's start: run again the jobs an earlier run of its id left.

    A worker that is starting holds no job, so any RUNNING job claimed under
    its id was abandoned by a previous process with the same --worker-id
    (a container restarted, say), whose heartbeat row it is about to renew.
    """
    return sum(
        _release(job_id, started_at, worker_id)
        for job_id, worker_ids, started_at in _running_payment_jobs()
        if worker_ids and worker_ids[-1] == worker_id
    )


def recover_once() -> RecoveryRound:
    """Run one round of recovery.

    Dead workers' jobs first: a payment whose job is RUNNING is never taken
    as stuck, so releasing it is the only way it is enqueued again.
    """
    released = tasks_release_abandoned()
    heartbeat.heartbeats_prune()
    return RecoveryRound(
        recovered=services.payment_recover_stuck(),
        pushed=services.payment_events_redeliver(),
        released=released,
    )


def _recovery_round() -> None:
    outcome = recover_once()
    if any(outcome):
        logger.info(
            "recovery: %d stuck payments re-enqueued, %d re-pushed, "
            "%d abandoned jobs released",
            *outcome,
        )


class RecoveryLoop(PeriodicThread):
    """Run a recovery round at once, then every ``interval`` seconds."""

    def __init__(self, interval: float) -> None:
        super().__init__(
            name="payments-recovery", interval=interval, work=_recovery_round
        )


@contextmanager
def recovery_running() -> Iterator[RecoveryLoop]:
    loop = RecoveryLoop(settings.PAYMENTS_RECOVERY_INTERVAL)
    loop.start()
    try:
        yield loop
    finally:
        loop.stop()
