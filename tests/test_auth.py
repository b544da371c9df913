"""Authentication, ownership, authorisation, throttling, production settings, logs.

- Session and token authentication; a logged-in user's payments are theirs.
- GET /api/payments/ lists the caller's own (staff: all), cursor pages and
  status/date filters; anonymous gets 401 in the error shape.
- Another user's payment is invisible over REST (404) and subscribe
  (payment_not_found); staff see all; a client_secret opens its one payment.
- PAYMENTS_REQUIRE_AUTH; create throttles per address and per user (429),
  failing open when Redis is away.
- Password guessing at the admin and the token endpoint: django-axes locks an
  address and a username out after AXES_FAILURE_LIMIT failures (429 JSON on
  the API), for the cool-off; the token throttle fails closed (503).
- Production settings pass ``check --deploy`` and refuse to start without
  their secrets.
- After a full end-to-end flow on real processes, neither log shows a
  client_secret or a socket_id.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import uuid
from base64 import b64encode
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.db import connection, connections
from django.test import Client
from django_tasks_db.models import DBTaskResult
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient
from websockets.asyncio.client import connect

from config.asgi import application
from payments.api.throttling import (
    AuthTokenThrottle,
    PaymentCreateAnonThrottle,
    PaymentCreateUserThrottle,
    counters,
)
from payments.models import Payment, PaymentStatus
from tests.factories import PaymentFactory
from tests.live import REPO_ROOT, LiveStack, database_url, free_port, live_stack

CREATE = "/api/payments/"
SEED = "/api/payments/make-payment-with-socket"
LIST = "/api/payments/"
TOKEN = "/api/auth/token/"
PASSWORD = "correct horse battery staple"
WS_PATH = "/ws/payments/"
ORIGIN = "http://localhost:3000"


def detail(payment_id: Any) -> str:
    return f"/api/payments/{payment_id}/"


def assert_error(response: Any, status: int, code: str, name: str) -> None:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == code, error
    assert name in error["message"], error


@pytest.fixture
def make_user(django_user_model):
    def make(username: str, *, staff: bool = False) -> Any:
        return django_user_model.objects.create_user(
            username=username, password=PASSWORD, is_staff=staff
        )

    return make


def token_client(user: Any) -> APIClient:
    client = APIClient()
    client.credentials(
        HTTP_AUTHORIZATION=f"Token {Token.objects.get_or_create(user=user)[0].key}"
    )
    return client


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


# Listing --------------------------------------------------------------------------


@pytest.mark.django_db
def test_list_anonymous_is_401_in_the_error_shape(api_client) -> None:
    response = api_client.get(LIST)

    assert_error(response, 401, "not_authenticated", "Authorization")
    assert response["WWW-Authenticate"] == "Token"


@pytest.mark.django_db
def test_list_shows_only_the_callers_payments_and_staff_sees_all(make_user) -> None:
    ann, bob = make_user("ann"), make_user("bob")
    staff = make_user("staff", staff=True)
    anns = {str(PaymentFactory(user=ann).id) for _ in range(3)}
    bobs = {str(PaymentFactory(user=bob).id) for _ in range(2)}
    anonymous = {str(PaymentFactory().id)}

    def listed(user: Any) -> set[str]:
        response = token_client(user).get(LIST)
        assert response.status_code == 200, response.content
        results = response.json()["results"]
        assert all("client_secret" not in p for p in results)
        return {p["id"] for p in results}

    assert listed(ann) == anns
    assert listed(bob) == bobs
    assert listed(staff) == anns | bobs | anonymous


@pytest.mark.django_db
def test_list_pages_with_a_cursor(make_user) -> None:
    ann = make_user("ann")
    start = datetime(2026, 1, 1, tzinfo=UTC)
    ids = []
    for minute in range(5):
        payment = PaymentFactory(user=ann)
        Payment.objects.filter(pk=payment.pk).update(
            created_at=start + timedelta(minutes=minute)
        )
        ids.append(str(payment.id))
    PaymentFactory(user=make_user("bob"))
    client = token_client(ann)

    pages = []
    url = f"{LIST}?page_size=2"
    while url:
        response = client.get(url)
        assert response.status_code == 200, response.content
        body = response.json()
        pages.append([p["id"] for p in body["results"]])
        url = body["next"]

    # Newest first, two a page, each payment once.
    assert pages == [ids[4:2:-1], ids[2:0:-1], ids[0:1]]
    last = client.get(client.get(f"{LIST}?page_size=2").json()["next"]).json()
    back = client.get(last["previous"]).json()
    assert [p["id"] for p in back["results"]] == ids[4:2:-1]


@pytest.mark.django_db
def test_list_default_page_size_is_50(make_user) -> None:
    ann = make_user("ann")
    for _ in range(51):
        PaymentFactory(user=ann)

    body = token_client(ann).get(LIST).json()

    assert len(body["results"]) == 50
    assert body["next"]


@pytest.mark.django_db
def test_list_filters_by_status_and_date(make_user) -> None:
    ann = make_user("ann")
    client = token_client(ann)
    by_status = {
        status: PaymentFactory(user=ann, status=status)
        for status in [
            PaymentStatus.PENDING,
            PaymentStatus.SUCCEEDED,
            PaymentStatus.FAILED,
        ]
    }
    old = by_status[PaymentStatus.FAILED]
    Payment.objects.filter(pk=old.pk).update(
        created_at=datetime(2020, 1, 1, tzinfo=UTC)
    )

    def ids(**query: Any) -> set[str]:
        response = client.get(LIST, query)
        assert response.status_code == 200, response.content
        return {p["id"] for p in response.json()["results"]}

    assert ids(status="succeeded") == {str(by_status["succeeded"].id)}
    assert ids(status=["succeeded", "failed"]) == {
        str(by_status["succeeded"].id),
        str(old.id),
    }
    assert ids(status="canceled") == set()
    assert ids(created_before="2021-01-01T00:00:00Z") == {str(old.id)}
    assert ids(created_after="2021-01-01T00:00:00Z") == {
        str(by_status["pending"].id),
        str(by_status["succeeded"].id),
    }
    assert ids(created_after="2021-01-01T00:00:00Z", status="succeeded") == {
        str(by_status["succeeded"].id)
    }
    # A blank filter is no filter.
    assert len(ids(created_after="", page_size="")) == 3
    # Offsets ISO 8601 allows and PostgreSQL refuses (beyond ±15:59) are
    # compared in UTC, in a filter as in a cursor's position.
    assert ids(created_before="2020-01-02T20:00:00+22:00") == {str(old.id)}
    position = urlencode({"p": "2020-01-02T20:00:00+22:00"})
    assert ids(cursor=b64encode(position.encode()).decode()) == {str(old.id)}


# Authorisation over REST ----------------------------------------------------------


@pytest.mark.django_db
def test_another_users_payment_is_404_to_everyone_but_owner_and_staff(
    make_user,
) -> None:
    ann, bob = make_user("ann"), make_user("bob")
    staff = make_user("staff", staff=True)
    payment = PaymentFactory(user=ann)

    assert token_client(ann).get(detail(payment.id)).status_code == 200
    assert token_client(staff).get(detail(payment.id)).status_code == 200
    bobs_view = token_client(bob).get(detail(payment.id))
    assert_error(bobs_view, 404, "not_found", "payment_id")
    unknown = token_client(bob).get(detail(uuid.uuid4()))
    # "Not yours" and "no such payment" are indistinguishable.
    assert bobs_view.json() == unknown.json()
    # Bob's own secret opens Bob's payment only.
    bobs = PaymentFactory(user=bob)
    response = token_client(bob).get(
        detail(payment.id), {"client_secret": bobs.client_secret}
    )
    assert response.status_code == 404


@pytest.mark.django_db
def test_anonymous_with_a_secret_sees_only_that_payment(api_client) -> None:
    mine, other = PaymentFactory(), PaymentFactory()

    own = api_client.get(detail(mine.id), {"client_secret": mine.client_secret})
    foreign = api_client.get(detail(other.id), {"client_secret": mine.client_secret})

    assert own.status_code == 200
    assert "client_secret" not in own.json()
    assert_error(foreign, 404, "not_found", "payment_id")
    assert_error(api_client.get(LIST), 401, "not_authenticated", "Authorization")


# Authorisation over the socket ----------------------------------------------------


@database_sync_to_async
def session_cookie(user: Any) -> tuple[bytes, bytes]:
    client = Client()
    client.force_login(user)
    session = client.cookies[settings.SESSION_COOKIE_NAME].value
    return (b"cookie", f"{settings.SESSION_COOKIE_NAME}={session}".encode())


@pytest.fixture
async def socket() -> AsyncIterator[Any]:
    opened: list[WebsocketCommunicator] = []

    async def open_socket(*headers: tuple[bytes, bytes]) -> WebsocketCommunicator:
        comm = WebsocketCommunicator(
            application,
            WS_PATH,
            headers=[(b"origin", ORIGIN.encode()), (b"host", b"testserver"), *headers],
        )
        opened.append(comm)
        connected, _ = await comm.connect(timeout=5)
        assert connected
        assert (await comm.receive_json_from(timeout=5))["event"] == "socket-id"
        return comm

    yield open_socket
    for comm in opened:
        if not comm.future.done():
            await comm.disconnect(timeout=5)
    await database_sync_to_async(connections.close_all)()


async def subscribe(
    comm: WebsocketCommunicator, payment: Any, secret: str = ""
) -> dict:
    frame = {"action": "subscribe", "payment_id": str(payment.id)}
    if secret:
        frame["client_secret"] = secret
    await comm.send_json_to(frame)
    return await comm.receive_json_from(timeout=5)


@pytest.mark.django_db(transaction=True)
async def test_subscribe_is_refused_for_another_users_payment(
    socket, make_user
) -> None:
    make = database_sync_to_async(make_user)
    ann, bob = await make("ann"), await make("bob")
    payment = await database_sync_to_async(PaymentFactory)(user=ann)
    bobs = await socket(await session_cookie(bob))
    anns = await socket(await session_cookie(ann))

    refused = await subscribe(bobs, payment)
    owned = await subscribe(anns, payment)

    assert refused["event"] == "error"
    assert refused["data"]["code"] == "payment_not_found"
    assert owned["event"] == "payment-status"
    assert owned["data"]["id"] == str(payment.id)
    assert "client_secret" not in owned["data"]


@pytest.mark.django_db(transaction=True)
async def test_staff_can_subscribe_to_any_payment(socket, make_user) -> None:
    staff = await database_sync_to_async(make_user)("staff", staff=True)
    payment = await database_sync_to_async(PaymentFactory)()
    comm = await socket(await session_cookie(staff))

    frame = await subscribe(comm, payment)

    assert frame["event"] == "payment-status"
    assert frame["data"]["id"] == str(payment.id)


@pytest.mark.django_db(transaction=True)
async def test_anonymous_with_a_secret_subscribes_to_that_payment_only(socket) -> None:
    create = database_sync_to_async(PaymentFactory)
    mine, other = await create(), await create()
    comm = await socket()

    assert (await subscribe(comm, mine, mine.client_secret))[
        "event"
    ] == "payment-status"
    refused = await subscribe(comm, other, mine.client_secret)
    without = await subscribe(comm, other)

    assert refused["data"]["code"] == "payment_not_found"
    assert without["data"]["code"] == "payment_not_found"


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


# Throttling -----------------------------------------------------------------------

ANON_LIMIT = 3
USER_LIMIT = 5


@pytest.fixture
def throttles(monkeypatch, settings) -> None:
    """Small create limits on a cache key space of this test's own."""
    rates = {
        "payments_create_anon": f"{ANON_LIMIT}/hour",
        "payments_create_user": f"{USER_LIMIT}/hour",
        "auth_token": f"{ANON_LIMIT}/hour",
    }
    # The classes copy the rates from settings when DRF is imported.
    monkeypatch.setattr(PaymentCreateAnonThrottle, "THROTTLE_RATES", rates)
    monkeypatch.setattr(PaymentCreateUserThrottle, "THROTTLE_RATES", rates)
    monkeypatch.setattr(AuthTokenThrottle, "THROTTLE_RATES", rates)
    settings.CACHES = {
        "default": {
            **settings.CACHES["default"],
            "KEY_PREFIX": f"test-throttle-{uuid.uuid4().hex}",
        }
    }


