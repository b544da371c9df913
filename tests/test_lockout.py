"""Password guessing at the admin and the token endpoint: django-axes locks an
address and a username out after AXES_FAILURE_LIMIT failures (429 JSON on
the API), for the cool-off; the token throttle fails closed (503).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from django.conf import settings
from django.test import Client
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from tests.helpers import (
    PASSWORD,
    TOKEN,
    assert_error,
    create_from,
)
from tests.live import LiveStack, checked_stack, free_port

# Password guessing: lockout per address and per username (django-axes) ----------

ADMIN_LOGIN = "/admin/login/"


@pytest.fixture
def lockout(settings) -> None:
    """django-axes on, as in every environment but the tests' default."""
    settings.AXES_ENABLED = True


def admin_login(client: Client, username: str, password: str, address: str) -> Any:
    return client.post(
        ADMIN_LOGIN,
        {"username": username, "password": password, "next": "/admin/"},
        REMOTE_ADDR=address,
    )


def token_for(username: str, password: str, address: str) -> Any:
    return APIClient().post(
        TOKEN,
        {"username": username, "password": password},
        format="json",
        REMOTE_ADDR=address,
    )


def assert_locked_out(response: Any) -> None:
    assert_error(response, 429, "throttled", "username: ")
    assert "locked out" in response.json()["error"]["message"]
    assert int(response["Retry-After"]) == settings.AXES_COOLOFF_TIME.total_seconds()


@pytest.mark.django_db
@pytest.mark.usefixtures("lockout")
def test_admin_login_locks_out_an_address_after_the_failure_limit(make_user) -> None:
    make_user("root", staff=True)
    client = Client()
    limit = settings.AXES_FAILURE_LIMIT

    answers = [
        admin_login(client, "root", f"guess-{n}", "203.0.113.20").status_code
        for n in range(25)
    ]
    right = admin_login(client, "root", PASSWORD, "203.0.113.20")

    # The form again until the limit, then refusals; the right password too.
    assert answers == [200] * (limit - 1) + [429] * (25 - limit + 1)
    assert right.status_code == 429
    assert "_auth_user_id" not in client.session
    # Other usernames from that address are locked out as well.
    make_user("other", staff=True)
    assert admin_login(Client(), "other", PASSWORD, "203.0.113.20").status_code == 429


@pytest.mark.django_db
@pytest.mark.usefixtures("lockout")
def test_admin_login_locks_out_a_username_across_addresses(make_user) -> None:
    make_user("root", staff=True)
    make_user("other", staff=True)
    limit = settings.AXES_FAILURE_LIMIT

    answers = [
        admin_login(Client(), "root", "guess", f"203.0.113.{n}").status_code
        for n in range(1, limit + 1)
    ]
    client = Client()
    right = admin_login(client, "root", PASSWORD, "198.51.100.1")
    unrelated = Client()
    others = admin_login(unrelated, "other", PASSWORD, "198.51.100.2")

    assert answers == [200] * (limit - 1) + [429]
    assert right.status_code == 429
    assert "_auth_user_id" not in client.session
    # Another user from another address is not affected.
    assert others.status_code == 302
    assert unrelated.session["_auth_user_id"]


@pytest.mark.django_db
@pytest.mark.usefixtures("lockout")
def test_token_guesses_from_many_addresses_lock_the_username_out(make_user) -> None:
    make_user("victim")
    limit = settings.AXES_FAILURE_LIMIT

    guesses = [token_for("victim", f"guess-{n}", f"127.0.0.{n}") for n in range(2, 32)]
    right = token_for("victim", PASSWORD, "127.0.0.200")

    assert [g.status_code for g in guesses[: limit - 1]] == [400] * (limit - 1)
    for guess in guesses[limit - 1 :]:
        assert_locked_out(guess)
    assert_locked_out(right)
    assert not Token.objects.exists()
    make_user("bystander")
    assert token_for("bystander", PASSWORD, "127.0.0.201").status_code == 200


@pytest.mark.django_db
@pytest.mark.usefixtures("lockout")
def test_token_guesses_from_one_address_lock_it_out_for_every_username(
    make_user,
) -> None:
    make_user("ann")
    limit = settings.AXES_FAILURE_LIMIT

    guesses = [token_for(f"user-{n}", "guess", "203.0.113.30") for n in range(limit)]
    right = token_for("ann", PASSWORD, "203.0.113.30")

    assert [g.status_code for g in guesses[:-1]] == [400] * (limit - 1)
    assert_locked_out(guesses[-1])
    assert_locked_out(right)
    assert token_for("ann", PASSWORD, "203.0.113.31").status_code == 200


