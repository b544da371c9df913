"""The REST API over DRF's test client: create, seed route, read, errors."""

from __future__ import annotations

import json
import uuid
from datetime import datetime

import pytest
from django_tasks_db.models import DBTaskResult

from payments import services
from payments.models import Payment, PaymentEvent, PaymentStatus
from realtime.groups import new_socket_id
from tests.factories import PaymentFactory
from tests.helpers import assert_error, detail

pytestmark = pytest.mark.django_db

CREATE_URL = "/api/payments/"
SEED_URLS = [
    "/api/payments/make-payment-with-socket",
    "/api/payments/make-payment-with-socket/",
]
PROCESS_TASK = "payments.tasks.process_payment"

PUBLIC_FIELDS = {
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
}
OWNER_FIELDS = PUBLIC_FIELDS | {"client_secret"}


def post_json(client, url, body):
    return client.post(url, body, format="json")


def assert_nothing_written():
    assert Payment.objects.count() == 0
    assert PaymentEvent.objects.count() == 0
    assert DBTaskResult.objects.count() == 0


# POST /api/payments/ ------------------------------------------------------


def test_create_answers_202_with_payment(api_client):
    response = post_json(api_client, CREATE_URL, {"amount": 1000})

    assert response.status_code == 202, response.content
    body = response.json()
    assert set(body) == OWNER_FIELDS
    payment = Payment.objects.get()
    assert body["id"] == str(payment.id)
    assert body["status"] == "pending"
    assert body["amount"] == 1000
    assert body["currency"] == "usd"
    assert body["payment_method"] == "pm_card_visa"
    assert body["description"] == ""
    assert body["socket_id"] == ""
    assert body["failure_code"] == ""
    assert body["failure_message"] == ""
    assert body["version"] == 1
    assert body["client_secret"] == payment.client_secret
    datetime.fromisoformat(body["created_at"])
    datetime.fromisoformat(body["updated_at"])
    assert response["Location"] == f"/api/payments/{payment.id}/"
    job = DBTaskResult.objects.get()
    assert job.task_path == PROCESS_TASK
    assert job.args_kwargs["kwargs"] == {"payment_id": str(payment.id)}
    # The request's id goes with the payment, so the worker logs under it too.
    assert payment.request_id == response["X-Request-ID"]
    assert payment.user is None


def test_create_with_every_field(api_client):
    socket_id = new_socket_id()

    response = post_json(
        api_client,
        CREATE_URL,
        {
            "amount": 99_999_999,
            "currency": "eur",
            "payment_method": "pm_card_chargeDeclined",
            "description": "d" * 255,
            "socket_id": socket_id,
        },
    )

    assert response.status_code == 202, response.content
    body = response.json()
    assert body["amount"] == 99_999_999
    assert body["currency"] == "eur"
    assert body["payment_method"] == "pm_card_chargeDeclined"
    assert body["description"] == "d" * 255
    assert body["socket_id"] == socket_id
    payment = Payment.objects.get()
    assert (payment.currency, payment.socket_id) == ("eur", socket_id)


def test_create_with_smallest_amount(api_client):
    response = post_json(api_client, CREATE_URL, {"amount": 1})

    assert response.status_code == 202, response.content
    assert Payment.objects.get().amount == 1


def test_create_currency_defaults_from_settings(api_client, settings):
    settings.PAYMENTS_DEFAULT_CURRENCY = "gbp"

    response = post_json(api_client, CREATE_URL, {"amount": 1000})

    assert response.status_code == 202, response.content
    assert response.json()["currency"] == "gbp"


def test_create_accepts_blank_socket_id_and_description(api_client):
    response = post_json(
        api_client, CREATE_URL, {"amount": 1000, "socket_id": "", "description": ""}
    )

    assert response.status_code == 202, response.content
    assert response.json()["socket_id"] == ""


def test_create_each_request_is_a_new_payment(api_client):
    first = post_json(api_client, CREATE_URL, {"amount": 1000}).json()
    second = post_json(api_client, CREATE_URL, {"amount": 1000}).json()

    assert first["id"] != second["id"]
    assert first["client_secret"] != second["client_secret"]
    assert Payment.objects.count() == 2
    assert DBTaskResult.objects.filter(task_path=PROCESS_TASK).count() == 2


