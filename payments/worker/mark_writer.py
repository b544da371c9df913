"""The worker's writer of outbox marks: one UPDATE for many pushed changes.

See payments.outbox for why marks are batched in db_worker.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from django.conf import settings

from payments.outbox import marks
from payments.worker.database import is_database_unavailable
from payments.worker.periodic import PeriodicThread

logger = logging.getLogger(__name__)


class MarkWriter(PeriodicThread):
    """Flush ``marks`` every ``interval`` seconds, and once more when stopped.

    A failed flush keeps its marks for the next round (up to MAX_PENDING);
    recovery re-pushes whatever is never marked.
    """

    def __init__(self, interval: float) -> None:
        super().__init__(
            name="payments-notified-marks",
            interval=interval,
            work=marks.flush,
            first_at_once=False,
            last_on_stop=True,
        )


@contextmanager
def marks_batched(interval: float | None = None) -> Iterator[MarkWriter]:
    """Batch the marks of this process while inside; write the last on exit."""
    writer = MarkWriter(interval or settings.PAYMENTS_NOTIFIED_MARK_INTERVAL)
    marks.start_batching()
    writer.start()
    try:
        yield writer
    finally:
        writer.stop()
        marks.stop_batching()
        # Whatever was added while the writer made its last flush; a
        # database away at shutdown leaves them to recovery, not a traceback.
        try:
            marks.flush()
        except Exception as exc:
            if is_database_unavailable(exc):
                logger.warning(
                    "writing the last marks failed, database unavailable (%r); "
                    "recovery re-pushes",
                    exc,
                )
            else:
                logger.exception("writing the last marks failed; recovery re-pushes")
