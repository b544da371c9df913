"""Payment gateways: one interface (base.BaseGateway), chosen by PAYMENTS_GATEWAY."""

from functools import cache

from django.conf import settings
from django.utils.module_loading import import_string

from .base import BaseGateway, GatewayError, GatewayResult, Outcome

__all__ = ["BaseGateway", "GatewayError", "GatewayResult", "Outcome", "get_gateway"]


@cache
def _load(path: str) -> BaseGateway:
    return import_string(path)()


def get_gateway() -> BaseGateway:
    """Return the configured gateway (one instance per dotted path)."""
    return _load(settings.PAYMENTS_GATEWAY)
