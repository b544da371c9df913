"""The domain's exception root: services raise it, the API answers it.

Its HTTP shape is built in config.errors (api.exception_handler maps it).
"""

from __future__ import annotations


class ApplicationError(Exception):
    """A request that cannot be carried out; the message is safe to show."""

    code = "application_error"
    status_code = 400

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
