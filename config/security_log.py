"""One line per refused suspicious request, not a traceback.

Django logs every SuspiciousOperation it answers itself (a foreign Host
outside /api/, too many fields, ...) to ``django.security.<name>`` at ERROR
with the exception's traceback (``response_for_exception``). The message
names what was refused; the traceback only shows Django's own frames, and a
client can send such requests at will, filling the log with them.
"""

from __future__ import annotations

import logging

SECURITY_LOGGER = "django.security"


class WithoutTraceback(logging.Filter):
    """Drop the traceback of ``django.security`` records; keep the record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == SECURITY_LOGGER or record.name.startswith(
            SECURITY_LOGGER + "."
        ):
            record.exc_info = None
            record.exc_text = None
            record.stack_info = None
        return True
