"""Probes and metrics for load balancers, orchestrators and Prometheus."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from config.errors import error_response
from ops import metrics, readiness

# A probe's answer is about this instant: nothing between may keep it.
NO_STORE = {"Cache-Control": "no-store"}


def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness: the process answers. Nothing else is asked."""
    return JsonResponse({"status": "ok"}, headers=NO_STORE)


def readyz(request: HttpRequest) -> JsonResponse:
    """Readiness: 200 when every check passes, else 503, each check named."""
    checks = readiness.readiness()
    ready = all(check.ok for check in checks.values())
    return JsonResponse(
        {
            "status": "ok" if ready else "error",
            "checks": {name: check.as_dict() for name, check in checks.items()},
        },
        status=200 if ready else 503,
        headers=NO_STORE,
    )


def metrics_view(request: HttpRequest) -> HttpResponse:
    """This process's metrics and the database's figures, for a bearer token."""
    if not metrics.token_accepted(request.headers.get("Authorization")):
        if not settings.METRICS_TOKEN:
            return error_response(404, "not_found", "path: metrics are off.")
        return error_response(
            401,
            "not_authenticated",
            "Authorization: a bearer token (METRICS_TOKEN) is required.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    body = generate_latest(REGISTRY) + generate_latest(metrics.DATABASE_REGISTRY)
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST, headers=NO_STORE)
