"""Idempotency-Key: replay, conflict, concurrency, scope, expiry, unguessable keys."""

from __future__ import annotations

import secrets
import string
import uuid
from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import Client
from django.utils import timezone
from django_tasks_db.models import DBTaskResult

from payments.api import idempotency
from payments.models import IdempotencyKey, Payment
from tests.helpers import at_once
from tests.live import LiveStack, checked_stack

CREATE = "/api/payments/"
SEED = "/api/payments/make-payment-with-socket"
# Anonymous keys must be unguessable (a UUID v4 or 32+ random characters).
KEY = "3f6c1c1e-2b9a-4d7e-9a51-0c2f6b8e4d11"
OTHER_KEY = "Zk3_qW9-xP2mR7vT1yN6bH4cJ8dL5sF0aE"


def post(client, url, body, key=None):
    headers = {"Idempotency-Key": key} if key is not None else {}
    return client.post(url, body, format="json", headers=headers)


@pytest.mark.django_db
@pytest.mark.parametrize("url", [CREATE, SEED])
def test_replay_returns_first_response_and_creates_nothing(api_client, url):
    first = post(api_client, url, {"amount": 1000}, key=KEY)
    second = post(api_client, url, {"amount": 1000}, key=KEY)

    assert first.status_code in (200, 202)
    assert second.status_code == first.status_code
    assert second.json() == first.json()
    assert second["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first
    assert Payment.objects.count() == 1
    assert DBTaskResult.objects.count() == 1


@pytest.mark.django_db
def test_replay_keeps_location_header(api_client):
    first = post(api_client, CREATE, {"amount": 1000}, key=KEY)
    second = post(api_client, CREATE, {"amount": 1000}, key=KEY)
    assert second["Location"] == first["Location"]


@pytest.mark.django_db
def test_replay_is_the_original_body_even_after_status_changes(api_client):
    first = post(api_client, CREATE, {"amount": 1000}, key=KEY).json()
    Payment.objects.filter(pk=first["id"]).update(status="processing", version=2)
    again = post(api_client, CREATE, {"amount": 1000}, key=KEY).json()
    assert again == first
    assert again["status"] == "pending"


@pytest.mark.django_db
def test_same_key_other_body_is_422(api_client):
    post(api_client, CREATE, {"amount": 1000}, key=KEY)
    response = post(api_client, CREATE, {"amount": 2000}, key=KEY)

    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "idempotency_key_reused"
    assert "Idempotency-Key" in error["message"]
    assert Payment.objects.count() == 1


@pytest.mark.django_db
def test_same_key_on_other_route_is_422(api_client):
    post(api_client, CREATE, {"amount": 1000}, key=KEY)
    response = post(api_client, SEED, {"amount": 1000}, key=KEY)
    assert response.status_code == 422
    assert Payment.objects.count() == 1


@pytest.mark.django_db
def test_invalid_request_is_not_remembered(api_client):
    bad = post(api_client, CREATE, {"amount": -5}, key=KEY)
    good = post(api_client, CREATE, {"amount": 1000}, key=KEY)
    assert bad.status_code == 400
    assert good.status_code == 202
    assert Payment.objects.count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize("key", ["", "x" * 256, "tab\there"])
def test_malformed_key_is_400_and_writes_nothing(api_client, key):
    response = post(api_client, CREATE, {"amount": 1000}, key=key)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert "Idempotency-Key" in error["message"]
    assert Payment.objects.count() == 0
    assert IdempotencyKey.objects.count() == 0


@pytest.mark.django_db
@pytest.mark.parametrize(
    "key",
    [
        "order-42",
        "k" * 31,
        # A UUID, but of version 1: time and host, not random.
        "6ba7b810-9dad-11d1-80b4-00c04fd430c8",
        # Long enough, but with characters outside the random alphabet.
        "order 42 of customer 1234567890 at shop",
        # The right shape, with no chance in it.
        "a" * 40,
        "ab" * 20,
        "0123456789" * 4,
        "abcdefghijklmnopqrstuvwxyzABCDEF",
        "order-42-" + "0" * 30,
        # Version 4 and the RFC variant, but every random bit zero.
        "00000000-0000-4000-8000-000000000000",
        "00000000-0000-0000-0000-000000000000",
        # 38 digits hold 126 bits: fewer than 32 hex characters.
        "73914562087312946580127364019283746501",
    ],
    ids=[
        "short-word",
        "31-chars",
        "uuid-v1",
        "sentence",
        "one-symbol",
        "period-2",
        "period-10",
        "run",
        "zero-padded",
        "uuid-v4-zero",
        "uuid-nil",
        "38-digits",
    ],
)
@pytest.mark.parametrize("url", [CREATE, SEED])
def test_anonymous_guessable_key_is_400_and_writes_nothing(api_client, url, key):
    response = post(api_client, url, {"amount": 1000}, key=key)

    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert error["message"].startswith("Idempotency-Key: ")
    assert "UUID v4" in error["message"]
    assert list(error["fields"]) == ["Idempotency-Key"]
    assert Payment.objects.count() == 0
    assert IdempotencyKey.objects.count() == 0


@pytest.mark.django_db
@pytest.mark.parametrize(
    "key",
    [
        str(uuid.uuid4()),
        str(uuid.uuid4()).upper(),
        uuid.uuid4().hex,
        OTHER_KEY,
        "".join(secrets.choice(string.digits) for _ in range(39)),
    ],
    ids=["uuid4", "uuid4-upper", "uuid4-hex", "base64url-34", "39-digits"],
)
def test_anonymous_random_key_is_accepted(api_client, key):
    assert post(api_client, CREATE, {"amount": 1000}, key=key).status_code == 202


@pytest.mark.parametrize(
    "make",
    [
        lambda: str(uuid.uuid4()),
        lambda: secrets.token_hex(16),
        lambda: secrets.token_urlsafe(24),
        lambda: "".join(secrets.choice(string.digits) for _ in range(39)),
    ],
    ids=["uuid4", "hex-32", "base64url-32", "digits-39"],
)
def test_random_keys_of_the_weakest_accepted_forms_all_pass(make):
    # The estimate's floor sits far below what random keys score: none of
    # 20,000 may be refused (a refusal here is a real client's failed payment).
    keys = [make() for _ in range(20_000)]
    refused = [key for key in keys if not idempotency._is_unguessable(key)]

    assert refused == []


@pytest.mark.django_db
def test_logged_in_user_may_use_a_short_key(api_client):
    user = get_user_model().objects.create_user("carol", password="pw-carol-123")
    api_client.force_authenticate(user)
    first = post(api_client, CREATE, {"amount": 1000}, key="order-42")
    again = post(api_client, CREATE, {"amount": 1000}, key="order-42")

    assert first.status_code == 202
    assert again.json() == first.json()
    assert Payment.objects.count() == 1


@pytest.mark.django_db
def test_key_of_255_characters_is_accepted(api_client):
    key = secrets.token_urlsafe(192)[:255]
    assert post(api_client, CREATE, {"amount": 1000}, key=key).status_code == 202


@pytest.mark.django_db
def test_keys_are_scoped_per_user(api_client):
    alice = get_user_model().objects.create_user("alice", password="pw-alice-123")
    bob = get_user_model().objects.create_user("bob", password="pw-bob-123")
    api_client.force_authenticate(alice)
    a = post(api_client, CREATE, {"amount": 1000}, key="shared")
    api_client.force_authenticate(bob)
    b = post(api_client, CREATE, {"amount": 1000}, key="shared")

    assert a.status_code == b.status_code == 202
    assert a.json()["id"] != b.json()["id"]
    assert Payment.objects.count() == 2


@pytest.mark.django_db
def test_expired_key_is_free_again_and_pruned(api_client, settings):
    first = post(api_client, CREATE, {"amount": 1000}, key=KEY).json()
    IdempotencyKey.objects.update(
        created_at=timezone.now()
        - timedelta(seconds=settings.PAYMENTS_IDEMPOTENCY_KEY_TTL + 1)
    )
    again = post(api_client, CREATE, {"amount": 1000}, key=KEY).json()
    assert again["id"] != first["id"]

    IdempotencyKey.objects.update(
        created_at=timezone.now()
        - timedelta(seconds=settings.PAYMENTS_IDEMPOTENCY_KEY_TTL + 1)
    )
    call_command("prune_idempotency_keys", stdout=open("/dev/null", "w"))
    assert IdempotencyKey.objects.count() == 0
    assert Payment.objects.count() == 2


@pytest.mark.django_db(transaction=True)
def test_concurrent_requests_with_one_key_create_one_payment():
    workers = 20

    def request() -> tuple[int, dict]:
        response = Client().post(
            CREATE,
            {"amount": 4200},
            content_type="application/json",
            headers={"Idempotency-Key": KEY},
        )
        return response.status_code, response.json()

    results = at_once(request, workers)

    assert len(results) == workers
    assert {status for status, _ in results} == {202}
    assert len({body["id"] for _, body in results}) == 1
    assert Payment.objects.count() == 1
    assert (
        DBTaskResult.objects.filter(task_path="payments.tasks.process_payment").count()
        == 1
    )


# Two anonymous clients on real daphne, told apart by their addresses -------------


@pytest.fixture
def live(transactional_db: None, isolated_channel_layer: str) -> Iterator[LiveStack]:
    with checked_stack(
        isolated_channel_layer,
    ) as stack:
        yield stack


def client_at(live: LiveStack, address: str) -> httpx.Client:
    """An HTTP client whose requests come from ``address`` (a loopback alias)."""
    return httpx.Client(
        base_url=live.http_url,
        transport=httpx.HTTPTransport(local_address=address),
        trust_env=False,
        timeout=20,
    )


@pytest.mark.e2e
@pytest.mark.parametrize(
    "key",
    ["order-42", "a" * 40, "00000000-0000-4000-8000-000000000000"],
    ids=["short-word", "one-symbol", "uuid-v4-zero"],
)
def test_a_stranger_cannot_replay_a_guessable_anonymous_key(
    live: LiveStack, key: str
) -> None:
    with client_at(live, "127.0.0.2") as owner, client_at(live, "127.0.0.3") as other:
        first = owner.post(
            CREATE, json={"amount": 1000}, headers={"Idempotency-Key": key}
        )
        stranger = other.post(
            CREATE, json={"amount": 1000}, headers={"Idempotency-Key": key}
        )

    for response in (first, stranger):
        assert response.status_code == 400, response.text
        assert response.json()["error"]["message"].startswith("Idempotency-Key: ")
        assert 'client_secret"' not in response.text
    assert Payment.objects.count() == 0


@pytest.mark.e2e
def test_an_anonymous_retry_from_a_new_address_is_replayed(live: LiveStack) -> None:
    body = {"amount": 1000}
    with client_at(live, "127.0.0.2") as first_address:
        first = first_address.post(CREATE, json=body, headers={"Idempotency-Key": KEY})
    # The client's network changed its address; a stranger there pays too.
    with client_at(live, "127.0.0.3") as new_address:
        retry = new_address.post(CREATE, json=body, headers={"Idempotency-Key": KEY})
        stranger = new_address.post(
            CREATE, json=body, headers={"Idempotency-Key": OTHER_KEY}
        )

    assert first.status_code == 202, first.text
    assert retry.status_code == 202, retry.text
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert retry.json() == first.json()
    assert stranger.status_code == 202, stranger.text
    assert "Idempotent-Replayed" not in stranger.headers
    assert stranger.json()["id"] != first.json()["id"]
    assert stranger.json()["client_secret"] != first.json()["client_secret"]
    assert Payment.objects.count() == 2
    # The two addresses did reach the server as two clients.
    log = live.web.output()
    assert "127.0.0.2" in log and "127.0.0.3" in log, log
