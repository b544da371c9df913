"""Middleware keeping every answer under /api/ JSON, whatever DEBUG says."""

from __future__ import annotations

import logging
from collections.abc import Callable

from corsheaders import middleware as corsheaders
from django.core.exceptions import DisallowedHost
from django.db import OperationalError
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase

from config.errors import (
    database_unavailable_response,
    http_error_response,
    log_suspicious,
)
from config.views import is_api_path

logger = logging.getLogger(__name__)


class ApiErrorsMiddleware:
    """Answer errors under /api/ in the API's error shape, never as a page.

    Django's handler400/404/500 (config.views) cover production, but with
    DEBUG on Django answers a failed Host check, an unknown path or an
    exception with its technical HTML pages instead; and the Host check
    fails inside CommonMiddleware, before any view. So the Host is checked
    here first (Django's own get_host), and any error answer that is not JSON
    by the time it gets here is replaced by its JSON counterpart.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        if not is_api_path(request.path_info):
            return self.get_response(request)
        try:
            request.get_host()
        except DisallowedHost as exc:
            log_suspicious(exc, request)
            return http_error_response(400, exc)
        response = self.get_response(request)
        content_type = response.get("Content-Type", "").split(";")[0]
        if response.status_code >= 400 and content_type != "application/json":
            replacement = http_error_response(
                response.status_code, reason=response.reason_phrase
            )
            for header, value in response.items():
                if header.lower() not in ("content-type", "content-length"):
                    replacement[header] = value  # CORS, Allow, Retry-After...
            return replacement
        return response


class DatabaseUnavailableMiddleware:
    """Answer a view the database failed (it is away) with the API's 503.

    DRF's views have their exception handler; the rest (the admin, whose
    user is read from the session table, the page) would end in Django's
    500 and a traceback for what a retry in a moment may cure.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        return self.get_response(request)

    def process_exception(
        self, request: HttpRequest, exception: Exception
    ) -> HttpResponseBase | None:
        if not isinstance(exception, OperationalError):
            return None
        logger.warning("database unavailable: %r", exception)
        return database_unavailable_response()


class CorsMiddleware(corsheaders.CorsMiddleware):
    """django-cors-headers, answering a preflight 204 No Content.

    Its own answer is an empty 200, which Django labels text/html. A
    preflight has nothing to say beyond its headers: 204 says so and claims
    no media type (an empty body is no JSON document), and the Fetch
    standard takes any 2xx as the preflight's success.
    """

    def check_preflight(self, request: HttpRequest) -> HttpResponseBase | None:
        if super().check_preflight(request) is None:
            return None
        response = HttpResponse(status=204)
        del response["Content-Type"]
        return response