@pytest.mark.django_db
@pytest.mark.usefixtures("lockout")
def test_a_lockout_ends_with_its_cool_off(make_user) -> None:
    from axes.models import AccessAttempt

    make_user("ann")
    for _ in range(settings.AXES_FAILURE_LIMIT):
        token_for("ann", "guess", "203.0.113.40")
    assert_locked_out(token_for("ann", PASSWORD, "203.0.113.40"))
    # Locked-out attempts are not recorded: they do not extend the lockout.
    assert AccessAttempt.objects.get().failures_since_start == (
        settings.AXES_FAILURE_LIMIT
    )

    AccessAttempt.objects.update(
        attempt_time=datetime.now(UTC)
        - settings.AXES_COOLOFF_TIME
        - timedelta(seconds=1)
    )

    assert token_for("ann", PASSWORD, "203.0.113.40").status_code == 200


@pytest.mark.django_db
@pytest.mark.usefixtures("lockout")
def test_a_forged_x_forwarded_for_does_not_escape_the_lockout(make_user) -> None:
    make_user("ann")
    for n in range(settings.AXES_FAILURE_LIMIT):
        token_for(f"user-{n}", "guess", "203.0.113.50")

    forged = APIClient().post(
        TOKEN,
        {"username": "ann", "password": PASSWORD},
        format="json",
        REMOTE_ADDR="203.0.113.50",
        HTTP_X_FORWARDED_FOR="198.51.100.9",
    )

    assert_locked_out(forged)


@pytest.mark.django_db
@pytest.mark.usefixtures("lockout")
@pytest.mark.parametrize(
    ("body", "name"),
    [
        ({"username": "a" * 151, "password": PASSWORD}, "username"),
        ({"username": "ann", "password": "p" * 4097}, "password"),
        ({"username": "\ud800", "password": PASSWORD}, "username"),
        ({"username": "ann", "password": "\udfff"}, "password"),
    ],
    ids=["long-username", "long-password", "surrogate-username", "surrogate-pw"],
)
def test_token_credentials_are_bounded(make_user, body, name) -> None:
    make_user("ann")
    raw = json.dumps(body)  # \ud800 escapes: valid JSON, not valid Unicode

    response = APIClient().post(TOKEN, raw, content_type="application/json")

    assert_error(response, 400, "validation_error", name)
    assert list(response.json()["error"]["fields"]) == [name]


@pytest.mark.django_db
@pytest.mark.usefixtures("lockout")
def test_token_endpoint_fails_closed_when_redis_is_unreachable(
    make_user, settings, caplog
) -> None:
    make_user("ann")
    # Nothing listens there: every throttle call fails at once.
    settings.CACHES = {
        "default": {
            **settings.CACHES["default"],
            "LOCATION": f"redis://127.0.0.1:{free_port()}/0",
        }
    }

    right = token_for("ann", PASSWORD, "203.0.113.60")
    payment = create_from(APIClient(), "203.0.113.60")

    assert_error(right, 503, "service_unavailable", "rate_limiter: ")
    assert int(right["Retry-After"]) > 0
    assert not Token.objects.exists()
    assert "request refused" in caplog.text
    # Creating payments stays open, as before.
    assert payment.status_code == 202


# On daphne ------------------------------------------------------------------------


@pytest.fixture
def live(transactional_db: None, isolated_channel_layer: str) -> Iterator[LiveStack]:
    with checked_stack(
        isolated_channel_layer,
        AXES_ENABLED="true",
    ) as stack:
        yield stack


@pytest.mark.e2e
def test_admin_login_on_daphne_locks_out_and_refuses_the_right_password(
    live: LiveStack, django_user_model
) -> None:
    """Under daphne Django runs the middleware asynchronously: axes' other path."""
    django_user_model.objects.create_user("root", password=PASSWORD, is_staff=True)
    limit = settings.AXES_FAILURE_LIMIT
    transport = httpx.HTTPTransport(local_address="127.0.0.2")
    with httpx.Client(
        base_url=live.http_url, transport=transport, trust_env=False, timeout=20
    ) as client:
        client.get(ADMIN_LOGIN).raise_for_status()

        def attempt(password: str) -> httpx.Response:
            return client.post(
                ADMIN_LOGIN,
                data={
                    "username": "root",
                    "password": password,
                    "csrfmiddlewaretoken": client.cookies["csrftoken"],
                    "next": "/admin/",
                },
            )

        answers = [attempt(f"guess-{n}").status_code for n in range(25)]
        right = attempt(PASSWORD)

    assert answers == [200] * (limit - 1) + [429] * (25 - limit + 1)
    assert right.status_code == 429, right.text
    assert "sessionid" not in right.cookies
    assert "Traceback" not in right.text and "<html" not in right.text.lower()
