from django.apps import AppConfig


class RealtimeConfig(AppConfig):
    name = "realtime"
    verbose_name = "Realtime"

    def ready(self) -> None:
        from prometheus_client import REGISTRY

        from realtime.metrics import PushCollector

        REGISTRY.register(PushCollector())
