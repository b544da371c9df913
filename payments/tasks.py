"""Background jobs: each takes a payment id and calls a service.

``request_id`` is the id of the request that led to the job (ops.request_id),
so the worker's log lines for it carry the same id as the web's.
"""

from django.tasks import task

from ops.request_id import request_id_bound
from payments import services


@task()
def process_payment(*, payment_id: str, request_id: str = "") -> None:
    with request_id_bound(request_id):
        services.payment_process(payment_id=payment_id)


# Jobs are no longer enqueued for this (the worker's settle sweep,
# services.payments_settle_due, asks the gateway again); it stays so that jobs
# enqueued by an earlier release still run after an upgrade.
@task()
def refresh_payment(*, payment_id: str, request_id: str = "") -> None:
    with request_id_bound(request_id):
        services.payment_refresh(payment_id=payment_id)
