"""The db_worker's heartbeat: a lease other workers read to tell it is alive.

django-tasks-db 0.13 records which worker claimed a job (``worker_ids``) but
not whether that worker still runs, so a job whose worker was SIGKILLed stays
RUNNING for ever. Each worker keeps a WorkerHeartbeat row fresh every
TASKS_WORKER_HEARTBEAT_INTERVAL seconds; recovery takes a worker whose row is
older than TASKS_WORKER_DEAD_AFTER as dead and runs its jobs again.

One clock: every time here is the database's (``Now()``), written and
compared in the same server, so the rule holds for workers on several
machines whatever their own clocks say. The worker times its lease with its
monotonic clock (durations only, so skew does not matter), from before each
renewal is sent: the database's expiry is then never earlier than the one the
worker keeps. If it cannot renew within the lease less one interval (database
away, the process starved) it exits, before any other worker may judge it
dead, so no job is run by two live workers at once. A renewal after the lease
has lapsed is refused, and the worker exits too (a process frozen past its
lease, by SIGSTOP or a paused VM, may finish the step it was in first: a
conditional transition or an idempotent gateway call, nothing more).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import timedelta

from django.conf import settings
from django.db import DatabaseError, connections
from django.db.models import DateTimeField, ExpressionWrapper, QuerySet, Value
from django.db.models.functions import Now

from payments.models import WorkerHeartbeat

logger = logging.getLogger(__name__)

# Rows of workers dead this long are deleted; until then operators (and
# /readyz) see which worker died and when.
KEEP_DEAD_FOR = timedelta(days=1)


def _db_time_ago(seconds: float | timedelta) -> ExpressionWrapper:
    delta = seconds if isinstance(seconds, timedelta) else timedelta(seconds=seconds)
    return ExpressionWrapper(Now() - Value(delta), output_field=DateTimeField())


def _lease_start(dead_after: float | None = None) -> ExpressionWrapper:
    """The oldest beat still alive, on the database's clock."""
    if dead_after is None:
        dead_after = settings.TASKS_WORKER_DEAD_AFTER
    return _db_time_ago(dead_after)


def _this_process() -> dict[str, object]:
    """The row's fields that say which process holds the lease."""
    return {"hostname": socket.gethostname()[:255], "pid": os.getpid()}


def _new_lease() -> dict[str, object]:
    """A lease held by this process, starting now on the database's clock."""
    return {**_this_process(), "started_at": Now(), "beat_at": Now()}


def heartbeat_register(*, worker_id: str) -> None:
    """Start (or restart) this worker's lease; call before it claims a job."""
    WorkerHeartbeat.objects.update_or_create(
        worker_id=worker_id,
        defaults=_new_lease(),
    )


def heartbeat_claim(*, worker_id: str) -> bool:
    """Take the lease of ``worker_id`` if no live worker holds it; True if taken.

    A new id's row is created; a lapsed one (its worker dead or stopped
    without dropping it) is taken over by one conditional UPDATE, so of two
    processes started under one id at once, one gets it.
    """
    taken = WorkerHeartbeat.objects.filter(
        worker_id=worker_id, beat_at__lt=_lease_start()
    ).update(**_new_lease())
    if taken:
        return True
    _, created = WorkerHeartbeat.objects.get_or_create(
        worker_id=worker_id,
        defaults=_new_lease(),
    )
    return created


def heartbeat_claim_waiting(*, worker_id: str) -> bool:
    """Claim the lease, waiting out one that may be a dead process's; True if taken.

    A worker restarted at once under its id finds its old lease still
    current for up to TASKS_WORKER_DEAD_AFTER seconds; a live worker under
    the same id keeps renewing it, and then this gives up (False) rather
    than release that worker's jobs to be run twice.
    """
    deadline = time.monotonic() + settings.TASKS_WORKER_DEAD_AFTER
    deadline += 2 * settings.TASKS_WORKER_HEARTBEAT_INTERVAL
    while not heartbeat_claim(worker_id=worker_id):
        if time.monotonic() > deadline:
            return False
        time.sleep(settings.TASKS_WORKER_HEARTBEAT_INTERVAL)
    return True


def heartbeat_renew(*, worker_id: str, dead_after: float | None = None) -> bool:
    """Extend the lease; False if it lapsed or another process took it over.

    Only this process's row (its pid and host): a process frozen past its
    lease, whose id a new process has claimed since, must not renew the new
    one's lease and live on beside it.
    """
    return bool(
        WorkerHeartbeat.objects.filter(
            worker_id=worker_id,
            **_this_process(),
            beat_at__gte=_lease_start(dead_after),
        ).update(beat_at=Now())
    )