def create_from(client: APIClient, address: str, **headers: str) -> Any:
    return client.post(
        CREATE, {"amount": 1000}, format="json", REMOTE_ADDR=address, **headers
    )


def assert_throttled(response: Any) -> None:
    assert_error(response, 429, "throttled", "throttled")
    assert int(response["Retry-After"]) > 0


@pytest.mark.django_db
@pytest.mark.usefixtures("throttles")
def test_anonymous_creates_are_limited_per_address() -> None:
    client = APIClient()

    answers = [
        create_from(client, "203.0.113.1").status_code for _ in range(ANON_LIMIT)
    ]
    over = create_from(client, "203.0.113.1")
    elsewhere = create_from(client, "203.0.113.2")

    assert answers == [202] * ANON_LIMIT
    assert_throttled(over)
    assert elsewhere.status_code == 202
    assert Payment.objects.count() == ANON_LIMIT + 1
    # The seed route draws on the same allowance.
    seed = client.post(SEED, {"amount": 1}, format="json", REMOTE_ADDR="203.0.113.1")
    assert_throttled(seed)


@pytest.mark.django_db
@pytest.mark.usefixtures("throttles")
def test_a_forged_x_forwarded_for_does_not_reset_the_address_limit() -> None:
    client = APIClient()
    for _ in range(ANON_LIMIT):
        assert create_from(client, "203.0.113.1").status_code == 202

    forged = create_from(client, "203.0.113.1", HTTP_X_FORWARDED_FOR="198.51.100.7")

    assert_throttled(forged)