def test_create_by_logged_in_user_records_owner(api_client, django_user_model):
    user = django_user_model.objects.create_user(username="ann", password="pw")
    api_client.force_login(user)

    response = post_json(api_client, CREATE_URL, {"amount": 1000})

    assert response.status_code == 202, response.content
    assert Payment.objects.get().user == user


# Seed route ---------------------------------------------------------------


@pytest.mark.parametrize("url", SEED_URLS)
def test_seed_route_creates_payment(api_client, url):
    socket_id = new_socket_id()

    response = post_json(api_client, url, {"amount": 1000, "socketId": socket_id})

    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) == {"message", "payment"}
    assert body["message"] == "Payment received, processing request"
    payment = Payment.objects.get()
    assert set(body["payment"]) == OWNER_FIELDS
    assert body["payment"]["id"] == str(payment.id)
    assert body["payment"]["socket_id"] == socket_id
    assert body["payment"]["status"] == "pending"
    assert body["payment"]["amount"] == 1000
    assert body["payment"]["currency"] == "usd"
    assert payment.socket_id == socket_id
    assert DBTaskResult.objects.get().task_path == PROCESS_TASK


@pytest.mark.parametrize("url", SEED_URLS)
def test_seed_route_without_socket_id(api_client, url):
    response = post_json(api_client, url, {"amount": 1000})

    assert response.status_code == 200, response.content
    assert response.json()["payment"]["socket_id"] == ""


def test_seed_route_rejects_snake_case_socket_id(api_client):
    response = post_json(
        api_client, SEED_URLS[0], {"amount": 1000, "socket_id": new_socket_id()}
    )

    assert_error(response, 400, "validation_error", "socket_id")
    assert_nothing_written()


def test_seed_route_rejects_bad_socket_id(api_client):
    response = post_json(
        api_client, SEED_URLS[0], {"amount": 1000, "socketId": "bad id!"}
    )

    assert_error(response, 400, "validation_error", "socketId")
    assert_nothing_written()


# Validation ----------------------------------------------------------------

AMOUNT_CASES = [
    pytest.param({}, id="empty-object"),
    pytest.param({"currency": "usd"}, id="missing"),
    pytest.param({"amount": -1}, id="negative"),
    pytest.param({"amount": 0}, id="zero"),
    pytest.param({"amount": 100_000_000}, id="too-large"),
    pytest.param({"amount": 10.5}, id="fraction"),
    pytest.param({"amount": 1000.0}, id="float"),
    pytest.param({"amount": "1000"}, id="string"),
    pytest.param({"amount": True}, id="true"),
    pytest.param({"amount": False}, id="false"),
    pytest.param({"amount": None}, id="null"),
    pytest.param({"amount": [1000]}, id="list"),
    pytest.param({"amount": {"value": 1000}}, id="object"),
]

FIELD_CASES = [
    pytest.param({"amount": 1000, "currency": "xyz"}, "currency", id="currency-xyz"),
    pytest.param({"amount": 1000, "currency": "US"}, "currency", id="currency-US"),
    pytest.param({"amount": 1000, "currency": "USD"}, "currency", id="currency-USD"),
    pytest.param({"amount": 1000, "currency": 12}, "currency", id="currency-int"),
    pytest.param({"amount": 1000, "currency": ""}, "currency", id="currency-blank"),
    pytest.param({"amount": 1000, "currency": None}, "currency", id="currency-null"),
    pytest.param(
        {"amount": 1000, "payment_method": "pm_unknown"},
        "payment_method",
        id="method-unknown",
    ),
    pytest.param(
        {"amount": 1000, "payment_method": 5}, "payment_method", id="method-int"
    ),
    pytest.param(
        {"amount": 1000, "socket_id": "bad id!"}, "socket_id", id="socket-bad"
    ),
    pytest.param({"amount": 1000, "socket_id": "short"}, "socket_id", id="short"),
    pytest.param({"amount": 1000, "socket_id": 12}, "socket_id", id="socket-int"),
    pytest.param(
        {"amount": 1000, "socket_id": "a" * 65}, "socket_id", id="socket-long"
    ),
    pytest.param(
        {"amount": 1000, "description": "d" * 256},
        "description",
        id="description-256",
    ),
    pytest.param(
        {"amount": 1000, "description": ["x"]}, "description", id="description-list"
    ),
    pytest.param({"amount": 1000, "foo": 1}, "foo", id="unknown-field"),
]

