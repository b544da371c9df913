from django.apps import AppConfig


class RealtimeConfig(AppConfig):
    name = "realtime"
    verbose_name = "Realtime"

    _collector_registered = False

    def ready(self) -> None:
        from prometheus_client import REGISTRY

        from realtime.metrics import PushCollector

        # Once per process: a second collector would double every family,
        # and Prometheus refuses such a scrape.
        if not RealtimeConfig._collector_registered:
            REGISTRY.register(PushCollector())
            RealtimeConfig._collector_registered = True
