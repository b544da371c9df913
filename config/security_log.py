"""One line per refused suspicious request, not a traceback.

Django logs every SuspiciousOperation it answers itself (a foreign Host
outside /api/, too many fields, ...) to ``django.security.<name>`` at ERROR
with the exception's traceback (``response_for_exception``). The message
names what was refused; the traceback only shows Django's own frames, and a
client can send such requests at will, filling the log with them.
"""

from __future__ import annotations

import copy
import logging

SECURITY_LOGGER = "django.security"


class WithoutTraceback(logging.Filter):
    """Give the handler ``django.security`` records without their traceback.

    A copy (a filter may return the record to use, Python 3.12): other
    handlers of the same record (an error tracker) still get the traceback.
    """

    def filter(self, record: logging.LogRecord) -> bool | logging.LogRecord:
        if record.name != SECURITY_LOGGER and not record.name.startswith(
            SECURITY_LOGGER + "."
        ):
            return True
        plain = copy.copy(record)
        plain.exc_info = None
        plain.exc_text = None
        plain.stack_info = None
        return plain
