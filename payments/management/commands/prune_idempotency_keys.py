"""Delete expired Idempotency-Key records (run daily, e.g. from cron)."""

from typing import Any

from django.core.management.base import BaseCommand

from payments.api.idempotency import idempotency_keys_prune


class Command(BaseCommand):
    help = "Delete Idempotency-Key records older than PAYMENTS_IDEMPOTENCY_KEY_TTL."

    def handle(self, *args: Any, **options: Any) -> None:
        self.stdout.write(
            f"{idempotency_keys_prune()} expired idempotency keys deleted"
        )