@pytest.mark.django_db
@pytest.mark.usefixtures("throttles")
def test_behind_a_declared_proxy_the_forwarded_address_counts(settings) -> None:
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "NUM_PROXIES": 1}
    client = APIClient()
    proxy = "10.0.0.1"
    for _ in range(ANON_LIMIT):
        response = create_from(client, proxy, HTTP_X_FORWARDED_FOR="198.51.100.7")
        assert response.status_code == 202

    assert_throttled(create_from(client, proxy, HTTP_X_FORWARDED_FOR="198.51.100.7"))
    other = create_from(client, proxy, HTTP_X_FORWARDED_FOR="198.51.100.8")
    assert other.status_code == 202


@pytest.mark.django_db
@pytest.mark.usefixtures("throttles")
def test_user_creates_are_limited_per_user_across_addresses(make_user) -> None:
    ann, bob = make_user("ann"), make_user("bob")
    anns = token_client(ann)

    answers = [
        create_from(anns, f"203.0.113.{n}").status_code for n in range(USER_LIMIT)
    ]
    over = create_from(anns, "203.0.113.200")

    assert answers == [202] * USER_LIMIT
    assert_throttled(over)
    assert create_from(token_client(bob), "203.0.113.200").status_code == 202
    assert Payment.objects.filter(user=ann).count() == USER_LIMIT