BODY_CASES = [
    pytest.param("[1,2]", id="array"),
    pytest.param('"amount"', id="string"),
    pytest.param("1000", id="number"),
    pytest.param("null", id="null"),
]


@pytest.mark.parametrize("url", [CREATE_URL, *SEED_URLS])
@pytest.mark.parametrize("body", AMOUNT_CASES)
def test_invalid_amount_is_400(api_client, url, body):
    response = post_json(api_client, url, body)

    assert_error(response, 400, "validation_error", "amount")
    assert_nothing_written()


@pytest.mark.parametrize(("body", "field"), FIELD_CASES)
def test_invalid_field_is_400(api_client, body, field):
    response = post_json(api_client, CREATE_URL, body)

    assert_error(response, 400, "validation_error", field)
    assert_nothing_written()


@pytest.mark.parametrize("url", [CREATE_URL, *SEED_URLS])
@pytest.mark.parametrize("raw", BODY_CASES)
def test_json_body_not_an_object_is_400(api_client, url, raw):
    response = api_client.post(url, raw, content_type="application/json")

    assert_error(response, 400, "validation_error", "body")
    assert_nothing_written()


@pytest.mark.parametrize("url", [CREATE_URL, *SEED_URLS])
def test_non_json_body_is_400_parse_error(api_client, url):
    response = api_client.post(url, "not json{", content_type="application/json")

    assert_error(response, 400, "parse_error", "body")
    assert_nothing_written()


@pytest.mark.parametrize("url", [CREATE_URL, *SEED_URLS])
def test_empty_body_is_400(api_client, url):
    response = api_client.post(url, "", content_type="application/json")

    assert response.status_code == 400
    assert response.json()["error"]["code"] in {"validation_error", "parse_error"}
    assert_nothing_written()


@pytest.mark.parametrize("url", [CREATE_URL, *SEED_URLS, "/api/auth/token/"])
def test_json_nested_too_deeply_is_400_parse_error(api_client, url):
    response = api_client.post(url, "[" * 100_000, content_type="application/json")

    assert_error(response, 400, "parse_error", "body")
    assert_nothing_written()


@pytest.mark.parametrize("url", [CREATE_URL, *SEED_URLS])
def test_body_over_upload_limit_is_413_json(api_client, settings, url):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    body = json.dumps({"amount": 1000, "description": "x" * 2000})

    response = api_client.post(url, body, content_type="application/json")

    assert_error(response, 413, "request_too_large", "body")
    assert_nothing_written()


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        pytest.param(
            r'{"amount": 1000, "description": "a\u0000b"}', "description", id="nul"
        ),
        pytest.param(
            r'{"amount": 1000, "description": "\ud800"}', "description", id="surrogate"
        ),
        pytest.param(
            r'{"amount": 1000, "payment_method": "\ud800"}',
            "payment_method",
            id="surrogate-method",
        ),
    ],
)
def test_characters_the_database_cannot_store_are_400(api_client, raw, field):
    response = api_client.post(CREATE_URL, raw, content_type="application/json")

    assert_error(response, 400, "validation_error", field)
    assert_nothing_written()


@pytest.mark.parametrize("raw", ['{"amount": NaN}', '{"amount": Infinity}'])
def test_non_standard_json_constants_are_parse_errors(api_client, raw):
    response = api_client.post(CREATE_URL, raw, content_type="application/json")

    assert_error(response, 400, "parse_error", "body")
    assert_nothing_written()


def test_body_not_utf8_is_400_parse_error(api_client):
    response = api_client.post(
        CREATE_URL,
        b'{"amount": 1000, "description": "\xff"}',
        content_type="application/json",
    )

    assert_error(response, 400, "parse_error", "body")
    assert_nothing_written()


