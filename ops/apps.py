from django.apps import AppConfig


class OpsConfig(AppConfig):
    """Operations: health and readiness probes, metrics, request ids in logs."""

    name = "ops"
    verbose_name = "Operations"
