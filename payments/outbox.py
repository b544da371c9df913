"""Marking pushed status changes (``PaymentEvent.notified_at``), in batches.

A change is pushed once its transaction commits, then marked so recovery
does not push it again. Marked one by one, that is a write transaction per
change after its push: on SQLite, two turns a payment at the database's
single write lock. The worker marks in batches instead: the pushing thread
only notes the ids, and a thread of its own writes them all in one UPDATE
every PAYMENTS_NOTIFIED_MARK_INTERVAL seconds. Marks not yet written when
the worker dies are lost, so those changes are pushed again by recovery:
sockets drop versions they already have, so at worst a duplicate frame is
sent and dropped, never a change lost. Elsewhere (the web process, scripts)
a mark is written at once, as before.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from django.conf import settings
from django.db import connections
from django.utils import timezone

from payments.models import PaymentEvent

logger = logging.getLogger(__name__)


class NotifiedMarks:
    """Pushed events not yet marked; written at once unless batching."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: list[int] = []
        self.batching = False

    def add(self, event_ids: Iterable[int]) -> None:
        if not self.batching:
            _write(list(event_ids))
            return
        with self._lock:
            self._pending.extend(event_ids)

    def flush(self) -> int:
        """Write every pending mark in one UPDATE; return how many."""
        with self._lock:
            ids, self._pending = self._pending, []
        if ids:
            _write(ids)
        return len(ids)


def _write(event_ids: list[int]) -> None:
    PaymentEvent.objects.filter(pk__in=event_ids, notified_at__isnull=True).update(
        notified_at=timezone.now()
    )


marks = NotifiedMarks()


class MarkWriter(threading.Thread):
    """Flush ``marks`` every ``interval`` seconds, and once more when stopped."""

    def __init__(self, interval: float) -> None:
        super().__init__(name="payments-notified-marks", daemon=True)
        self.interval = interval
        self._stopped = threading.Event()

    def run(self) -> None:
        try:
            while not self._stopped.wait(self.interval):
                self._flush()
            self._flush()
        finally:
            connections.close_all()

    def _flush(self) -> None:
        try:
            marks.flush()
        except Exception:
            # Those changes stay unmarked and recovery pushes them again.
            logger.exception("writing notified marks failed; recovery re-pushes")

    def stop(self, timeout: float = 10.0) -> None:
        self._stopped.set()
        self.join(timeout)


@contextmanager
def marks_batched(interval: float | None = None) -> Iterator[MarkWriter]:
    """Batch the marks of this process while inside; write the last on exit."""
    writer = MarkWriter(interval or settings.PAYMENTS_NOTIFIED_MARK_INTERVAL)
    marks.batching = True
    writer.start()
    try:
        yield writer
    finally:
        marks.batching = False
        writer.stop()
