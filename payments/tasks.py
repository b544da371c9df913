"""Background jobs: each takes a payment id and calls a service."""

from django.tasks import task

from payments import services


@task()
def process_payment(*, payment_id: str) -> None:
    services.payment_process(payment_id=payment_id)


@task()
def refresh_payment(*, payment_id: str) -> None:
    services.payment_refresh(payment_id=payment_id)
