"""One recovery round by hand (or from cron): what the worker does every few seconds."""

from typing import Any

from django.core.management.base import BaseCommand

from payments.recovery import recover_once


class Command(BaseCommand):
    help = "Re-enqueue stuck payments and re-push undelivered status changes once."

    def handle(self, *args: Any, **options: Any) -> None:
        recovered, pushed = recover_once()
        self.stdout.write(
            f"{recovered} stuck payments re-enqueued, {pushed} payments re-pushed"
        )