@pytest.mark.django_db
@pytest.mark.usefixtures("throttles")
def test_password_guesses_for_a_token_are_limited_per_address(make_user) -> None:
    make_user("victim")
    client = APIClient()
    for attempt in range(ANON_LIMIT):
        guess = client.post(
            "/api/auth/token/",
            {"username": "victim", "password": f"guess-{attempt}"},
            format="json",
            REMOTE_ADDR="203.0.113.9",
        )
        assert guess.status_code == 400, guess.content
    over = client.post(
        "/api/auth/token/",
        {"username": "victim", "password": "guess-last"},
        format="json",
        REMOTE_ADDR="203.0.113.9",
    )
    assert_throttled(over)


@pytest.mark.django_db
@pytest.mark.usefixtures("throttles")
def test_a_throttle_counter_expires_with_its_window() -> None:
    assert create_from(APIClient(), "203.0.113.5").status_code == 202

    store = counters()
    keys = list(store.client.scan_iter(match=store.make_key("*203.0.113.5*")))
    ttls = sorted(store.client.ttl(key) for key in keys)

    # One counter per throttle (per address, and per user for an anonymous
    # client), each living one window of the hour-long test rates, plus 1 s.
    assert len(keys) == 2
    assert all(0 < ttl <= 3601 for ttl in ttls), ttls


