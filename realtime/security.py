"""WebSocket handshake checks."""

from __future__ import annotations

from typing import Any

from channels.security.websocket import OriginValidator
from django.conf import settings


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
