"""REST endpoints: one APIView per operation, each calling a service or selector."""

from __future__ import annotations

from typing import Any

from axes.helpers import get_cool_off
from django.conf import settings
from django.urls import reverse
from drf_spectacular.utils import extend_schema
from rest_framework import permissions, serializers, status
from rest_framework.authtoken.views import ObtainAuthToken
from rest_framework.exceptions import NotFound, Throttled, ValidationError
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from payments import selectors, services
from payments.api import idempotency, openapi
from payments.api.filters import PaymentFilter
from payments.api.pagination import PaymentPagination
from payments.api.parsers import JSONParser
from payments.api.serializers import (
    AuthTokenInputSerializer,
    PaymentCreateInputSerializer,
    PaymentOutputSerializer,
    PaymentOwnerOutputSerializer,
    SeedPaymentInputSerializer,
)
from payments.api.throttling import (
    AuthTokenThrottle,
    PaymentCreateAnonThrottle,
    PaymentCreateUserThrottle,
    throttles_refusing,
)
from payments.models import Payment
from payments.payloads import payment_owner_data, payment_public_data


class CreatePermission(permissions.BasePermission):
    """Anyone may create, unless PAYMENTS_REQUIRE_AUTH asks for a user."""

    def has_permission(self, request: Request, view: APIView) -> bool:
        if request.method != "POST" or not settings.PAYMENTS_REQUIRE_AUTH:
            return True
        return bool(request.user and request.user.is_authenticated)


class BasePaymentCreateApi(APIView):
    """Validate, create once per Idempotency-Key, answer with the payment."""

    input_serializer_class: type[serializers.Serializer]
    success_status: int
    permission_classes = [CreatePermission]

    def get_throttles(self) -> list:
        if self.request.method == "POST":
            return [PaymentCreateAnonThrottle(), PaymentCreateUserThrottle()]
        return []

    def check_throttles(self, request: Request) -> None:
        # DRF's asks each throttle in turn: a Redis round trip each.
        refused = throttles_refusing(self.get_throttles(), request, self)
        if refused:
            self.throttled(request, max(throttle.wait() for throttle in refused))

    def render(self, payment: Payment) -> dict[str, Any]:
        raise NotImplementedError

    def post(self, request: Request) -> Response:
        serializer = self.input_serializer_class(data=request.data)
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
                key=idempotency.idempotency_key_validate(key, user=request.user),
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


class PaymentListCreateApi(BasePaymentCreateApi):
    """List your payments (GET); accept a payment for processing (POST).

    The outcome of a new payment arrives over the socket.
    """

    input_serializer_class = PaymentCreateInputSerializer
    success_status = status.HTTP_202_ACCEPTED

    def get_permissions(self) -> list:
        # HEAD too: Django serves it with get(), which needs a user.
        if self.request.method in ("GET", "HEAD"):
            return [permissions.IsAuthenticated()]
        return super().get_permissions()

    @extend_schema(
        operation_id="payments_create",
        request=PaymentCreateInputSerializer,
        parameters=[openapi.IDEMPOTENCY_KEY],
        responses={202: PaymentOwnerOutputSerializer, **openapi.CREATE_ERRORS},
    )
    def post(self, request: Request) -> Response:
        response = super().post(request)
        if response.status_code == status.HTTP_202_ACCEPTED:
            response["Location"] = reverse(
                "payments:detail", args=[response.data["id"]]
            )
        return response

    @extend_schema(
        operation_id="payments_list",
        parameters=openapi.LIST_PARAMETERS,
        responses={200: openapi.PAYMENT_PAGE, **openapi.errors(400, 401, 403)},
    )
    def get(self, request: Request) -> Response:
        filterset = PaymentFilter(
            request.query_params, queryset=selectors.payment_list(user=request.user)
        )
        if not filterset.is_valid():
            raise ValidationError(filterset.errors)
        payments = filterset.qs
        paginator = PaymentPagination()
        page = paginator.paginate_queryset(payments, request, view=self)
        return paginator.get_paginated_response(
            PaymentOutputSerializer(page, many=True).data
        )

    def render(self, payment: Payment) -> dict[str, Any]:
        return payment_owner_data(payment)


class SeedPaymentCreateApi(BasePaymentCreateApi):
    """The seed frontend's original call, kept working as it was."""

    input_serializer_class = SeedPaymentInputSerializer
    success_status = status.HTTP_200_OK

    def render(self, payment: Payment) -> dict[str, Any]:
        return {
            "message": "Payment received, processing request",
            "payment": payment_owner_data(payment),
        }

    @extend_schema(
        operation_id="payments_seed_create",
        request=SeedPaymentInputSerializer,
        parameters=[openapi.IDEMPOTENCY_KEY],
        responses={200: openapi.SEED_RESPONSE, **openapi.CREATE_ERRORS},
    )
    def post(self, request: Request) -> Response:
        return super().post(request)


class PaymentDetailApi(APIView):
    """Read one payment: the polling fallback and catch-up over HTTP."""

    @extend_schema(
        operation_id="payments_retrieve",
        parameters=openapi.CLIENT_SECRET_PARAMETERS,
        responses={
            # The owner's copy adds client_secret, which the schema allows.
            200: PaymentOutputSerializer,
            **openapi.errors(400, 401, 403, 404),
        },
    )
    def get(self, request: Request, payment_id: str) -> Response:
        payment = selectors.payment_get_visible(
            payment_id=payment_id,
            client_secret=request.query_params.get("client_secret")
            or request.headers.get("X-Client-Secret"),
            user=request.user,
        )
        if payment is None:
            raise NotFound("payment_id: no payment with this id is visible to you.")
        # By hand, as the frames are (tests/test_serializers.py): this is
        # the polling fallback, and the ModelSerializer was most of its cost.
        if selectors.payment_is_owner(payment=payment, user=request.user):
            return Response(payment_owner_data(payment))
        return Response(payment_public_data(payment))


class AuthTokenApi(ObtainAuthToken):
    """Exchange a username and password for a token (``Authorization: Token ...``)."""

    throttle_classes = [AuthTokenThrottle]
    serializer_class = AuthTokenInputSerializer
    # ObtainAuthToken's own list, with the project's JSON parser.
    parser_classes = [FormParser, MultiPartParser, JSONParser]

    @extend_schema(
        operation_id="auth_token_create",
        request=AuthTokenInputSerializer,
        responses={
            200: openapi.AUTH_TOKEN,
            **openapi.errors(400, 413, 415, 429, 503),
        },
    )
    def post(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        try:
            return super().post(request, *args, **kwargs)
        except ValidationError:
            # django-axes flags the request it refused, or whose failure
            # reached the limit; DRF would only say "Unable to log in".
            if getattr(request, "axes_locked_out", False):
                raise Throttled(
                    wait=get_cool_off(request).total_seconds(),
                    detail=(
                        "username: too many failed logins for this username "
                        "or from this address; locked out."
                    ),
                ) from None
            raise
