"""REST endpoints: one APIView per operation, each calling a service or selector."""

from __future__ import annotations

from django.urls import reverse
from rest_framework import status
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from payments import selectors, services
from payments.serializers import (
    PaymentCreateInputSerializer,
    PaymentOutputSerializer,
    PaymentOwnerOutputSerializer,
    SeedPaymentInputSerializer,
)


class PaymentCreateApi(APIView):
    """Accept a payment for processing; its outcome arrives over the socket."""

    def post(self, request: Request) -> Response:
        serializer = PaymentCreateInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        payment = services.payment_create(
            **serializer.validated_data, user=request.user
        )
        return Response(
            PaymentOwnerOutputSerializer(payment).data,
            status=status.HTTP_202_ACCEPTED,
            headers={"Location": reverse("payments:detail", args=[payment.id])},
        )


class SeedPaymentCreateApi(APIView):
    """The seed frontend's original call, kept working as it was."""

    def post(self, request: Request) -> Response:
        serializer = SeedPaymentInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        payment = services.payment_create(
            **serializer.validated_data, user=request.user
        )
        return Response(
            {
                "message": "Payment received, processing request",
                "payment": PaymentOwnerOutputSerializer(payment).data,
            },
            status=status.HTTP_200_OK,
        )


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
