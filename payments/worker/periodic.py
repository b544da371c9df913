"""A worker-side background loop: one piece of work every few seconds."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from django.db import connections

from payments.worker.database import is_database_unavailable

logger = logging.getLogger(__name__)


class PeriodicThread(threading.Thread):
    """Call ``work`` every ``interval`` seconds in a daemon thread until stopped.

    Each round opens its database connections afresh and closes them after,
    so a database restart costs one failed round and a pooled connection is
    not held between rounds. A round that raises is logged; the next runs.
    """

    def __init__(
        self,
        *,
        name: str,
        interval: float,
        work: Callable[[], object],
        first_at_once: bool = True,
        last_on_stop: bool = False,
    ) -> None:
        super().__init__(name=name, daemon=True)
        self.interval = interval
        self.work = work
        self.first_at_once = first_at_once
        self.last_on_stop = last_on_stop
        self._stopped = threading.Event()

    def run(self) -> None:
        if self.first_at_once:
            self._round()
        while not self._stopped.wait(self.interval):
            self._round()
        if self.last_on_stop:
            self._round()

    def _round(self) -> None:
        try:
            self.work()
        except Exception as exc:
            if is_database_unavailable(exc):
                # The database away (a restart, a failover) is no bug: said
                # in a line, not a traceback every round until it is back.
                logger.warning(
                    "%s: round failed, database unavailable (%r); retrying next round",
                    self.name,
                    exc,
                )
            else:
                logger.exception("%s: round failed; retrying next round", self.name)
        finally:
            connections.close_all()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopped.set()
        self.join(timeout)
