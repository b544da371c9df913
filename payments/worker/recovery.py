"""The worker's recovery loop: re-run dead workers' and lost jobs, re-push changes."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import NamedTuple

from django.conf import settings
from django.db import transaction
from django.tasks import TaskResultStatus
from django.utils import timezone
from django_tasks_db.models import DBTaskResult

from payments import outbox, selectors, services, tasks
from payments.models import Payment, PaymentEvent, PaymentStatus
from payments.worker import heartbeat
from payments.worker.periodic import PeriodicThread

logger = logging.getLogger(__name__)


class AbandonedTaskError(Exception):
    """The worker running this job stopped before it finished."""


class RecoveryRound(NamedTuple):
    recovered: int  # stuck payments whose job was enqueued again
    pushed: int  # payments whose unsent status changes were pushed
    released: int  # jobs left running by a dead worker, failed and enqueued again


PAYMENT_TASKS = "payments.tasks."


def payment_recover_stuck(*, limit: int = 500) -> int:
    """Enqueue processing again for payments whose job was lost; return how many.

    A payment is stuck when it is still pending or processing past its
    ``recheck_at`` and has no open job: none queued (READY, deferred ones
    included) and none RUNNING, and it does not wait for the settle sweep
    (``settle_at`` set). Its job then failed or is gone; a dead
    worker's RUNNING job is recovery.tasks_release_abandoned's to re-run. A
    payment past its deadline with an open job (a backlog, workers away) only
    has its deadline moved on, so a backlog is never enqueued twice. Running
    a job again is safe: transitions are conditional and the gateway charge
    is idempotent on the payment id. Each payment is claimed by a conditional
    UPDATE, so recovery running in several workers enqueues it once.
    """
    now = timezone.now()
    candidates = list(
        Payment.objects.filter(
            status__in=[PaymentStatus.PENDING, PaymentStatus.PROCESSING],
            recheck_at__lt=now,
        )
        .order_by("recheck_at")
        .values_list("pk", "recheck_at", "settle_at")[:limit]
    )
    if not candidates:
        return 0
    # One statement, one snapshot of the open jobs. A payment handed from
    # its job to the settle sweep, or from the sweep back, changes its
    # recheck_at as it goes, so the conditional claim below fails for a
    # candidate read before the hand-over.
    open_jobs = selectors.payment_ids_with_open_job(
        payment_ids=[pk for pk, _, _ in candidates]
    )
    recovered = 0
    for payment_id, recheck_at, settle_at in candidates:
        with transaction.atomic():
            claimed = Payment.objects.filter(
                pk=payment_id, recheck_at=recheck_at
            ).update(recheck_at=services.stuck_deadline())
            # Waiting for the settle sweep is not lost: the sweep runs in
            # every worker, as this does.
            lost = str(payment_id) not in open_jobs and settle_at is None
            if claimed and lost:
                tasks.process_payment.enqueue(payment_id=str(payment_id))
                recovered += 1
                logger.warning("payment %s was stuck; processing again", payment_id)
    return recovered


def payment_events_redeliver(*, limit: int = 500) -> int:
    """Push status changes whose first push failed; return payments pushed.

    Each payment's current state is sent once for all its unsent changes;
    sockets drop versions they already have.
    """
    # Changes this process pushed but has not marked yet are not unsent.
    outbox.marks.flush()
    cutoff = timezone.now() - timedelta(seconds=settings.PAYMENTS_REDELIVER_AFTER)
    pending = PaymentEvent.objects.filter(
        notified_at__isnull=True, created_at__lt=cutoff
    ).values_list("pk", "payment_id")[:limit]
    by_payment: dict[uuid.UUID, list[int]] = {}
    for event_id, payment_id in pending:
        by_payment.setdefault(payment_id, []).append(event_id)
    pushed = 0
    for payment in Payment.objects.filter(pk__in=by_payment):
        if not services.payment_notify(
            payment=payment, event_ids=by_payment[payment.pk]
        ):
            break  # the channel layer is still away; try on the next round
        pushed += 1
    return pushed


def _running_payment_jobs() -> list[tuple[object, list[str], datetime]]:
    return list(
        DBTaskResult.objects.filter(
            status=TaskResultStatus.RUNNING, task_path__startswith=PAYMENT_TASKS
        ).values_list("pk", "worker_ids", "started_at")
    )


def _release(
    job_id: object,
    started_at: datetime,
    holder: str | None,
    why: str = "stopped before it finished",
) -> bool:
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
            traceback=f"The worker running this job ({holder}) {why}; the job "
            "was enqueued again.",
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
    that worker's heartbeat lapsed (TASKS_WORKER_DEAD_AFTER, payments.worker.heartbeat),
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


def tasks_release_cut_short(
    claims: Iterable[tuple[object, datetime]], worker_id: str
) -> int:
    """Run again the jobs of a batch the database's outage cut short.

    ``claims`` are the (pk, started_at) of the jobs the worker claimed for
    the batch; those whose result was stored are no longer RUNNING, and a
    job claimed again since (by a worker that took this one's lapsed lease)
    has another started_at: neither is touched.
    """
    return sum(
        _release(pk, started_at, worker_id, why="lost its database mid-batch")
        for pk, started_at in claims
    )


def recover_once() -> RecoveryRound:
    """Run one round of recovery.

    Dead workers' jobs first: a payment whose job is RUNNING is never taken
    as stuck, so releasing it is the only way it is enqueued again.
    """
    released = tasks_release_abandoned()
    heartbeat.heartbeats_prune()
    return RecoveryRound(
        recovered=payment_recover_stuck(),
        pushed=payment_events_redeliver(),
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
