"""One recovery round by hand (or from cron): what the worker does every few seconds."""

from typing import Any

from django.core.management.base import BaseCommand

from payments.worker.recovery import recover_once


class Command(BaseCommand):
    help = (
        "Re-enqueue stuck payments, re-push undelivered status changes and "
        "release jobs abandoned by dead workers, once."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        outcome = recover_once()
        self.stdout.write(
            f"{outcome.recovered} stuck payments re-enqueued, "
            f"{outcome.pushed} payments re-pushed, "
            f"{outcome.released} abandoned jobs released"
        )
