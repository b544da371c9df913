"""The hand-built payloads (frames, API responses) match the serializers exactly."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from payments.api.serializers import (
    PaymentOutputSerializer,
    PaymentOwnerOutputSerializer,
)
from payments.models import PaymentStatus
from payments.payloads import payment_owner_data, payment_public_data
from tests.factories import PaymentFactory

pytestmark = pytest.mark.django_db


CASES = pytest.mark.parametrize(
    "fields",
    [
        pytest.param({}, id="pending"),
        pytest.param(
            {
                "status": PaymentStatus.FAILED,
                "failure_code": "card_declined",
                "failure_message": "Your card was declined.",
                "version": 3,
            },
            id="failed",
        ),
        pytest.param(
            {"description": 'Zürich ☕ "quoted"', "socket_id": "s" * 43},
            id="text",
        ),
        pytest.param(
            {"created_at": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)},
            id="no-microseconds",
        ),
    ],
)


@CASES
@pytest.mark.parametrize(
    ("serializer_class", "by_hand"),
    [
        pytest.param(PaymentOutputSerializer, payment_public_data, id="public"),
        pytest.param(PaymentOwnerOutputSerializer, payment_owner_data, id="owner"),
    ],
)
def test_hand_built_data_equals_the_serializer(
    fields: dict, serializer_class, by_hand
) -> None:
    payment = PaymentFactory()
    payment.refresh_from_db()
    for name, value in fields.items():
        setattr(payment, name, value)

    expected = dict(serializer_class(payment).data)
    data = by_hand(payment)

    assert data == expected
    assert list(data) == serializer_class.Meta.fields
    assert json.dumps(data) == json.dumps(expected)
