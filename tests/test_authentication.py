"""Session and token authentication; PAYMENTS_REQUIRE_AUTH.

- Session and token authentication; a logged-in user's payments are theirs.
- PAYMENTS_REQUIRE_AUTH: anonymous creates refused when it is on.
"""

from __future__ import annotations

import pytest
from django_tasks_db.models import DBTaskResult
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from payments.models import Payment
from tests.factories import PaymentFactory
from tests.helpers import (
    CREATE,
    PASSWORD,
    SEED,
    TOKEN,
    assert_error,
    detail,
    token_client,
)

# Authentication -------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("content_type", ["json", "multipart"])
def test_token_from_username_and_password_authenticates(
    make_user, content_type
) -> None:
    user = make_user("ann")
    client = APIClient()

    response = client.post(
        TOKEN, {"username": "ann", "password": PASSWORD}, format=content_type
    )

    assert response.status_code == 200, response.content
    token = response.json()["token"]
    assert token == Token.objects.get(user=user).key
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    created = client.post(CREATE, {"amount": 1000}, format="json")
    assert created.status_code == 202, created.content
    assert Payment.objects.get().user == user
    # The owner's copy carries the secret, without sending it.
    assert client.get(detail(created.json()["id"])).json()["client_secret"]


@pytest.mark.django_db
@pytest.mark.parametrize(
    "body",
    [
        {"username": "ann", "password": "wrong"},
        {"username": "nobody", "password": PASSWORD},
        {"username": "ann"},
        {"username": "ann\x00", "password": PASSWORD},
    ],
    ids=["wrong-password", "unknown-user", "no-password", "nul"],
)
def test_bad_credentials_get_no_token(make_user, body) -> None:
    make_user("ann")

    response = APIClient().post(TOKEN, body, format="json")

    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert error["fields"]
    assert not Token.objects.exists()


@pytest.mark.django_db
def test_inactive_user_gets_no_token(make_user) -> None:
    user = make_user("ann")
    user.is_active = False
    user.save()

    response = APIClient().post(
        TOKEN, {"username": "ann", "password": PASSWORD}, format="json"
    )

    assert response.status_code == 400
    assert not Token.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize("header", ["Token nope", "Token ", "Token a b", "Token é"])
def test_bad_token_is_401_not_anonymous(make_user, header) -> None:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header)

    response = client.post(CREATE, {"amount": 1000}, format="json")

    assert_error(response, 401, "authentication_failed", "Authorization")
    assert not Payment.objects.exists()


@pytest.mark.django_db
def test_session_login_owns_payments(make_user) -> None:
    user = make_user("ann")
    client = APIClient()
    assert client.login(username="ann", password=PASSWORD)

    response = client.post(CREATE, {"amount": 1000}, format="json")
    seed = client.post(SEED, {"amount": 500}, format="json")

    assert response.status_code == 202, response.content
    assert seed.status_code == 200, seed.content
    assert set(Payment.objects.values_list("user", flat=True)) == {user.pk}


@pytest.mark.django_db
def test_session_post_without_csrf_token_is_refused(make_user) -> None:
    """A cross-site form cannot create payments with the user's cookie."""
    make_user("ann")
    client = APIClient(enforce_csrf_checks=True)
    assert client.login(username="ann", password=PASSWORD)

    response = client.post(CREATE, {"amount": 1000}, format="json")

    assert_error(response, 403, "permission_denied", "CSRF")
    assert not Payment.objects.exists()
    assert not DBTaskResult.objects.exists()


# PAYMENTS_REQUIRE_AUTH ------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(("url", "ok"), [(CREATE, 202), (SEED, 200)])
def test_require_auth_refuses_anonymous_creates(settings, make_user, url, ok) -> None:
    settings.PAYMENTS_REQUIRE_AUTH = True

    anonymous = APIClient().post(url, {"amount": 1000}, format="json")

    assert_error(anonymous, 401, "not_authenticated", "Authorization")
    assert not Payment.objects.exists()
    assert not DBTaskResult.objects.exists()
    ann = make_user("ann")
    assert (
        token_client(ann).post(url, {"amount": 1000}, format="json").status_code == ok
    )
    assert Payment.objects.get().user == ann


@pytest.mark.django_db
def test_require_auth_leaves_reading_with_a_secret_alone(settings, api_client) -> None:
    settings.PAYMENTS_REQUIRE_AUTH = True
    payment = PaymentFactory()

    response = api_client.get(
        detail(payment.id), {"client_secret": payment.client_secret}
    )

    assert response.status_code == 200
