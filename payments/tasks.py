"""Background jobs: each takes a payment id and calls a service.

The worker's log lines for a payment carry the id of the request that created
it, stored with the payment (``Payment.request_id``). The ``request_id``
argument is for jobs enqueued by an earlier release, which passed it here.
The worker runs queued ``process_payment`` jobs in batches through
``services.payments_process`` (payments.worker.worker); this function runs
one, as another task backend would.
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
