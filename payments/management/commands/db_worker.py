"""django-tasks-db's worker, with the payments recovery loop running beside it.

This app comes before django_tasks_db in INSTALLED_APPS, so this command
takes the name ``db_worker``; all of the original's options still apply.
"""

from typing import Any

from django_tasks_db.management.commands.db_worker import Command as DBWorkerCommand

from payments.recovery import recovery_running


class Command(DBWorkerCommand):
    help = (
        "Run a database background worker; alongside it, re-enqueue stuck "
        "payments and re-push status changes that were not delivered."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        with recovery_running():
            super().handle(*args, **options)
