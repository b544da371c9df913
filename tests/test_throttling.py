"""Create throttles per address and per user (429), failing open when Redis
is away.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from rest_framework.test import APIClient

from payments.api.throttling import (
    AuthTokenThrottle,
    PaymentCreateAnonThrottle,
    PaymentCreateUserThrottle,
    counters,
)
from payments.models import Payment
from tests.factories import PaymentFactory
from tests.helpers import (
    LIST,
    SEED,
    assert_error,
    create_from,
    detail,
    token_client,
)
from tests.live import free_port

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
