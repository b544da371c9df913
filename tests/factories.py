"""Model factories for tests."""

import factory

from payments.models import Payment, PaymentStatus


class PaymentFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Payment

    amount = 1000
    currency = "usd"
    status = PaymentStatus.PENDING
    payment_method = "pm_card_visa"
    description = ""
    socket_id = ""
