"""Query filters for listing payments."""

import django_filters

from payments.models import Payment, PaymentStatus


class PaymentFilter(django_filters.FilterSet):
    status = django_filters.MultipleChoiceFilter(choices=PaymentStatus.choices)
    created_after = django_filters.IsoDateTimeFilter(
        field_name="created_at", lookup_expr="gte"
    )
    created_before = django_filters.IsoDateTimeFilter(
        field_name="created_at", lookup_expr="lt"
    )

    class Meta:
        model = Payment
        fields = ["status", "created_after", "created_before"]
