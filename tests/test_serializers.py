"""The hand-built payloads (frames, API responses) match the serializers exactly."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from payments.models import PaymentStatus
from payments.serializers import (
    PaymentOutputSerializer,
    PaymentOwnerOutputSerializer,
    payment_owner_data,
    payment_public_data,
)
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
def test_public_data_equals_the_output_serializer(fields: dict) -> None:
    payment = PaymentFactory()
    payment.refresh_from_db()
    for name, value in fields.items():
        setattr(payment, name, value)

    expected = dict(PaymentOutputSerializer(payment).data)
    data = payment_public_data(payment)

    assert data == expected
    assert list(data) == PaymentOutputSerializer.Meta.fields
    assert json.dumps(data) == json.dumps(expected)


@CASES
def test_owner_data_equals_the_owner_output_serializer(fields: dict) -> None:
    payment = PaymentFactory()
    payment.refresh_from_db()
    for name, value in fields.items():
        setattr(payment, name, value)

    expected = dict(PaymentOwnerOutputSerializer(payment).data)
    data = payment_owner_data(payment)

    assert data == expected
    assert list(data) == PaymentOwnerOutputSerializer.Meta.fields
    assert json.dumps(data) == json.dumps(expected)
