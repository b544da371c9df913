"""The worker's recovery loop: re-run lost jobs, re-push unsent changes."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import NamedTuple

from django.conf import settings
from django.tasks import TaskResultStatus
from django.utils import timezone
from django_tasks_db.models import DBTaskResult

from payments import services
from payments.background import PeriodicThread

logger = logging.getLogger(__name__)


class AbandonedTaskError(Exception):
    """The worker running this job stopped before it finished."""


class RecoveryRound(NamedTuple):
    recovered: int  # stuck payments whose job was enqueued again
    pushed: int  # payments whose unsent status changes were pushed
    released: int  # jobs left running by a dead worker, marked failed


def tasks_release_abandoned() -> int:
    """Mark payment jobs left RUNNING by a killed worker as failed.

    Their payments were already enqueued again by payment_recover_stuck (a
    job running this long has a stuck payment), so this only keeps the job
    list truthful. A job that was merely slow and finishes later records its
    own outcome over this one.
    """
    now = timezone.now()
    cutoff = now - timedelta(seconds=settings.PAYMENTS_STUCK_AFTER)
    return DBTaskResult.objects.filter(
        status=TaskResultStatus.RUNNING,
        started_at__lt=cutoff,
        task_path__startswith="payments.tasks.",
    ).update(
        status=TaskResultStatus.FAILED,
        finished_at=now,
        exception_class_path=f"{__name__}.{AbandonedTaskError.__qualname__}",
        traceback="The worker running this job stopped before it finished; "
        "the payment was recovered.",
    )


def recover_once() -> RecoveryRound:
    """Run one round of recovery."""
    return RecoveryRound(
        recovered=services.payment_recover_stuck(),
        pushed=services.payment_events_redeliver(),
        released=tasks_release_abandoned(),
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
