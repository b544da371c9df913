"""Query filters for listing payments."""

from __future__ import annotations

import datetime
from typing import Any

import django_filters
from django.core.exceptions import ValidationError
from django_filters.fields import IsoDateTimeField

from payments.models import Payment, PaymentStatus


def datetime_in_utc(value: datetime.datetime) -> datetime.datetime | None:
    """Return ``value`` in UTC, or None when UTC cannot hold it.

    ISO 8601 admits 9999-12-31T23:59-14:00, which is past datetime.max in
    UTC (comparing created_at with it overflows, a 500), and offsets up to
    ±23:59, which PostgreSQL refuses beyond ±15:59 (a 500 too): the database
    is only ever given UTC.
    """
    try:
        return value.astimezone(datetime.UTC)
    except OverflowError:
        return None


class UtcIsoDateTimeField(IsoDateTimeField):
    """An ISO 8601 datetime that the database can compare with (see above)."""

    def to_python(self, value: Any) -> datetime.datetime | None:
        result = super().to_python(value)
        if result is None:
            return None
        in_utc = datetime_in_utc(result)
        if in_utc is None:
            raise ValidationError("Out of range.", code="invalid")
        return in_utc


class UtcIsoDateTimeFilter(django_filters.IsoDateTimeFilter):
    field_class = UtcIsoDateTimeField


class PaymentFilter(django_filters.FilterSet):
    status = django_filters.MultipleChoiceFilter(choices=PaymentStatus.choices)
    created_after = UtcIsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = UtcIsoDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = Payment
        fields = ["status", "created_after", "created_before"]
