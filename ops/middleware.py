"""Answer the probes and /metrics before the rest of the middleware."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest
from django.http.response import HttpResponseBase

from config.errors import error_response
from ops import views

ENDPOINTS: dict[str, Callable[[HttpRequest], HttpResponseBase]] = {
    "/healthz": views.healthz,
    "/readyz": views.readyz,
    "/metrics": views.metrics_view,
}


class OperationsEndpointsMiddleware:
    """Serve ENDPOINTS here, ahead of the Host check, HTTPS redirect and sessions.

    Probes and scrapers call a process by its own address (a container's
    IP, localhost in a healthcheck) over plain HTTP, behind the proxy that
    terminates TLS: ALLOWED_HOSTS would answer them 400 and
    SECURE_SSL_REDIRECT 301. Nor do they need a session, a CSRF cookie or
    CORS. /metrics has its own guard (a bearer token); the probes say
    nothing secret.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        view = ENDPOINTS.get(request.path_info)
        if view is None:
            return self.get_response(request)
        if request.method not in ("GET", "HEAD"):
            return error_response(
                405,
                "method_not_allowed",
                "method: only GET and HEAD.",
                headers={"Allow": "GET, HEAD"},
            )
        return view(request)