def heartbeat_end(*, worker_id: str) -> None:
    """Drop the lease of a worker that stopped cleanly (its job in hand finished)."""
    WorkerHeartbeat.objects.filter(worker_id=worker_id).delete()


def heartbeats_prune() -> int:
    """Delete the rows of workers dead for over KEEP_DEAD_FOR; return how many."""
    deleted, _ = WorkerHeartbeat.objects.filter(
        beat_at__lt=_db_time_ago(KEEP_DEAD_FOR)
    ).delete()
    return deleted


def workers_alive() -> QuerySet[WorkerHeartbeat]:
    """The workers whose lease is current (for /readyz: at least one should be)."""
    return WorkerHeartbeat.objects.filter(beat_at__gte=_lease_start())


def workers_liveness(worker_ids: Iterable[str]) -> dict[str, bool]:
    """Map each of these workers that has a heartbeat row to whether it is alive.

    A worker with no row is missing from the answer: it stopped cleanly, was
    pruned, or runs without heartbeats (django-tasks-db's own db_worker, a
    release from before them).
    """
    ids = set(worker_ids)
    alive = set(
        workers_alive().filter(worker_id__in=ids).values_list("worker_id", flat=True)
    )
    known = WorkerHeartbeat.objects.filter(worker_id__in=ids)
    return {wid: wid in alive for wid in known.values_list("worker_id", flat=True)}


#: The worker's exit status when its lease is lost (scripts/devstack.py restarts
#: a worker that exits with it; it cannot import this module before Django).
LEASE_LOST_EXIT = 70


def _lost() -> None:
    logger.critical(
        "worker heartbeat lost; exiting so that the job in hand, if any, is run "
        "again by a live worker and never by two"
    )
    # Not sys.exit: this is a thread, and the job thread must stop now.
    os._exit(LEASE_LOST_EXIT)


class Heartbeat:
    """Renew a worker's lease in a daemon thread; call ``on_lost`` if it lapses.

    A second thread watches the time since the last renewal, so a renewal
    stuck in a hung database call still ends the worker in time. A
    ``dead_after`` of at least two intervals is a system check
    (payments.E007): with less, one slow renewal ends the worker.
    """

    def __init__(
        self,
        *,
        worker_id: str,
        interval: float,
        dead_after: float,
        on_lost: Callable[[], None] = _lost,
    ) -> None:
        self.worker_id = worker_id
        self.interval = interval
        self.dead_after = dead_after
        # Exit one interval before the database's expiry, never after it.
        self.budget = dead_after - interval
        self.on_lost = on_lost
        self._renewed = time.monotonic()
        self._stopped = threading.Event()
        self._threads = [
            threading.Thread(target=self._renew, name="heartbeat", daemon=True),
            threading.Thread(target=self._watch, name="heartbeat-watch", daemon=True),
        ]

    def start(self) -> None:
        sent = time.monotonic()
        heartbeat_register(worker_id=self.worker_id)
        self._renewed = sent
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopped.set()
        for thread in self._threads:
            thread.join(timeout)

    def _renew(self) -> None:
        while not self._stopped.wait(self.interval):
            sent = time.monotonic()
            try:
                renewed = heartbeat_renew(
                    worker_id=self.worker_id, dead_after=self.dead_after
                )
            except Exception as exc:  # whatever it is, the watch decides
                logger.warning("worker heartbeat not renewed: %r", exc)
                continue
            finally:
                connections.close_all()
            if not renewed:
                if not self._stopped.is_set():
                    self._stopped.set()
                    self.on_lost()
                return
            self._renewed = sent

    def _watch(self) -> None:
        # Looked at four times an interval: the lease's end is budget plus
        # one look, which must stay inside dead_after (budget + interval).
        while not self._stopped.wait(min(self.interval / 4, 0.5)):
            if time.monotonic() - self._renewed > self.budget:
                self._stopped.set()
                self.on_lost()
                return


@contextmanager
def heartbeat_running(worker_id: str) -> Iterator[Heartbeat]:
    """Hold this worker's lease for the block; drop it when the block ends."""
    heartbeat = Heartbeat(
        worker_id=worker_id,
        interval=settings.TASKS_WORKER_HEARTBEAT_INTERVAL,
        dead_after=settings.TASKS_WORKER_DEAD_AFTER,
    )
    heartbeat.start()
    try:
        yield heartbeat
    finally:
        heartbeat.stop()
        try:
            heartbeat_end(worker_id=worker_id)
        except DatabaseError as exc:
            # Stopping all the same: the row lapses by itself.
            logger.warning("worker heartbeat not dropped: %r", exc)
