"""Error pages: JSON in the API's error shape under /api/, Django's elsewhere."""

from __future__ import annotations

import re

from django.http import HttpRequest, HttpResponse
from django.urls import Resolver404, resolve
from django.views import defaults
from django.views.decorators.csrf import csrf_exempt

from config.errors import error_response, http_error_response

# daphne passes an absolute-form target (GET http://host/path) and a path
# starting with "//" through as the path; both still name an API resource.
_SCHEME_AND_AUTHORITY = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/]*")


def is_api_path(path: str) -> bool:
    path = _SCHEME_AND_AUTHORITY.sub("", path).lstrip("/")
    return path == "api" or path.startswith("api/")


@csrf_exempt  # it changes nothing, and a POST must get the 404, not a 403
def api_not_found(request: HttpRequest) -> HttpResponse:
    """Answer every /api/ path no route matched, DEBUG or not.

    Being a route, it also keeps CommonMiddleware's APPEND_SLASH from
    redirecting (301, or an error page for a POST) under /api/: a redirect
    loses a POST's body. The answer names the path to use instead.
    """
    message = "path: no API endpoint here."
    try:
        if resolve(f"{request.path_info}/").url_name != "api-not-found":
            message = (
                f"path: no API endpoint here; use {request.path}/ (with the slash)."
            )
    except Resolver404:
        pass
    return error_response(404, "not_found", message)


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    if is_api_path(request.path_info):
        return http_error_response(400, exception)
    return defaults.bad_request(request, exception)


def permission_denied(request: HttpRequest, exception: Exception) -> HttpResponse:
    if is_api_path(request.path_info):
        return http_error_response(403, exception)
    return defaults.permission_denied(request, exception)


def not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    if is_api_path(request.path_info):
        return http_error_response(404, exception)
    return defaults.page_not_found(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    if is_api_path(request.path_info):
        return http_error_response(500)
    return defaults.server_error(request)
