"""django-tasks-db's worker, woken by enqueues, with a heartbeat and the recovery loop.

This app comes before django_tasks_db in INSTALLED_APPS, so this command
takes the name ``db_worker``; all of the original's options still apply.
"""

from __future__ import annotations

import os
from typing import Any

from django.core.management.base import CommandError
from django.utils.autoreload import DJANGO_AUTORELOAD_ENV, run_with_reloader
from django_tasks_db.management.commands.db_worker import Command as DBWorkerCommand

from ops.heap import freeze_startup_objects
from ops.metrics import serve_worker
from payments import services
from payments.worker import mark_writer
from payments.worker.database import wait_for_database
from payments.worker.heartbeat import (
    heartbeat_claim_waiting,
    heartbeat_end,
    heartbeat_running,
)
from payments.worker.recovery import recovery_running, tasks_release_held_by
from payments.worker.worker import WakeableWorker


def settle_all_due(batch: int = 100) -> None:
    """Settle every payment due now; a partial batch means none is left."""
    while services.payments_settle_due(limit=batch) == batch:
        pass


class Command(DBWorkerCommand):
    help = (
        "Run a database background worker, woken when a job is enqueued "
        "(--interval is the fallback poll); alongside it, keep a heartbeat, "
        "re-run the jobs of dead workers, re-enqueue stuck payments and re-push "
        "status changes that were not delivered; mark pushed changes in batches."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["reload"] and os.environ.get(DJANGO_AUTORELOAD_ENV) != "true":
            # The reloader's parent only restarts its child, which runs all
            # of this: a lease held here would make the child's claim wait.
            run_with_reloader(lambda: None)
            return
        worker_id = options["worker_id"]
        wait_for_database()
        if not heartbeat_claim_waiting(worker_id=worker_id):
            raise CommandError(
                f"--worker-id {worker_id}: a live worker holds this id's lease; "
                "give each worker its own id."
            )
        # The lease is ours: what a previous process of the same id left
        # RUNNING is nobody's now.
        tasks_release_held_by(worker_id)
        try:
            # Its counters live in this process: served here (METRICS_WORKER_PORT).
            metrics_server = serve_worker()
        except OSError:
            heartbeat_end(worker_id=worker_id)  # a restart need not wait it out
            raise
        try:
            with (
                heartbeat_running(worker_id),
                recovery_running(),
                mark_writer.marks_batched(),
            ):
                if options["batch"]:
                    # Runs what is queued and exits: nothing to wait for.
                    # django-tasks-db's loop has no settle sweep: what is
                    # due is settled here, before and after it.
                    settle_all_due()
                    super().handle(*args, **options)
                    settle_all_due()
                    return
                self._run_wakeable(**options)
        finally:
            if metrics_server is not None:
                metrics_server.shutdown()

    def _run_wakeable(self, **options: Any) -> None:
        # The original handle() builds its own Worker; this is that, for ours.
        self.configure_logging(options["verbosity"])
        queue_names = options["queue_name"].split(",")
        excluded = [q for q in options["exclude_queues"].split(",") if q]
        if excluded and "*" not in queue_names:
            raise CommandError("--exclude-queues can only be used with --queue-name=*")
        worker = WakeableWorker(
            queue_names=queue_names,
            interval=options["interval"],
            batch=False,
            backend_name=options["backend_name"],
            startup_delay=options["startup_delay"],
            max_tasks=options["max_tasks"],
            worker_id=options["worker_id"],
            excluded_queue_names=excluded,
        )
        freeze_startup_objects()
        if options["reload"]:
            if os.environ.get(DJANGO_AUTORELOAD_ENV) == "true":
                worker.configure_signals()  # in the reloaded child only
            run_with_reloader(worker.run)
        else:
            worker.configure_signals()
            worker.run()
