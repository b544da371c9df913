"""django-tasks-db's worker, woken by enqueues instead of sleeping its interval."""

from __future__ import annotations

import random
import signal
import time
import uuid
from collections.abc import Callable
from types import FrameType

from django.conf import settings
from django.db import close_old_connections, connections
from django.db.models import QuerySet
from django.db.utils import OperationalError
from django.dispatch import Signal
from django.tasks import TaskResultStatus, task_backends
from django.tasks.signals import task_finished, task_started
from django.utils import timezone
from django_tasks_db.management.commands.db_worker import Worker, logger
from django_tasks_db.models import DBTaskResult, get_date_max
from django_tasks_db.utils import (
    exclusive_transaction,
    is_locked_database_exception,
    retry,
)

from payments import selectors, services, tasks
from payments.worker.database import (
    DATABASE_RETRY_INTERVAL,
    STILL_AWAY_EVERY,
    is_database_unavailable,
)
from payments.worker.recovery import PAYMENT_TASKS, tasks_release_cut_short
from payments.worker.wakeup import WakeupListener, wake_workers

# The settle sweep (services.payments_settle_due) looks for due outcomes at
# most this often while jobs keep the worker busy (seconds; an idle worker's
# wait ends when the next is due), and takes this many payments per
# transaction. A look that finds nothing due is one query; one that does,
# two transactions for the batch: at 50 payments/s settling 10 s after their
# charge, looking every 0.1 s settles about five per sweep and delays an
# outcome 50 ms on average.
SETTLE_CHECK_INTERVAL = 0.1
SETTLE_BATCH = 100
# Jobs claimed per transaction. The payments of the process_payment jobs
# among them are processed together (services.payments_process): a commit
# per step for the batch, where one job at a time cost a claim, three
# transitions' commits and a result each. A worker takes what is queued, so
# a busy queue makes the batches and an idle one runs each job as it comes.
CLAIM_BATCH = 50
# Seconds of gateway calls after which a batch (or a settle sweep) stops and
# leaves what it has not reached to the next: with a provider that takes
# 300 ms a call, the fiftieth payment of a batch would wait 15 s in one worker
# while the others found the queue empty. The jobs go back in the queue and
# wake the other workers, and this worker's next claims take only as many as
# it charged in the time, so the others get the rest. The simulated gateway
# charges a batch of 50 in well under this.
BATCH_CHARGE_TIME = 1.0
PROCESS_PAYMENT = tasks.process_payment.module_path


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

    ``run`` is django-tasks-db 0.13's loop (requirements pin it) with three
    changes. Where the original sleeps ``interval`` after finding no job, this
    waits on payments.worker.wakeup until the next deferred job or payment
    outcome is due, at most ``interval``; polling stays as the fallback, so
    ``--interval`` bounds the delay when a wake-up is lost. Between jobs
    it runs the settle sweep, which asks the gateway for every charge whose
    outcome is due in one batch: a deferred job per payment cost a claim, a
    run and a result each. And where the original ends at the database's
    first error, this waits out an outage (payments.worker.database) and
    goes on.
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.wakeups = WakeupListener()
        self._waiting = False
        self._settle_check_at = 0.0
        # Jobs the next claim takes: cut to what a batch charged in
        # BATCH_CHARGE_TIME once one ran out of it, doubled back after each
        # that did not.
        self._claim_limit = CLAIM_BATCH
        # When the database went away, while it is, and when that was last
        # said (monotonic clock).
        self._database_lost_at: float | None = None
        self._database_said_at = 0.0
        # The (pk, started_at) of the payment jobs of the batch in hand.
        self._cut_short: list[tuple[object, object]] = []

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
            while self.running and not self._ran_max_tasks():
                try:
                    timeout = self._round()
                except OperationalError as exc:
                    if not is_database_unavailable(exc):
                        raise  # a fault, not an outage: as django-tasks-db's loop
                    timeout = self._database_away(exc)
                else:
                    self._database_back()
                if timeout is not None and self.running:
                    self._idle(timeout)
            if self._ran_max_tasks():
                logger.info(
                    "Run maximum tasks (%d) on worker=%s - exiting gracefully.",
                    self._run_tasks,
                    self.worker_id,
                )
        finally:
            self.wakeups.close()
            if self._cut_short:
                # Stopping in an outage: if the database is back, the jobs
                # run again now rather than at another worker's recovery.
                try:
                    tasks_release_cut_short(self._cut_short, self.worker_id)
                except OperationalError as exc:
                    logger.warning("cut-short jobs left to recovery: %r", exc)

    def _round(self) -> float | None:
        """The sweep, then a claim and its jobs; return how long to idle, if at all."""
        close_old_connections()
        if self._cut_short:
            tasks_release_cut_short(self._cut_short, self.worker_id)
            self._cut_short = []
        self._settle_due()
        if not self.running:
            return None  # SIGTERM during the sweep: no new job
        claimed = self._claim_batch()
        if claimed:
            # Until the batch ends: an outage that cuts it short leaves these
            # RUNNING under a live worker, whose jobs no other worker takes.
            self._cut_short = [
                (job.pk, job.started_at)
                for job in claimed
                if job.task_path.startswith(PAYMENT_TASKS)
            ]
            self._run_claimed(claimed)
            self._cut_short = []
        close_old_connections()
        if claimed or not self.running or self._ran_max_tasks():
            return None
        return self._idle_timeout()

    def _ran_max_tasks(self) -> bool:
        return self.max_tasks is not None and self._run_tasks >= self.max_tasks

    def _idle(self, timeout: float) -> None:
        self._waiting = True
        try:
            if self.running:
                # The e2e tests wait for this line: the worker is idle, so
                # only a wake-up can start a job.
                logger.debug("idle; waiting up to %.2f s", timeout)
                self.wakeups.wait(timeout)
        finally:
            self._waiting = False

    def _database_away(self, exc: OperationalError) -> float:
        """Say that the database is away; return how long to wait before trying.

        A restart or a failover ends, and this worker goes on where it was;
        the jobs of a batch the outage cut short run again first (_round).
        Its lease bounds the wait, not this loop: renewals fail meanwhile,
        and past TASKS_WORKER_DEAD_AFTER less an interval the heartbeat ends
        the process (LEASE_LOST_EXIT) before another worker may take its jobs.
        """
        now = time.monotonic()
        if self._database_lost_at is None:
            self._database_lost_at = self._database_said_at = now
            logger.warning(
                "database unavailable (%r); trying again %.1f s after each try",
                exc,
                DATABASE_RETRY_INTERVAL,
            )
        elif now - self._database_said_at >= STILL_AWAY_EVERY:
            self._database_said_at = now
            logger.warning(
                "database still unavailable after %.0f s (%r)",
                now - self._database_lost_at,
                exc,
            )
        connections.close_all()
        return DATABASE_RETRY_INTERVAL

    def _database_back(self) -> None:
        if self._database_lost_at is not None:
            logger.warning(
                "database available again after %.1f s",
                time.monotonic() - self._database_lost_at,
            )
            self._database_lost_at = None

    def shutdown(self, signum: int, frame: FrameType | None) -> None:
        if self.running and not self.running_task and not self._waiting:
            # Between jobs but inside a database call (claiming a job, timing
            # the wait). The original exits right here, mid-transaction: a
            # traceback, and a job claimed but never run until recovery.
            # Finish the call instead, then stop (what it claimed goes back
            # in the queue, _run_claimed).
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
            settled = services.payments_settle_due(
                limit=SETTLE_BATCH, stopping=self._batch_stopping()
            )
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

    def _stopping(self) -> bool:
        """Told to stop (SIGTERM): finish the gateway call in hand, ask no other."""
        return not self.running

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

    def _claim_batch(self) -> list[DBTaskResult]:
        """Claim up to _claim_limit ready jobs (at most what --max-tasks leaves)."""
        limit = self._claim_limit
        if self.max_tasks is not None:
            limit = min(limit, self.max_tasks - self._run_tasks)
        tasks = self._tasks().ready()
        with exclusive_transaction(tasks.db):
            try:
                claimed = list(tasks.select_for_update(skip_locked=True)[:limit])
            except OperationalError as exc:
                # A locked SQLite database unlocks eventually; try again.
                if is_locked_database_exception(exc):
                    return []
                raise
            # Claimed, so no other worker process runs them: DBTaskResult.claim
            # for each, in one UPDATE per earlier list of workers (a job run
            # before has its own; new ones share the empty list), not
            # bulk_update's CASE with a WHEN per job.
            now = timezone.now()
            by_workers: dict[tuple[str, ...], list[DBTaskResult]] = {}
            for job in claimed:
                job.status = TaskResultStatus.RUNNING
                job.started_at = now
                by_workers.setdefault(tuple(job.worker_ids), []).append(job)
                job.worker_ids = [*job.worker_ids, self.worker_id]
            for earlier, jobs in by_workers.items():
                DBTaskResult.objects.filter(pk__in=[job.pk for job in jobs]).update(
                    status=TaskResultStatus.RUNNING,
                    started_at=now,
                    worker_ids=[*earlier, self.worker_id],
                )
        return claimed

    def _run_claimed(self, claimed: list[DBTaskResult]) -> None:
        """Run claimed jobs: process_payment's together, any other one by one.

        Told to stop, it runs no other job: those not started yet go back in
        the queue.
        """
        payment_jobs, others = [], []
        for job in claimed:
            (payment_jobs if _is_plain_payment_job(job) else others).append(job)
        for index, job in enumerate(others):
            if self._stopping():
                self._requeue([*others[index:], *payment_jobs])
                return
            self.run_task(job)
        if payment_jobs and self._stopping():
            self._requeue(payment_jobs)
        elif payment_jobs:
            self._run_payment_jobs(payment_jobs)

    def _requeue(self, jobs: list[DBTaskResult]) -> None:
        _jobs_requeue(jobs)
        if self._stopping():
            logger.warning(
                "shutting down: %d claimed job(s) back in the queue", len(jobs)
            )
        else:
            logger.info(
                "batch took %.1f s or more: %d job(s) back in the queue",
                BATCH_CHARGE_TIME,
                len(jobs),
            )
        wake_workers()  # an idle worker takes them now, not at its next poll

    def _run_payment_jobs(self, jobs: list[DBTaskResult]) -> None:
        """Run process_payment jobs as one batch; record each job's result.

        As run_task does for one job: task_started and task_finished are sent
        for each job; a job whose payment's charge raised is failed with that
        error (recovery enqueues its payment again at its deadline), the
        others succeed, in one UPDATE; an error of the whole batch (the
        database went away) fails the jobs whose result was not stored yet.
        Told to stop, or once it has charged for BATCH_CHARGE_TIME, the
        worker finishes the charge in hand and puts the jobs it did not get
        to back in the queue, for the next worker to run at once: those were
        sent task_started (their payments moved to processing with the
        batch) and no task_finished, since they did not finish; their next
        run sends task_started again.
        """
        self.running_task = True
        unrun: list[DBTaskResult] = []
        stored: set[uuid.UUID] = set()  # pks of the jobs whose result is stored
        try:
            self._send_each(task_started, jobs)
            payment_ids = [_job_payment_id(job) for job in jobs]
            answers = services.payments_process(
                payment_ids=payment_ids, stopping=self._batch_stopping()
            )
            not_asked = set(answers.not_asked)
            succeeded = []
            for job, payment_id in zip(jobs, payment_ids, strict=True):
                if payment_id in answers.errors:
                    error = answers.errors[payment_id]
                    job.set_failed(error)
                    stored.add(job.pk)
                    self._send_finished(job, error)
                elif payment_id in not_asked:
                    unrun.append(job)
                else:
                    succeeded.append(job)
            _jobs_set_successful(succeeded)
            stored.update(job.pk for job in succeeded)
            self._send_each(task_finished, succeeded)
            if unrun:
                self._claim_limit = max(1, len(jobs) - len(unrun))
                self._requeue(unrun)
            else:
                self._claim_limit = min(CLAIM_BATCH, self._claim_limit * 2)
        except (SystemExit, KeyboardInterrupt):
            # A second SIGTERM (django-tasks-db's shutdown exits mid-charge):
            # the jobs are run again, not failed and left to recovery. Those
            # already done find their payments terminal; the charge cut short
            # is made again through the gateway's idempotency.
            _jobs_requeue(jobs)
            raise
        except BaseException as exc:  # as run_task: recorded, not raised
            # Each job's task_finished logs the traceback (django.tasks).
            logger.error("payment jobs failed: %s", [str(job.id) for job in jobs])
            # A stored result stands: a charged job is not failed afterwards
            # (the put-back failing, say) nor finished twice.
            unstored = [job for job in jobs if job.pk not in stored]
            for job in unstored:
                job.set_failed(exc)
            self._send_each(task_finished, unstored)
        finally:
            self.running_task = False
            self._run_tasks += len(jobs) - len(unrun)

    def _batch_stopping(self) -> Callable[[], bool]:
        """A batch's or sweep's stopping(): told to stop, or BATCH_CHARGE_TIME up.

        The time runs from the first gateway call, which is always made: a
        batch held up before it (a slow database) still moves the queue on.
        """
        first_call: float | None = None

        def stopping() -> bool:
            nonlocal first_call
            if self._stopping():
                return True
            if first_call is None:
                first_call = time.monotonic()
                return False
            return time.monotonic() - first_call >= BATCH_CHARGE_TIME

        return stopping

    def _send_each(self, job_signal: Signal, jobs: list[DBTaskResult]) -> None:
        """Send a job signal for each of a batch's jobs, as run_task does for one.

        send_robust, not run_task's send: a receiver that raises is logged
        (django.dispatch) instead of failing every job of the batch, charged
        or not.
        """
        sender = type(task_backends[self.backend_name])
        for job in jobs:
            job_signal.send_robust(sender=sender, task_result=job.task_result)

    def _send_finished(self, job: DBTaskResult, error: BaseException) -> None:
        """task_finished for a job failed by ``error``, with it as exc_info.

        run_task sends it inside its except, where receivers (Django's own
        log line among them) read the traceback from sys.exc_info().
        """
        try:
            raise error
        except BaseException:
            self._send_each(task_finished, [job])