def hourly_throttle(ident: str, now: float) -> PaymentCreateAnonThrottle:
    """One request a hour for ``ident``, at the time ``now``."""
    throttle = PaymentCreateAnonThrottle()
    throttle.rate, throttle.num_requests, throttle.duration = "1/hour", 1, 3600
    throttle.timer = lambda: now
    throttle.get_cache_key = lambda request, view: ident  # type: ignore[method-assign]
    return throttle


@pytest.mark.usefixtures("throttles")
@pytest.mark.parametrize("now", [0.0, 1_000.5, 86_400.0])
def test_retry_after_is_when_the_clients_window_ends(now: float) -> None:
    ident = f"throttle_anon_203.0.113.{int(now) % 200}"
    first = hourly_throttle(ident, now)
    assert first.allow_request(None, None)
    wait = first.wait()
    assert 1 <= wait <= 3600

    assert not hourly_throttle(ident, now + wait - 0.5).allow_request(None, None)
    assert hourly_throttle(ident, now + wait + 0.5).allow_request(None, None)


@pytest.mark.usefixtures("throttles")
def test_clients_windows_do_not_all_end_together() -> None:
    waits = set()
    for n in range(5):
        throttle = hourly_throttle(f"throttle_anon_198.51.100.{n}", 0.0)
        throttle.allow_request(None, None)
        waits.add(round(throttle.wait()))

    assert len(waits) > 1


@pytest.mark.django_db
def test_throttle_fails_open_when_the_cache_is_not_redis(settings, caplog) -> None:
    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
    }

    answers = [create_from(APIClient(), "203.0.113.1").status_code for _ in range(2)]

    assert answers == [202, 202]
    assert "throttle store unavailable" in caplog.text


@pytest.mark.django_db
@pytest.mark.usefixtures("throttles")
def test_reads_are_not_throttled(make_user) -> None:
    ann = make_user("ann")
    client = token_client(ann)
    payment = PaymentFactory(user=ann)

    for _ in range(USER_LIMIT + 2):
        assert client.get(detail(payment.id)).status_code == 200
        assert client.get(LIST).status_code == 200


@pytest.mark.django_db
def test_throttle_fails_open_when_redis_is_unreachable(
    monkeypatch, settings, caplog
) -> None:
    rates = {"payments_create_anon": "1/hour", "payments_create_user": "1/hour"}
    monkeypatch.setattr(PaymentCreateAnonThrottle, "THROTTLE_RATES", rates)
    monkeypatch.setattr(PaymentCreateUserThrottle, "THROTTLE_RATES", rates)
    # Nothing listens there: every cache call fails at once.
    settings.CACHES = {
        "default": {
            **settings.CACHES["default"],
            "LOCATION": f"redis://127.0.0.1:{free_port()}/0",
        }
    }
    client = APIClient()

    answers = [create_from(client, "203.0.113.1").status_code for _ in range(3)]

    assert answers == [202, 202, 202]
    assert Payment.objects.count() == 3
    assert "throttle store unavailable" in caplog.text


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

    assert_error(response, 400, "validation_error", f"{name}: ")
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


