from django.urls import path, re_path

from payments.api import apis

app_name = "payments"

urlpatterns = [
    path("", apis.PaymentListCreateApi.as_view(), name="list-create"),
    re_path(
        r"^make-payment-with-socket/?$",
        apis.SeedPaymentCreateApi.as_view(),
        name="seed-create",
    ),
    # A str, not a uuid converter: a malformed id must get the API's JSON 404,
    # not the URL resolver's HTML one.
    path("<str:payment_id>/", apis.PaymentDetailApi.as_view(), name="detail"),
]
