"""REST endpoints: one APIView per operation, each calling a service or selector."""

from __future__ import annotations

from typing import Any

from django.urls import reverse
from rest_framework import serializers, status
from rest_framework.exceptions import NotFound, ParseError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from payments import idempotency, selectors, services
from payments.models import Payment
from payments.serializers import (
    PaymentCreateInputSerializer,
    PaymentOutputSerializer,
    PaymentOwnerOutputSerializer,
    SeedPaymentInputSerializer,
)


def _request_data(request: Request) -> Any:
    """Return the parsed body; JSON nested deeper than the parser can go is a 400."""
    try:
        return request.data
    except RecursionError:
        raise ParseError("JSON parse error - nested too deeply.") from None


class BasePaymentCreateApi(APIView):
    """Validate, create once per Idempotency-Key, answer with the payment."""

    input_serializer_class: type[serializers.Serializer]
    success_status: int

    def render(self, payment: Payment) -> dict[str, Any]:
        raise NotImplementedError

    def post(self, request: Request) -> Response:
        serializer = self.input_serializer_class(data=_request_data(request))
        serializer.is_valid(raise_exception=True)

        def create() -> tuple[int, dict[str, Any], Payment]:
            payment = services.payment_create(
                **serializer.validated_data, user=request.user
            )
            return self.success_status, self.render(payment), payment

        key = request.headers.get(idempotency.HEADER)
        if key is None:
            code, body, _ = create()
            replayed = False
        else:
            code, body, replayed = idempotency.idempotent_call(
                key=idempotency.idempotency_key_validate(key),
                scope=idempotency.idempotency_scope(request.user),
                fingerprint=idempotency.request_fingerprint(
                    path=request.path, body=request.data
                ),
                perform=create,
            )
        response = Response(body, status=code)
        if replayed:
            response["Idempotent-Replayed"] = "true"
        return response


class PaymentCreateApi(BasePaymentCreateApi):
    """Accept a payment for processing; its outcome arrives over the socket."""

    input_serializer_class = PaymentCreateInputSerializer
    success_status = status.HTTP_202_ACCEPTED

    def render(self, payment: Payment) -> dict[str, Any]:
        return PaymentOwnerOutputSerializer(payment).data

    def post(self, request: Request) -> Response:
        response = super().post(request)
        if response.status_code == status.HTTP_202_ACCEPTED:
            response["Location"] = reverse(
                "payments:detail", args=[response.data["id"]]
            )
        return response


class SeedPaymentCreateApi(BasePaymentCreateApi):
    """The seed frontend's original call, kept working as it was."""

    input_serializer_class = SeedPaymentInputSerializer
    success_status = status.HTTP_200_OK

    def render(self, payment: Payment) -> dict[str, Any]:
        return {
            "message": "Payment received, processing request",
            "payment": PaymentOwnerOutputSerializer(payment).data,
        }


class PaymentDetailApi(APIView):
    """Read one payment: the polling fallback and catch-up over HTTP."""

    def get(self, request: Request, payment_id: str) -> Response:
        payment = selectors.payment_get_visible(
            payment_id=payment_id,
            client_secret=request.query_params.get("client_secret")
            or request.headers.get("X-Client-Secret"),
            user=request.user,
        )
        if payment is None:
            raise NotFound("payment_id: no payment with this id is visible to you.")
        serializer_class = (
            PaymentOwnerOutputSerializer
            if selectors.payment_is_owner(payment=payment, user=request.user)
            else PaymentOutputSerializer
        )
        return Response(serializer_class(payment).data)