# Production settings --------------------------------------------------------------


def production_env(**overrides: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DJANGO_", "PAYMENTS_", "REALTIME_"))
        and key not in {"DATABASE_URL", "REDIS_URL", "CORS_ALLOWED_ORIGINS"}
    }
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings.production",
        DJANGO_SECRET_KEY=secrets.token_urlsafe(64),
        DJANGO_ALLOWED_HOSTS="payments.example.com",
        REDIS_URL="redis://redis.example.com:6379/0",
        DJANGO_CSRF_TRUSTED_ORIGINS="https://shop.example.com",
        CORS_ALLOWED_ORIGINS="https://shop.example.com",
    )
    env.update(overrides)
    return {k: v for k, v in env.items() if v}


def run_python(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run_python("manage.py", *args, env=env)


def test_production_settings_pass_check_deploy() -> None:
    result = manage(
        "check", "--deploy", "--fail-level", "WARNING", env=production_env()
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues (0 silenced)." in result.stdout
    assert "WARNINGS" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    "missing", ["DJANGO_SECRET_KEY", "DJANGO_ALLOWED_HOSTS", "REDIS_URL"]
)
def test_production_settings_refuse_to_start_without_a_secret(missing: str) -> None:
    result = manage("check", env=production_env(**{missing: ""}))

    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert missing in result.stderr


def test_production_settings_refuse_a_weak_secret_key() -> None:
    result = manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        env=production_env(DJANGO_SECRET_KEY="short"),
    )

    assert result.returncode != 0
    assert "security.W009" in result.stdout + result.stderr


def pooled(env: dict[str, str]) -> str:
    result = manage(
        "shell",
        "-c",
        "from django.conf import settings; "
        "print('pool' in settings.DATABASES['default']['OPTIONS'])",
        env=env,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def test_postgresql_is_pooled_unless_connections_are_kept() -> None:
    env = production_env(DATABASE_URL="postgres://app@db.example.com:5432/payments")

    assert pooled(env) == "True"
    assert pooled({**env, "DJANGO_CONN_MAX_AGE": "60"}) == "False"
    assert pooled({**env, "DJANGO_DB_POOL": "false"}) == "False"


def test_postgresql_pool_and_kept_connections_are_refused_together() -> None:
    env = production_env(
        DATABASE_URL="postgres://app@db.example.com:5432/payments",
        DJANGO_CONN_MAX_AGE="60",
        DJANGO_DB_POOL="true",
    )

    refused = manage("check", env=env)

    assert refused.returncode != 0
    assert "DJANGO_CONN_MAX_AGE" in refused.stderr
    assert "DJANGO_DB_POOL" in refused.stderr


def start_web(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Build the web process's application, as daphne does at start."""
    return run_python("-c", "import config.asgi", env=env)


def test_a_pool_smaller_than_the_request_threads_is_refused() -> None:
    env = production_env(
        DATABASE_URL="postgres://app@db.example.com:5432/payments",
        ASGI_REQUEST_THREADS="16",
    )
    small = env | {"DJANGO_DB_POOL_MAX_SIZE": "16"}

    for refused in (start_web(small), manage("check", env=small)):
        assert refused.returncode != 0
        assert "DJANGO_DB_POOL_MAX_SIZE (16, database 'default')" in refused.stderr
        assert "payments.E010" in refused.stderr
    started = start_web(env | {"DJANGO_DB_POOL_MAX_SIZE": "17"})
    assert started.returncode == 0, started.stderr


@pytest.mark.parametrize("timeout", ["0", "-1", "nan", "inf"])
def test_asgi_request_thread_timeout_must_be_positive_and_finite(timeout) -> None:
    refused = manage("check", env=production_env(ASGI_REQUEST_THREAD_TIMEOUT=timeout))

    assert refused.returncode != 0
    assert "ASGI_REQUEST_THREAD_TIMEOUT" in refused.stderr


def test_asgi_request_threads_below_one_are_refused() -> None:
    refused = manage("check", env=production_env(ASGI_REQUEST_THREADS="0"))

    assert refused.returncode != 0
    assert "ASGI_REQUEST_THREADS" in refused.stderr


# Secrets never reach the logs -----------------------------------------------------


@pytest.fixture
def live(transactional_db: None, isolated_channel_layer: str) -> Iterator[LiveStack]:
    with live_stack(
        database_url=database_url(connection.settings_dict),
        redis_url=settings.REDIS_URL,
        channels_prefix=isolated_channel_layer,
        PAYMENTS_SIMULATED_DELAY="0.2",
        # Everything the processes log, debug included.
        DJANGO_LOG_LEVEL="DEBUG",
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


async def next_frame(ws: Any) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), 20))


