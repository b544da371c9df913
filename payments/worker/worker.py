"""django-tasks-db's worker, woken by enqueues instead of sleeping its interval."""

from __future__ import annotations

import random
import signal
import time
from types import FrameType

from django.conf import settings
from django.db import close_old_connections, connections
from django.db.models import QuerySet
from django.db.utils import OperationalError
from django.tasks import TaskResultStatus
from django.utils import timezone
from django_tasks_db.management.commands.db_worker import Worker, logger
from django_tasks_db.models import DBTaskResult, get_date_max
from django_tasks_db.utils import exclusive_transaction, is_locked_database_exception

from payments import selectors, services
from payments.worker.wakeup import WakeupListener

# The settle sweep (services.payments_settle_due) looks for due outcomes at
# most this often while jobs keep the worker busy (seconds; an idle worker's
# wait ends when the next is due), and takes this many payments per
# transaction. A look that finds nothing due is one query; one that does,
# two transactions for the batch: at 50 payments/s settling 10 s after their
# charge, looking every 0.1 s settles about five per sweep and delays an
# outcome 50 ms on average.
SETTLE_CHECK_INTERVAL = 0.1
SETTLE_BATCH = 100


def keep_connections_between_jobs() -> None:
    """Let this thread keep its database connections between jobs.

    With CONN_MAX_AGE 0 (PostgreSQL with its pool turned off, say) the worker
    loop's close_old_connections would close and reopen the connection
    around every job; the worker keeps it TASKS_WORKER_CONN_MAX_AGE seconds
    whatever DJANGO_CONN_MAX_AGE says. A pooled connection (PostgreSQL's
    default here) goes back to its pool instead, which is already cheap, and
    pooling excludes CONN_MAX_AGE.
    """
    for connection in connections.all():
        if not connection.settings_dict.get("OPTIONS", {}).get("pool"):
            connection.settings_dict["CONN_MAX_AGE"] = (
                settings.TASKS_WORKER_CONN_MAX_AGE
            )


class WakeableWorker(Worker):
    """Run jobs as django-tasks-db's Worker does; wait for a wake-up when idle.

    ``run`` is django-tasks-db 0.13's loop (requirements pin it) with two
    changes. Where the original sleeps ``interval`` after finding no job, this
    waits on payments.worker.wakeup until the next deferred job or payment
    outcome is due, at most ``interval``; polling stays as the fallback, so
    ``--interval`` bounds the delay when a wake-up is lost. And between jobs
    it runs the settle sweep, which asks the gateway for every charge whose
    outcome is due in one batch: a deferred job per payment cost a claim, a
    run and a result each.
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.wakeups = WakeupListener()
        self._waiting = False
        self._settle_check_at = 0.0

    def run(self) -> None:
        keep_connections_between_jobs()
        # Subscribed before the first look at the queue: a job enqueued
        # between that look and the first wait still wakes this worker.
        self.wakeups.subscribe()
        logger.info(
            "Starting worker worker_id=%s queues=%s",
            self.worker_id,
            ",".join(self.queue_names),
        )
        if self.startup_delay and self.interval:
            # Avoid a thundering herd of workers started together.
            time.sleep(random.random())  # noqa: S311
        try:
            while self.running:
                close_old_connections()
                self._settle_due()
                if not self.running:
                    break  # SIGTERM during the sweep: no new job
                task_result = self._claim()
                if task_result is not None:
                    self.run_task(task_result)
                if self.max_tasks is not None and self._run_tasks >= self.max_tasks:
                    logger.info(
                        "Run maximum tasks (%d) on worker=%s - exiting gracefully.",
                        self._run_tasks,
                        self.worker_id,
                    )
                    return
                close_old_connections()
                if self.running and task_result is None:
                    timeout = self._idle_timeout()
                    self._waiting = True
                    try:
                        if self.running:
                            self.wakeups.wait(timeout)
                    finally:
                        self._waiting = False
        finally:
            self.wakeups.close()

    def shutdown(self, signum: int, frame: FrameType | None) -> None:
        if self.running and not self.running_task and not self._waiting:
            # Between jobs but inside a database call (claiming a job, timing
            # the wait). The original exits right here, mid-transaction: a
            # traceback, and a job claimed but never run until recovery.
            # Finish the call instead (and run the job it claimed), then stop.
            logger.warning(
                "Received %s - shutting down after the current step...",
                signal.strsignal(signum),
            )
            self.running = False
            return
        super().shutdown(signum, frame)

    def _tasks(self) -> QuerySet[DBTaskResult]:
        tasks = DBTaskResult.objects.filter(backend_name=self.backend_name)
        if not self.process_all_queues:
            tasks = tasks.filter(queue_name__in=self.queue_names)
        if self.excluded_queue_names:
            tasks = tasks.exclude(queue_name__in=self.excluded_queue_names)
        return tasks

    def _settle_due(self) -> None:
        now = time.monotonic()
        if now < self._settle_check_at:
            return
        self._settle_check_at = now + SETTLE_CHECK_INTERVAL
        try:
            settled = services.payments_settle_due(limit=SETTLE_BATCH)
        except OperationalError as exc:
            # A locked SQLite database unlocks eventually; the next look
            # tries again. Anything else is the database going away: the
            # loop's jobs would fail the same way.
            if is_locked_database_exception(exc):
                return
            raise
        except Exception:
            # A bug, not an outage: the jobs can still run. Logged once an
            # interval, not every look.
            logger.exception("settle sweep failed; trying again")
            self._settle_check_at = now + self.interval
            return
        # A full batch: more may be due already.
        self._settle_check_at = now + (
            0.0 if settled >= SETTLE_BATCH else SETTLE_CHECK_INTERVAL
        )

    def _idle_timeout(self) -> float:
        """Wait until the next deferred job or outcome is due, at most ``interval``.

        Deferred jobs and charges waiting on the gateway wake nobody when
        their time comes, so the worker keeps their time itself instead of
        finding them up to an interval late.
        """
        now = timezone.now()
        job_due = (
            self._tasks()
            .filter(status=TaskResultStatus.READY, run_after__gt=now)
            .exclude(run_after=get_date_max())
            .order_by("run_after")
            .values_list("run_after", flat=True)
            .first()
        )
        waits = [self.interval]
        if job_due is not None:
            waits.append((job_due - now).total_seconds())
        settle_due = selectors.payment_next_settle_at()
        if settle_due is not None:
            # Not before the sweep may look again: a due payment it could not
            # take (another worker's, locked) must not spin this loop.
            waits.append(
                max(
                    (settle_due - now).total_seconds(),
                    self._settle_check_at - time.monotonic(),
                )
            )
        return max(0.0, min(waits))

    def _claim(self) -> DBTaskResult | None:
        tasks = self._tasks().ready()
        with exclusive_transaction(tasks.db):
            try:
                task_result = tasks.get_locked()
                if task_result is not None:
                    # Claimed, so no other worker process runs it.
                    task_result.claim(self.worker_id)
                return task_result
            except OperationalError as exc:
                # A locked SQLite database unlocks eventually; try again.
                if is_locked_database_exception(exc):
                    return None
                raise
