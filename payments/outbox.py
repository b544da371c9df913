"""Marking pushed status changes (``PaymentEvent.notified_at``), in batches.

A change is pushed once its transaction commits, then marked so recovery
does not push it again. Marked one by one, that is a write transaction per
change after its push, two a payment. The worker marks in batches instead:
the pushing thread only notes the ids, and a thread of its own writes them
all in one UPDATE every PAYMENTS_NOTIFIED_MARK_INTERVAL seconds
(payments.worker.mark_writer). Marks not yet written when
the worker dies are lost, so those changes are pushed again by recovery:
sockets drop versions they already have, so at worst a duplicate frame is
sent and dropped, never a change lost. Elsewhere (the web process, scripts)
a mark is written at once, as before.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from django.utils import timezone

from payments.models import PaymentEvent


class NotifiedMarks:
    """Pushed events not yet marked; written at once unless batching."""

    # Ids per UPDATE: far below SQLite's and PostgreSQL's parameter limits.
    CHUNK = 500
    # Ids kept for another try when a write fails; beyond this, recovery's
    # re-push (a duplicate frame, dropped by the socket) is the cheaper way.
    MAX_PENDING = 50_000

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards _pending and batching
        self._write_lock = threading.Lock()  # one flush at a time
        self._pending: list[int] = []
        self.batching = False

    def add(self, event_ids: Iterable[int]) -> None:
        with self._lock:
            if self.batching:
                self._pending.extend(event_ids)
                return
        _write(list(event_ids))

    def flush(self) -> int:
        """Write every pending mark; return how many.

        A flush waits for one in progress, so a caller (recovery) that
        flushes and then looks for unmarked changes sees that one's marks.
        """
        with self._write_lock:
            with self._lock:
                ids, self._pending = self._pending, []
            for start in range(0, len(ids), self.CHUNK):
                try:
                    _write(ids[start : start + self.CHUNK])
                except Exception:
                    with self._lock:
                        room = self.MAX_PENDING - len(self._pending)
                        self._pending[:0] = ids[start:][: max(room, 0)]
                    raise
        return len(ids)

    def start_batching(self) -> None:
        with self._lock:
            self.batching = True

    def stop_batching(self) -> None:
        with self._lock:
            self.batching = False


def _write(event_ids: list[int]) -> None:
    PaymentEvent.objects.filter(pk__in=event_ids, notified_at__isnull=True).update(
        notified_at=timezone.now()
    )


marks = NotifiedMarks()