def test_several_invalid_fields_are_all_named(api_client):
    response = post_json(
        api_client,
        CREATE_URL,
        {"amount": 0, "currency": "xyz", "payment_method": "pm_unknown"},
    )

    error = assert_error(
        response,
        400,
        "validation_error",
        "amount",
        "currency",
        "payment_method",
    )
    assert set(error["fields"]) == {"amount", "currency", "payment_method"}
    assert_nothing_written()


@pytest.mark.parametrize("url", [CREATE_URL, *SEED_URLS])
def test_form_encoded_body_is_415(api_client, url):
    response = api_client.post(url, {"amount": 1000})  # multipart form

    assert_error(response, 415, "unsupported_media_type")
    assert_nothing_written()


def test_url_encoded_body_is_415(api_client):
    response = api_client.post(
        CREATE_URL, "amount=1000", content_type="application/x-www-form-urlencoded"
    )

    assert_error(response, 415, "unsupported_media_type")
    assert_nothing_written()


@pytest.mark.parametrize("method", ["put", "patch", "delete"])
def test_other_methods_on_create_are_405(api_client, method):
    response = getattr(api_client, method)(CREATE_URL)

    assert_error(response, 405, "method_not_allowed")
    assert_nothing_written()


def test_post_on_detail_is_405(api_client):
    payment = PaymentFactory()

    response = post_json(api_client, detail(payment.id), {"amount": 1})

    assert_error(response, 405, "method_not_allowed")


@pytest.mark.parametrize("currency", ["usd", "eur", "jpy"])
def test_supported_currency_is_accepted(api_client, currency):
    response = post_json(api_client, CREATE_URL, {"amount": 1000, "currency": currency})

    assert response.status_code == 202, response.content
    assert response.json()["currency"] == currency
    assert Payment.objects.get().currency == currency


@pytest.mark.parametrize(
    "method",
    [
        "pm_card_visa",
        "pm_card_mastercard",
        "pm_card_chargeDeclined",
        "pm_card_chargeDeclinedInsufficientFunds",
        "pm_card_chargeDeclinedExpiredCard",
    ],
)
def test_every_test_payment_method_is_accepted(api_client, method):
    response = post_json(
        api_client, CREATE_URL, {"amount": 1000, "payment_method": method}
    )

    assert response.status_code == 202, response.content
    assert response.json()["payment_method"] == method


# GET /api/payments/{id}/ --------------------------------------------------


@pytest.fixture
def created(api_client) -> dict:
    """A payment created over the API by an anonymous client."""
    response = post_json(api_client, CREATE_URL, {"amount": 1000})
    assert response.status_code == 202
    return response.json()


def test_get_with_client_secret_query(api_client, created):
    response = api_client.get(
        detail(created["id"]), {"client_secret": created["client_secret"]}
    )

    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) == PUBLIC_FIELDS
    assert body["id"] == created["id"]
    assert body["status"] == "pending"
    assert body["version"] == 1


def test_get_with_client_secret_header(api_client, created):
    response = api_client.get(
        detail(created["id"]), HTTP_X_CLIENT_SECRET=created["client_secret"]
    )

    assert response.status_code == 200, response.content
    assert set(response.json()) == PUBLIC_FIELDS


def test_get_reflects_processing_outcome(api_client, created):
    services.payment_process(payment_id=created["id"])

    response = api_client.get(
        detail(created["id"]), {"client_secret": created["client_secret"]}
    )

    body = response.json()
    assert body["status"] == PaymentStatus.SUCCEEDED
    assert body["version"] == 3


def test_get_shows_failure(api_client):
    created = post_json(
        api_client,
        CREATE_URL,
        {"amount": 1000, "payment_method": "pm_card_chargeDeclinedInsufficientFunds"},
    ).json()
    services.payment_process(payment_id=created["id"])

    body = api_client.get(
        detail(created["id"]), {"client_secret": created["client_secret"]}
    ).json()

    assert body["status"] == "failed"
    assert body["failure_code"] == "insufficient_funds"
    assert body["failure_message"]


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"data": {"client_secret": "wrong"}}, id="wrong-query"),
        pytest.param({"HTTP_X_CLIENT_SECRET": "wrong"}, id="wrong-header"),
        pytest.param({"data": {"client_secret": ""}}, id="empty-query"),
        pytest.param({}, id="missing"),
    ],
)
def test_get_without_right_secret_is_404(api_client, created, kwargs):
    response = api_client.get(detail(created["id"]), **kwargs)

    error = assert_error(response, 404, "not_found")
    assert created["client_secret"] not in json.dumps(response.json())
    assert "payment_id" in error["message"]


