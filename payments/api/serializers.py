"""Input and output shapes of the payments API (and of payment-status frames)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from rest_framework import serializers
from rest_framework.authtoken.serializers import AuthTokenSerializer

from payments.gateways import get_gateway
from payments.models import Payment

AMOUNT_MAX = 99_999_999
SOCKET_ID_PATTERN = r"^[A-Za-z0-9_-]{16,64}$"
DEFAULT_PAYMENT_METHOD = "pm_card_visa"


class StrictIntegerField(serializers.IntegerField):
    """An integer that must arrive as a JSON integer: no "10", 10.0 or true."""

    def to_internal_value(self, data: Any) -> int:
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


class RejectUnknownFieldsMixin:
    """Name every field the client sent that this serializer does not know."""

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(self.initial_data) - set(self.fields))  # type: ignore[attr-defined]
        if unknown:
            raise serializers.ValidationError(
                {printable_name(name)[:64]: ["Unknown field."] for name in unknown[:20]}
            )
        return attrs


def printable_name(name: str) -> str:
    """Return ``name`` fit to appear in an answer, as UTF-8 JSON must be.

    JSON's ``\\ud800`` escape decodes to a lone surrogate, which no UTF-8 answer
    can carry (the renderer raised, a 500); it is named as the client wrote it.
    """
    return name.encode("utf-8", "backslashreplace").decode("utf-8")


def socket_id_field() -> serializers.RegexField:
    return serializers.RegexField(
        SOCKET_ID_PATTERN,
        required=False,
        allow_blank=True,
        default="",
        error_messages={"invalid": "Not a socket id received in a socket-id frame."},
    )


class PaymentCreateInputSerializer(RejectUnknownFieldsMixin, serializers.Serializer):
    amount = StrictIntegerField(min_value=1, max_value=AMOUNT_MAX)
    currency = serializers.CharField(required=False, max_length=3)
    payment_method = serializers.CharField(
        required=False, max_length=64, default=DEFAULT_PAYMENT_METHOD
    )
    description = serializers.CharField(
        required=False, max_length=255, allow_blank=True, default=""
    )
    socket_id = socket_id_field()

    def validate_currency(self, value: str) -> str:
        if value not in settings.PAYMENTS_CURRENCIES:
            supported = ", ".join(settings.PAYMENTS_CURRENCIES)
            raise serializers.ValidationError(
                "Unsupported currency; use a lower-case ISO 4217 code, "
                f"one of: {supported}."
            )
        return value

    def validate_payment_method(self, value: str) -> str:
        methods = get_gateway().payment_methods
        if value not in methods:
            raise serializers.ValidationError(
                f"Unknown payment method; use one of: {', '.join(sorted(methods))}."
            )
        return value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        attrs = super().validate(attrs)
        attrs.setdefault("currency", settings.PAYMENTS_DEFAULT_CURRENCY)
        return attrs


class SeedPaymentInputSerializer(PaymentCreateInputSerializer):
    """The seed frontend's body: ``{"amount": 1000, "socketId": "..."}``."""

    socket_id = None
    socketId = socket_id_field()  # noqa: N815 - the seed frontend's name

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        attrs = super().validate(attrs)
        attrs["socket_id"] = attrs.pop("socketId", "")
        return attrs


class PaymentOutputSerializer(serializers.ModelSerializer):
    """A payment as clients see it, without its client_secret."""

    class Meta:
        model = Payment
        fields = [
            "id",
            "status",
            "amount",
            "currency",
            "payment_method",
            "description",
            "socket_id",
            "failure_code",
            "failure_message",
            "created_at",
            "updated_at",
            "version",
        ]
        read_only_fields = fields


class PaymentOwnerOutputSerializer(PaymentOutputSerializer):
    """A payment as its creator sees it: with the secret that reads it later."""

    class Meta(PaymentOutputSerializer.Meta):
        fields = [*PaymentOutputSerializer.Meta.fields, "client_secret"]
        read_only_fields = fields


def _encodable(value: str) -> str:
    # A lone surrogate cannot reach the database (UTF-8): refuse it here.
    try:
        value.encode()
    except UnicodeEncodeError:
        raise serializers.ValidationError("Not valid Unicode text.") from None
    return value


class AuthTokenInputSerializer(AuthTokenSerializer):
    """DRF's username and password, bounded: both reach the hasher and the lockout."""

    username = serializers.CharField(
        write_only=True, max_length=150, validators=[_encodable]
    )
    password = serializers.CharField(
        write_only=True,
        max_length=4096,
        trim_whitespace=False,
        style={"input_type": "password"},
        validators=[_encodable],
    )
