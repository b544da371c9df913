"""WebSocket handshake checks."""

from __future__ import annotations

from typing import Any
from urllib.parse import ParseResult

from channels.security.websocket import OriginValidator
from django.conf import settings


def is_serialized_origin(origin: ParseResult) -> bool:
    """Tell whether ``origin`` has the form browsers send: scheme://host[:port].

    Channels matches an origin by its parsed host alone, so
    "http://evil.example@localhost:3000" (userinfo) or, under servers that
    pass it on, "http://localhost:3000.evil.example" (a port that is no
    number) counted as localhost. No browser sends such an origin.
    """
    try:
        origin.port  # noqa: B018 - raises ValueError for a port that is no number
    except ValueError:
        return False
    return bool(origin.scheme and origin.hostname) and not (
        origin.username is not None
        or origin.password is not None
        or origin.path
        or origin.params
        or origin.query
        or origin.fragment
    )


class SiteOriginValidator(OriginValidator):
    """Accept the site's own hosts and the allowed CORS origins; refuse others.

    Browsers send cookies with a cross-site WebSocket handshake, so without
    this check any page could open a socket as the logged-in user.
    """

    def __init__(self, application: Any) -> None:
        self.application = application

    @property
    def allowed_origins(self) -> list[str]:
        # Read per handshake, so settings overridden in tests apply.
        return [*settings.ALLOWED_HOSTS, *settings.CORS_ALLOWED_ORIGINS]

    def valid_origin(self, parsed_origin: ParseResult | None) -> bool:
        if parsed_origin is not None and not is_serialized_origin(parsed_origin):
            return False
        return super().valid_origin(parsed_origin)