def test_get_with_another_payments_secret_is_404(api_client, created):
    other = PaymentFactory()

    response = api_client.get(
        detail(other.id), {"client_secret": created["client_secret"]}
    )

    assert_error(response, 404, "not_found")


def test_get_unknown_payment_is_404(api_client, created):
    response = api_client.get(
        detail(uuid.uuid4()), {"client_secret": created["client_secret"]}
    )

    assert_error(response, 404, "not_found")


@pytest.mark.parametrize(
    "payment_id", ["not-a-uuid", "1", "00000000-0000-0000-0000", "%20"]
)
def test_get_malformed_id_is_json_404(api_client, payment_id):
    response = api_client.get(detail(payment_id), {"client_secret": "x"})

    assert_error(response, 404, "not_found")


def test_get_unknown_and_forbidden_look_the_same(api_client, created):
    unknown = api_client.get(detail(uuid.uuid4()))
    forbidden = api_client.get(detail(created["id"]))

    assert unknown.status_code == forbidden.status_code == 404
    assert unknown.json() == forbidden.json()


def test_get_by_staff_without_secret(api_client, created, django_user_model):
    staff = django_user_model.objects.create_user(
        username="staff", password="pw", is_staff=True
    )
    api_client.force_login(staff)

    response = api_client.get(detail(created["id"]))

    assert response.status_code == 200, response.content
    assert set(response.json()) == PUBLIC_FIELDS


def test_get_by_other_user_is_404(api_client, created, django_user_model):
    user = django_user_model.objects.create_user(username="bob", password="pw")
    api_client.force_login(user)

    response = api_client.get(detail(created["id"]))

    assert_error(response, 404, "not_found")


def test_get_by_owner_includes_client_secret(api_client, django_user_model):
    owner = django_user_model.objects.create_user(username="ann", password="pw")
    api_client.force_login(owner)
    created = post_json(api_client, CREATE_URL, {"amount": 1000}).json()

    response = api_client.get(detail(created["id"]))

    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) == OWNER_FIELDS
    assert body["client_secret"] == created["client_secret"]


def test_owner_is_not_someone_else(api_client, django_user_model):
    owner = django_user_model.objects.create_user(username="ann", password="pw")
    other = django_user_model.objects.create_user(username="bob", password="pw")
    api_client.force_login(owner)
    created = post_json(api_client, CREATE_URL, {"amount": 1000}).json()
    api_client.logout()
    api_client.force_login(other)

    response = api_client.get(detail(created["id"]))

    assert_error(response, 404, "not_found")


def test_owner_logged_out_needs_secret(api_client, django_user_model):
    owner = django_user_model.objects.create_user(username="ann", password="pw")
    api_client.force_login(owner)
    created = post_json(api_client, CREATE_URL, {"amount": 1000}).json()
    api_client.logout()

    response = api_client.get(detail(created["id"]))

    assert_error(response, 404, "not_found")


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/api/payments/a/b/", "/api/nothing/", "/api/"])
def test_unknown_api_path_is_json_404(api_client, path):
    response = api_client.get(path)
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json()["error"]["code"] == "not_found"


@pytest.mark.django_db
def test_database_unavailable_is_503_with_retry_after(api_client, monkeypatch):
    from django.db import OperationalError

    from payments import services

    def away(**kwargs):
        raise OperationalError("connection failed: the pool timed out")

    monkeypatch.setattr(services, "payment_create", away)

    response = api_client.post("/api/payments/", {"amount": 1000}, format="json")

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "service_unavailable"
    assert response.json()["error"]["message"].startswith("database:")
    assert int(response["Retry-After"]) > 0
