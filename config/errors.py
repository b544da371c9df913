"""The API's one JSON error shape, and the answers built with it.

Every layer answering HTTP builds its errors here (the DRF exception handler,
the project's middleware and handlers, ops' endpoints); it imports no app,
so any may import it.
"""

from __future__ import annotations

import json
import logging

from django.conf import settings
from django.core.exceptions import (
    DisallowedHost,
    SuspiciousOperation,
    TooManyFieldsSent,
)
from django.http import HttpRequest, JsonResponse


def error_body(code: str, message: str, fields: dict | None = None) -> dict:
    """The API's one error shape: ``{"error": {"code", "message", "fields"?}}``."""
    error: dict = {"code": code, "message": message}
    if fields is not None:
        error["fields"] = fields
    return {"error": error}


def error_json(code: str, message: str) -> bytes:
    """error_body as bytes, for the ASGI and twisted layers that write raw bodies."""
    return json.dumps(error_body(code, message)).encode()


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    fields: dict | None = None,
    headers: dict[str, str] | None = None,
) -> JsonResponse:
    """The error shape as a plain Django response, for answers made outside DRF."""
    return JsonResponse(
        error_body(code, message, fields), status=status, headers=headers
    )


# The answer while the database is away (or its pool all lent): a retry may
# succeed, unlike after a 500, and Retry-After says when to try.
DATABASE_UNAVAILABLE = ("service_unavailable", "database: unavailable; retry shortly.")
DATABASE_RETRY_AFTER = 5


def database_unavailable_response() -> JsonResponse:
    return error_response(
        503, *DATABASE_UNAVAILABLE, headers={"Retry-After": str(DATABASE_RETRY_AFTER)}
    )


# The answer to each status when nothing more precise is known.
_GENERIC_ERRORS = {
    400: ("bad_request", "request: malformed or not acceptable."),
    403: ("permission_denied", "request: not allowed."),
    404: ("not_found", "path: no API endpoint here."),
    500: ("server_error", "Internal error; retry."),
}


def http_error_response(
    status: int,
    exception: Exception | None = None,
    *,
    reason: str = "",
    field: str = "query",
) -> JsonResponse:
    """The JSON answer to an error Django raised or answered, not our code.

    ``field`` is what a TooManyFieldsSent was about (the query or a form
    body); ``reason`` the HTTP reason phrase of a status not listed above.
    """
    if isinstance(exception, DisallowedHost):
        # Not the header's value: an error answer is no place to echo input.
        return error_response(
            400, "invalid_host", "Host: not a host this server answers to."
        )
    if isinstance(exception, TooManyFieldsSent):
        limit = settings.DATA_UPLOAD_MAX_NUMBER_FIELDS
        return error_response(
            400,
            "too_many_fields",
            f"{field}: more than {limit} parameters (DATA_UPLOAD_MAX_NUMBER_FIELDS).",
        )
    code, message = _GENERIC_ERRORS.get(
        status,
        (reason.lower().replace(" ", "_") or "error", f"request: {reason or status}."),
    )
    return error_response(status, code, message)


def log_suspicious(exception: SuspiciousOperation, request: HttpRequest) -> None:
    """Record it as Django does for the SuspiciousOperations it answers itself.

    For those answered here instead (before Django could), so that the
    django.security loggers still see every one; the message says it all,
    no traceback.
    """
    logging.getLogger(f"django.security.{type(exception).__name__}").error(
        str(exception), extra={"status_code": 400, "request": request}
    )
