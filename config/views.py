"""Error pages: JSON in the API's error shape under /api/, Django's elsewhere."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views import defaults


def _is_api(request: HttpRequest) -> bool:
    return request.path.startswith("/api/")


def not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    if _is_api(request):
        return JsonResponse(
            {"error": {"code": "not_found", "message": "path: no API endpoint here."}},
            status=404,
        )
    return defaults.page_not_found(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    if _is_api(request):
        return JsonResponse(
            {"error": {"code": "server_error", "message": "Internal error; retry."}},
            status=500,
        )
    return defaults.server_error(request)
