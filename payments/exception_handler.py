"""Map every API error to one JSON shape.

``{"error": {"code": ..., "message": ..., "fields": {...}}}``; ``fields``
only for validation errors. The message always names the offending field.
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.db import OperationalError
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler

from payments.errors import ApplicationError

logger = logging.getLogger(__name__)

# Seconds a client is asked to wait when the database is unavailable.
DATABASE_RETRY_AFTER = 5


def _flatten(detail: Any) -> list[str]:
    if isinstance(detail, dict):
        return [f"{k}: {m}" for k, v in detail.items() for m in _flatten(v)]
    if isinstance(detail, list):
        return [m for item in detail for m in _flatten(item)]
    return [str(detail)]


def _fields(detail: Any) -> dict[str, list[str]]:
    if isinstance(detail, dict):
        return {str(name): _flatten(value) for name, value in detail.items()}
    return {"body": _flatten(detail)}


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, ApplicationError):
        message = f"{exc.field}: {exc.message}" if exc.field else exc.message
        error: dict[str, Any] = {"code": exc.code, "message": message}
        if exc.code == "validation_error":
            # The same shape as a serializer's validation errors.
            error["fields"] = {exc.field or "body": [exc.message]}
        retry_after = getattr(exc, "retry_after", None)
        headers = {"Retry-After": str(retry_after)} if retry_after else None
        return Response({"error": error}, status=exc.status_code, headers=headers)
    if isinstance(exc, RequestDataTooBig):
        # Django's own answer is an HTML 400 page; keep the one JSON shape.
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        return Response(
            {
                "error": {
                    "code": "request_too_large",
                    "message": f"body: larger than {limit} bytes.",
                }
            },
            status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
        )
    if isinstance(exc, OperationalError):
        # The database is away (or its pool all lent): a retry may succeed,
        # unlike after a 500.
        logger.warning("database unavailable: %r", exc)
        return Response(
            {
                "error": {
                    "code": "service_unavailable",
                    "message": "database: unavailable; retry shortly.",
                }
            },
            status=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": str(DATABASE_RETRY_AFTER)},
        )
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()

    response = exception_handler(exc, context)
    if response is None:
        return None

    assert isinstance(exc, exceptions.APIException)
    if isinstance(exc, exceptions.ValidationError):
        fields = _fields(exc.detail)
        message = "; ".join(f"{name}: {msgs[0]}" for name, msgs in fields.items())
        error = {"code": "validation_error", "message": message, "fields": fields}
    else:
        codes = exc.get_codes()
        code = codes if isinstance(codes, str) else exc.default_code
        message = " ".join(_flatten(exc.detail))
        if isinstance(exc, exceptions.ParseError):
            message = f"body: {message}"
        elif isinstance(exc, exceptions.UnsupportedMediaType):
            message = f"Content-Type: {message}"
        elif isinstance(
            exc, exceptions.NotAuthenticated | exceptions.AuthenticationFailed
        ):
            message = f"Authorization: {message}"
        error = {"code": code, "message": message}
    response.data = {"error": error}
    if response.status_code >= status.HTTP_500_INTERNAL_SERVER_ERROR:
        response.status_code = status.HTTP_400_BAD_REQUEST
    return response
