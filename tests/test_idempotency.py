"""Idempotency-Key: replay, conflict, concurrency, scope, expiry."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.utils import timezone
from django_tasks_db.models import DBTaskResult

from payments.models import IdempotencyKey, Payment

CREATE = "/api/payments/"
SEED = "/api/payments/make-payment-with-socket"


def post(client, url, body, key=None):
    headers = {"Idempotency-Key": key} if key is not None else {}
    return client.post(url, body, format="json", headers=headers)


@pytest.mark.django_db
@pytest.mark.parametrize("url", [CREATE, SEED])
def test_replay_returns_first_response_and_creates_nothing(api_client, url):
    first = post(api_client, url, {"amount": 1000}, key="key-1")
    second = post(api_client, url, {"amount": 1000}, key="key-1")

    assert first.status_code in (200, 202)
    assert second.status_code == first.status_code
    assert second.json() == first.json()
    assert second["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first
    assert Payment.objects.count() == 1
    assert DBTaskResult.objects.count() == 1


@pytest.mark.django_db
def test_replay_keeps_location_header(api_client):
    first = post(api_client, CREATE, {"amount": 1000}, key="k")
    second = post(api_client, CREATE, {"amount": 1000}, key="k")
    assert second["Location"] == first["Location"]


@pytest.mark.django_db
def test_replay_is_the_original_body_even_after_status_changes(api_client):
    first = post(api_client, CREATE, {"amount": 1000}, key="k").json()
    Payment.objects.filter(pk=first["id"]).update(status="processing", version=2)
    again = post(api_client, CREATE, {"amount": 1000}, key="k").json()
    assert again == first
    assert again["status"] == "pending"


@pytest.mark.django_db
def test_same_key_other_body_is_422(api_client):
    post(api_client, CREATE, {"amount": 1000}, key="k")
    response = post(api_client, CREATE, {"amount": 2000}, key="k")

    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "idempotency_key_reused"
    assert "Idempotency-Key" in error["message"]
    assert Payment.objects.count() == 1


@pytest.mark.django_db
def test_same_key_on_other_route_is_422(api_client):
    post(api_client, CREATE, {"amount": 1000}, key="k")
    response = post(api_client, SEED, {"amount": 1000}, key="k")
    assert response.status_code == 422
    assert Payment.objects.count() == 1


@pytest.mark.django_db
def test_invalid_request_is_not_remembered(api_client):
    bad = post(api_client, CREATE, {"amount": -5}, key="k")
    good = post(api_client, CREATE, {"amount": 1000}, key="k")
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
def test_key_of_255_characters_is_accepted(api_client):
    assert post(api_client, CREATE, {"amount": 1000}, key="k" * 255).status_code == 202


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
    first = post(api_client, CREATE, {"amount": 1000}, key="k").json()
    IdempotencyKey.objects.update(
        created_at=timezone.now()
        - timedelta(seconds=settings.PAYMENTS_IDEMPOTENCY_KEY_TTL + 1)
    )
    again = post(api_client, CREATE, {"amount": 1000}, key="k").json()
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
    barrier = threading.Barrier(workers)
    results: list[tuple[int, dict]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def request() -> None:
        try:
            client = Client()
            barrier.wait(timeout=30)
            response = client.post(
                CREATE,
                {"amount": 4200},
                content_type="application/json",
                headers={"Idempotency-Key": "race"},
            )
            with lock:
                results.append((response.status_code, response.json()))
        except BaseException as exc:
            with lock:
                errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=request) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert not errors
    assert len(results) == workers
    assert {status for status, _ in results} == {202}
    assert len({body["id"] for _, body in results}) == 1
    assert Payment.objects.count() == 1
    assert (
        DBTaskResult.objects.filter(task_path="payments.tasks.process_payment").count()
        == 1
    )
