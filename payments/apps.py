from django.apps import AppConfig


class PaymentsConfig(AppConfig):
    name = "payments"
    verbose_name = "Payments"

    def ready(self) -> None:
        from django.core import checks
        from django.tasks.signals import task_enqueued

        from config.checks import check_settings
        from ops import metrics, readiness
        from payments.worker import health, wakeup

        task_enqueued.connect(
            wakeup.on_task_enqueued, dispatch_uid="payments.worker.wakeup"
        )
        checks.register(check_settings, "payments")
        # ops serves /readyz and /metrics but imports no app: say what a
        # payments deployment needs to be ready, and what to report of it.
        readiness.register_check("workers", health.check_workers, needs_database=True)
        metrics.register_figures(health.worker_figures)
