"""Count channels-redis's dropped group messages (a logging filter), and warn."""

from __future__ import annotations

import logging

from realtime.notify import stats


class DroppedMessageCounter(logging.Filter):
    """Count group_send messages dropped for full channels; log them as warnings.

    channels-redis drops a group message for every member channel that is at
    capacity and says so only at INFO ("N of M channels over capacity in group
    G"). Those are frames some socket will never get live.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if "over capacity" in str(record.msg) and record.args:
            stats["dropped"] += int(record.args[0])  # type: ignore[index]
            record.levelno = logging.WARNING
            record.levelname = logging.getLevelName(logging.WARNING)
        return True
