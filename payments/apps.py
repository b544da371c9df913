from django.apps import AppConfig


class PaymentsConfig(AppConfig):
    name = "payments"
    verbose_name = "Payments"

    def ready(self) -> None:
        from django.core import checks
        from django.tasks.signals import task_enqueued

        from config.checks import check_settings
        from payments.worker import wakeup

        task_enqueued.connect(
            wakeup.on_task_enqueued, dispatch_uid="payments.worker.wakeup"
        )
        checks.register(check_settings, "payments")
