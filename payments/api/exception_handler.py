"""Map every API error to one JSON shape.

``{"error": {"code": ..., "message": ..., "fields": {...}}}``; ``fields``
only for validation errors. The message always names the offending field.
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.core.exceptions import (
    PermissionDenied,
    RequestDataTooBig,
    SuspiciousOperation,
    TooManyFieldsSent,
)
from django.db import OperationalError
from django.http import Http404, HttpResponseBase
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler

from config.errors import (
    DATABASE_RETRY_AFTER,
    DATABASE_UNAVAILABLE,
    error_body,
    http_error_response,
    log_suspicious,
)
from payments.errors import ApplicationError

logger = logging.getLogger(__name__)


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


def api_exception_handler(
    exc: Exception, context: dict[str, Any]
) -> HttpResponseBase | None:
    if isinstance(exc, ApplicationError):
        message = f"{exc.field}: {exc.message}" if exc.field else exc.message
        fields = None
        if exc.code == "validation_error":
            # The same shape as a serializer's validation errors.
            fields = {exc.field or "body": [exc.message]}
        retry_after = getattr(exc, "retry_after", None)
        headers = {"Retry-After": str(retry_after)} if retry_after else None
        return Response(
            error_body(exc.code, message, fields),
            status=exc.status_code,
            headers=headers,
        )
    if isinstance(exc, RequestDataTooBig):
        # Django's own answer is an HTML 400 page; keep the one JSON shape.
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        return Response(
            error_body("request_too_large", f"body: larger than {limit} bytes."),
            status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
        )
    if isinstance(exc, SuspiciousOperation):
        # Django's own answer is its HTML 400 page (or, with DEBUG, its
        # technical page).
        log_suspicious(exc, context["request"]._request)
        return http_error_response(
            status.HTTP_400_BAD_REQUEST, exc, field=_too_many_fields_in(context)
        )
    if isinstance(exc, OperationalError):
        # The database is away (or its pool all lent): a retry may succeed,
        # unlike after a 500.
        logger.warning("database unavailable: %r", exc)
        return Response(
            error_body(*DATABASE_UNAVAILABLE),
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
        response.data = error_body("validation_error", message, fields)
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
        response.data = error_body(code, message)
    if response.status_code >= status.HTTP_500_INTERNAL_SERVER_ERROR:
        response.status_code = status.HTTP_400_BAD_REQUEST
    return response


def _too_many_fields_in(context: dict[str, Any]) -> str:
    """Name what held too many fields: the query string, or else a form body."""
    try:
        # Parsed on first use and not kept when it raised: it raises again.
        context["request"]._request.GET  # noqa: B018
    except TooManyFieldsSent:
        return "query"
    return "body"
