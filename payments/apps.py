from django.apps import AppConfig


class PaymentsConfig(AppConfig):
    name = "payments"
    verbose_name = "Payments"

    def ready(self) -> None:
        from django.tasks.signals import task_enqueued

        from payments.worker import wakeup

        task_enqueued.connect(
            wakeup.on_task_enqueued, dispatch_uid="payments.worker.wakeup"
        )