def _job_payment_id(job: DBTaskResult) -> str:
    return str(uuid.UUID(job.args_kwargs["kwargs"]["payment_id"]))


def _is_plain_payment_job(job: DBTaskResult) -> bool:
    """A process_payment job with only the arguments this release knows.

    Any other (a malformed id, say) runs alone, so that its error is its own.
    """
    kwargs = job.args_kwargs.get("kwargs", {})
    if (
        job.task_path != PROCESS_PAYMENT
        or job.args_kwargs.get("args")
        or not set(kwargs) <= {"payment_id", "request_id"}
    ):
        return False
    try:
        _job_payment_id(job)
    except (KeyError, TypeError, ValueError, AttributeError):
        return False
    return True


@retry()
def _jobs_set_successful(jobs: list[DBTaskResult]) -> None:
    """DBTaskResult.set_successful for many jobs (which return None): one UPDATE."""
    if not jobs:
        return
    now = timezone.now()
    DBTaskResult.objects.filter(pk__in=[job.pk for job in jobs]).update(
        status=TaskResultStatus.SUCCESSFUL,
        finished_at=now,
        return_value=None,
        exception_class_path="",
        traceback="",
    )
    for job in jobs:  # as set_successful leaves them, for task_finished
        job.status = TaskResultStatus.SUCCESSFUL
        job.finished_at = now
        job.return_value = None
        job.exception_class_path = job.traceback = ""


@retry()
def _jobs_requeue(jobs: list[DBTaskResult]) -> None:
    """Undo the claim of jobs this worker will not run: READY again, one UPDATE.

    Their payments stay processing; the job's next run charges them (through
    the gateway's idempotency, as after a crash).
    """
    DBTaskResult.objects.filter(
        pk__in=[job.pk for job in jobs], status=TaskResultStatus.RUNNING
    ).update(status=TaskResultStatus.READY, started_at=None)
