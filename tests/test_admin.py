"""The admin's payment page: staff change the description, and nothing else."""

from __future__ import annotations

import pytest

from payments import services
from payments.admin import PaymentAdmin
from payments.models import Payment, PaymentEvent


def change_url(payment: Payment) -> str:
    return f"/admin/payments/payment/{payment.pk}/change/"


def change_form_data(client, payment: Payment, **fields: str) -> dict[str, str]:
    """The change form's POST as the page would send it: inlines' counts, ``fields``."""
    page = client.get(change_url(payment))
    assert page.status_code == 200
    data = {"description": payment.description, **fields}
    for inline in page.context["inline_admin_formsets"]:
        management = inline.formset.management_form
        data.update(
            {
                management.add_prefix(name): str(value)
                for name, value in management.initial.items()
            }
        )
    return data


@pytest.fixture
def staff_client(client, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("admin", "", "x"))
    return client


@pytest.mark.django_db
def test_saving_the_description_keeps_a_status_committed_since_the_page_read_it(
    staff_client, settings, monkeypatch
) -> None:
    settings.PAYMENTS_SIMULATED_DELAY = 0
    payment = services.payment_create(
        amount=1000, currency="usd", payment_method="pm_card_visa", description="old"
    )
    data = change_form_data(staff_client, payment, description="gift")
    read = PaymentAdmin.get_object

    def read_then_worker_settles(self, request, object_id, from_field=None):
        # The worker commits between the admin's read of the row and its save.
        obj = read(self, request, object_id, from_field)
        if request.method == "POST":
            services.payments_process(payment_ids=[obj.pk])
        return obj

    monkeypatch.setattr(PaymentAdmin, "get_object", read_then_worker_settles)

    response = staff_client.post(change_url(payment), data)

    assert response.status_code == 302, response.content
    payment.refresh_from_db()
    assert (payment.status, payment.version) == ("succeeded", 3)
    assert payment.description == "gift"
    assert PaymentEvent.objects.filter(payment=payment).count() == 3


@pytest.mark.django_db
def test_saving_an_unchanged_form_writes_nothing(staff_client) -> None:
    payment = services.payment_create(
        amount=1000, currency="usd", payment_method="pm_card_visa"
    )
    before = Payment.objects.get(pk=payment.pk)

    response = staff_client.post(
        change_url(payment), change_form_data(staff_client, payment)
    )

    assert response.status_code == 302, response.content
    assert Payment.objects.get(pk=payment.pk).updated_at == before.updated_at