@pytest.mark.e2e
async def test_client_secret_and_socket_id_stay_out_of_the_logs(
    live: LiveStack,
) -> None:
    seen_secrets: list[str] = []
    seen_sockets: list[str] = []
    async with (
        httpx.AsyncClient(base_url=live.http_url, trust_env=False, timeout=20) as http,
        connect(f"{live.ws_url}{WS_PATH}", origin=ORIGIN, proxy=None) as ws,
        connect(f"{live.ws_url}{WS_PATH}", origin=ORIGIN, proxy=None) as other_ws,
    ):
        socket_id = (await next_frame(ws))["data"]
        other_socket_id = (await next_frame(other_ws))["data"]
        seen_sockets += [socket_id, other_socket_id]
        created = await http.post(CREATE, json={"amount": 1000, "socket_id": socket_id})
        seed = await http.post(SEED, json={"amount": 1000, "socketId": other_socket_id})
        assert created.status_code == 202, created.text
        assert seed.status_code == 200, seed.text
        payment, seeded = created.json(), seed.json()["payment"]
        seen_secrets += [payment["client_secret"], seeded["client_secret"]]
        for _ in range(2):
            assert (await next_frame(ws))["event"] == "payment-status"
            assert (await next_frame(other_ws))["event"] == "payment-status"
        # The polling fallback, both ways, right and wrong.
        for secret in [payment["client_secret"], "wrong-" + payment["client_secret"]]:
            await http.get(detail(payment["id"]), params={"client_secret": secret})
            await http.get(detail(payment["id"]), headers={"X-Client-Secret": secret})
        # A subscribe with the secret, and a refused one.
        for secret in [seeded["client_secret"], "x" + seeded["client_secret"]]:
            await ws.send(
                json.dumps(
                    {
                        "action": "subscribe",
                        "payment_id": seeded["id"],
                        "client_secret": secret,
                    }
                )
            )
            await next_frame(ws)
        # Bad requests carrying them.
        await http.post(CREATE, json={"amount": 0, "socket_id": socket_id})
        await http.post(CREATE, json={"amount": 1, "socket_id": socket_id + "!"})
    live.close()  # flush and keep every process's output

    logs = {p.name: p.output() for p in live.history}
    for name, log in logs.items():
        print(f"----- {name} -----\n{log}")  # shown when the test fails
        for secret in seen_secrets:
            assert secret not in log, f"client_secret in {name}'s log"
        for socket_id in seen_sockets:
            assert socket_id not in log, f"socket_id in {name}'s log"
        assert "Traceback" not in log
    # The reads were logged, with the secret redacted.
    assert "client_secret=[redacted]" in logs["daphne"]
    assert f"GET /api/payments/{payment['id']}/" in logs["daphne"]
