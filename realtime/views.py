"""The page at /: pay with the simulated gateway and watch the status live."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_safe

from payments import selectors


@require_safe
@ensure_csrf_cookie
def index(request: HttpRequest) -> HttpResponse:
    # The CSRF cookie lets payments-client.js post as a logged-in user too
    # (DRF checks CSRF for session authentication only).
    return render(
        request,
        "realtime/index.html",
        {
            "methods": selectors.payment_method_outcomes(),
            "currencies": settings.PAYMENTS_CURRENCIES,
            "default_currency": settings.PAYMENTS_DEFAULT_CURRENCY,
        },
    )
