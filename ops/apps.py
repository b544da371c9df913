import logging

from django.apps import AppConfig


class OpsConfig(AppConfig):
    """Operations: health and readiness probes, metrics, request ids in logs."""

    name = "ops"
    verbose_name = "Operations"

    def ready(self) -> None:
        # Python's warnings as log records (logger py.warnings), so they take
        # LOGGING's format too: one JSON object per line in production, not
        # a bare two-line text. Django 6 no longer does this itself.
        logging.captureWarnings(True)
