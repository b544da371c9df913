"""The worker's recovery loop: re-run lost jobs, re-push unsent changes."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from django.conf import settings
from django.db import connections

from payments import services

logger = logging.getLogger(__name__)


def recover_once() -> tuple[int, int]:
    """Run one round; return (payments re-enqueued, payments re-pushed)."""
    return services.payment_recover_stuck(), services.payment_events_redeliver()


class RecoveryLoop(threading.Thread):
    """Call recover_once every PAYMENTS_RECOVERY_INTERVAL seconds until stopped."""

    def __init__(self, interval: float) -> None:
        super().__init__(name="payments-recovery", daemon=True)
        self.interval = interval
        self._stopped = threading.Event()

    def run(self) -> None:
        while not self._stopped.is_set():
            try:
                recovered, pushed = recover_once()
                if recovered or pushed:
                    logger.info(
                        "recovery: %d stuck payments re-enqueued, %d re-pushed",
                        recovered,
                        pushed,
                    )
            except Exception:
                logger.exception("recovery round failed; retrying next round")
            finally:
                connections.close_all()
            self._stopped.wait(self.interval)

    def stop(self, timeout: float = 10.0) -> None:
        self._stopped.set()
        self.join(timeout)


@contextmanager
def recovery_running() -> Iterator[RecoveryLoop]:
    loop = RecoveryLoop(settings.PAYMENTS_RECOVERY_INTERVAL)
    loop.start()
    try:
        yield loop
    finally:
        loop.stop()
