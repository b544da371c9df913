"""OpenAPI pieces shared by the payments views (drf-spectacular)."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, inline_serializer
from rest_framework import serializers

from payments.api.idempotency import HEADER as IDEMPOTENCY_HEADER
from payments.api.serializers import (
    PaymentOutputSerializer,
    PaymentOwnerOutputSerializer,
)
from payments.models import PaymentStatus

ERROR = inline_serializer(
    "Error",
    fields={
        "error": inline_serializer(
            "ErrorBody",
            fields={
                "code": serializers.CharField(),
                "message": serializers.CharField(
                    help_text="Names the offending field, e.g. 'amount: ...'."
                ),
                "fields": serializers.DictField(
                    child=serializers.ListField(child=serializers.CharField()),
                    required=False,
                    help_text="Validation errors only: messages per field.",
                ),
            },
        )
    },
)


def errors(*codes: int) -> dict[int, OpenApiResponse]:
    return {code: OpenApiResponse(ERROR) for code in codes}


# Every body-taking endpoint can answer these, whatever the input.
CREATE_ERRORS = errors(400, 401, 403, 413, 415, 422, 429)

IDEMPOTENCY_KEY = OpenApiParameter(
    IDEMPOTENCY_HEADER,
    OpenApiTypes.STR,
    OpenApiParameter.HEADER,
    description=(
        "1-255 printable characters; without a login, a random UUID v4 or "
        "32-255 random characters from A-Z a-z 0-9 - _ (400 otherwise). The "
        "same key and body answer with the first response; the same key with "
        "another body is 422."
    ),
)

CLIENT_SECRET_PARAMETERS = [
    OpenApiParameter(
        "client_secret",
        OpenApiTypes.STR,
        OpenApiParameter.QUERY,
        description="The payment's client_secret from its create response.",
    ),
    OpenApiParameter(
        "X-Client-Secret",
        OpenApiTypes.STR,
        OpenApiParameter.HEADER,
        description="The client_secret, as a header instead of the query.",
    ),
]


def _or_blank(schema: dict) -> dict:
    """Allow an empty value too: the list takes ``?name=`` as not given."""
    return {"anyOf": [schema, {"type": "string", "maxLength": 0}]}


LIST_PARAMETERS = [
    OpenApiParameter(
        "status",
        OpenApiTypes.STR,
        many=True,
        enum=PaymentStatus.values,
        description="Only these statuses (repeat the parameter for several).",
    ),
    OpenApiParameter(
        "created_after",
        _or_blank({"type": "string", "format": "date-time"}),
        description="ISO 8601; payments created at or after it.",
    ),
    OpenApiParameter(
        "created_before",
        _or_blank({"type": "string", "format": "date-time"}),
        description="ISO 8601; payments created before it.",
    ),
    OpenApiParameter("cursor", OpenApiTypes.STR, description="From next/previous."),
    OpenApiParameter(
        "page_size",
        _or_blank({"type": "integer", "minimum": 1, "maximum": 200}),
        description="1-200, default 50.",
    ),
]

PAYMENT_PAGE = inline_serializer(
    "PaymentPage",
    fields={
        "next": serializers.URLField(allow_null=True),
        "previous": serializers.URLField(allow_null=True),
        "results": PaymentOutputSerializer(many=True),
    },
)

SEED_RESPONSE = inline_serializer(
    "SeedPaymentResponse",
    fields={
        "message": serializers.CharField(),
        "payment": PaymentOwnerOutputSerializer(),
    },
)

AUTH_TOKEN = inline_serializer("AuthToken", fields={"token": serializers.CharField()})
