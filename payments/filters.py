"""Query filters for listing payments."""

from __future__ import annotations

import datetime
from typing import Any

import django_filters
from django.core.exceptions import ValidationError
from django_filters.fields import IsoDateTimeField

from payments.models import Payment, PaymentStatus


def datetime_in_utc_range(value: datetime.datetime) -> bool:
    """Tell whether ``value`` is still a datetime once converted to UTC.

    ISO 8601 admits 9999-12-31T23:59-14:00, which is past datetime.max in
    UTC; comparing created_at with it overflows (a 500) on the way to the
    database.
    """
    try:
        value.astimezone(datetime.UTC)
    except OverflowError:
        return False
    return True


class UtcIsoDateTimeField(IsoDateTimeField):
    """An ISO 8601 datetime that the database can compare with (see above)."""

    def to_python(self, value: Any) -> datetime.datetime | None:
        result = super().to_python(value)
        if result is not None and not datetime_in_utc_range(result):
            raise ValidationError("Out of range.", code="invalid")
        return result


class UtcIsoDateTimeFilter(django_filters.IsoDateTimeFilter):
    field_class = UtcIsoDateTimeField


class PaymentFilter(django_filters.FilterSet):
    status = django_filters.MultipleChoiceFilter(choices=PaymentStatus.choices)
    created_after = UtcIsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = UtcIsoDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = Payment
        fields = ["status", "created_after", "created_before"]
