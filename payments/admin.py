"""Staff view of payments: money, status and timeline, read-only but the description."""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.forms import Script
from django.http import HttpRequest

from payments import services
from payments.models import GatewayCall, Payment, PaymentEvent

# Currencies whose minor unit is the major unit (ISO 4217 exponent 0).
ZERO_DECIMAL_CURRENCIES = frozenset({"jpy", "krw", "vnd", "clp", "isk", "ugx"})


def format_money(amount: int, currency: str) -> str:
    if currency.lower() in ZERO_DECIMAL_CURRENCIES:
        return f"{amount:,} {currency.upper()}"
    return f"{amount // 100:,}.{amount % 100:02d} {currency.upper()}"


class ReadOnlyInline(admin.TabularInline):
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class PaymentEventInline(ReadOnlyInline):
    model = PaymentEvent
    fields = ["created_at", "from_status", "to_status", "detail"]
    readonly_fields = fields
    verbose_name = "status change"
    verbose_name_plural = "timeline"


class GatewayCallInline(ReadOnlyInline):
    model = GatewayCall
    fields = ["created_at", "operation", "outcome", "duration_ms", "response"]
    readonly_fields = fields


@admin.register(Payment)
class PaymentAdmin(admin.ModelAdmin):
    list_display = ["id", "status", "version", "money", "payment_method", "created_at"]
    list_filter = ["status", "currency", "created_at"]
    search_fields = ["socket_id"]
    date_hierarchy = "created_at"
    ordering = ["-created_at"]
    readonly_fields = [
        "id",
        "money",
        "amount",
        "currency",
        "status",
        "version",
        "payment_method",
        "socket_id",
        "failure_code",
        "failure_message",
        "user",
        "created_at",
        "updated_at",
    ]
    fields = [*readonly_fields, "description"]
    inlines = [PaymentEventInline, GatewayCallInline]

    class Media:
        # The list and a payment's page update live from the staff socket
        # (realtime/static/realtime/admin-live.js; the group staff.payments).
        js = [Script("realtime/admin-live.js", type="module")]
        css = {"all": ["realtime/admin-live.css"]}

    @admin.display(description="amount", ordering="amount")
    def money(self, obj: Payment) -> str:
        return format_money(obj.amount, obj.currency)

    def has_add_permission(self, request: HttpRequest) -> bool:
        # Payments are created through the API, which enqueues their job.
        return False

    def save_model(
        self, request: HttpRequest, obj: Payment, form: Any, change: bool
    ) -> None:
        # Not obj.save(): the rest of the row is as the form loaded it, and
        # the worker may have moved the payment on since.
        if "description" in form.changed_data:
            services.payment_update_description(
                payment=obj, description=form.cleaned_data["description"]
            )

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Events protect their payment; history is never deleted from here.
        return False

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet, search_term: str
    ) -> tuple[QuerySet, bool]:
        results, may_have_duplicates = super().get_search_results(
            request, queryset, search_term
        )
        try:
            payment_id = uuid.UUID(search_term.strip())
        except ValueError:
            return results, may_have_duplicates
        return results | queryset.filter(pk=payment_id), may_have_duplicates
