"""/healthz, /readyz, /metrics and request ids, in process (Django's test client)."""

from __future__ import annotations

import logging
import re
import uuid
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.db.migrations.recorder import MigrationRecorder
from django.test import Client
from django.utils import timezone
from prometheus_client import REGISTRY

from ops import readiness
from payments import services
from payments.api.throttling import PaymentCreateAnonThrottle
from payments.models import Payment, WorkerHeartbeat
from payments.worker.heartbeat import heartbeat_register
from realtime.server import AccessLog
from tests.live import free_port

pytestmark = pytest.mark.django_db

TOKEN = "metrics-token-for-tests"


@pytest.fixture
def client() -> Client:
    return Client()


@pytest.fixture
def worker() -> str:
    heartbeat_register(worker_id="ops-test-worker")
    return "ops-test-worker"


def checks(response) -> dict[str, dict[str, str]]:
    assert response["Content-Type"] == "application/json"
    return response.json()["checks"]


# /healthz ---------------------------------------------------------------------


def test_healthz_answers_ok_to_any_host_over_plain_http(client: Client) -> None:
    # A probe calls a container by its IP: no ALLOWED_HOSTS entry, no TLS.
    response = client.get("/healthz", HTTP_HOST="10.11.12.13:8000")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert response["Cache-Control"] == "no-store"


def test_probes_refuse_other_methods(client: Client) -> None:
    response = client.post("/readyz")

    assert response.status_code == 405
    assert response["Allow"] == "GET, HEAD"
    assert response.json()["error"]["code"] == "method_not_allowed"


def test_probes_get_no_cors_headers(client: Client) -> None:
    response = client.get("/healthz", HTTP_ORIGIN="http://localhost:3000")

    assert response.status_code == 200
    assert "Access-Control-Allow-Origin" not in response


# /readyz --------------------------------------------------------------------


def test_readyz_is_200_when_every_check_passes(client: Client, worker: str) -> None:
    response = client.get("/readyz", HTTP_HOST="10.11.12.13")

    assert response.status_code == 200, response.content
    assert response.json() == {
        "status": "ok",
        "checks": {
            "database": {"status": "ok"},
            "channel_layer": {"status": "ok"},
            "workers": {"status": "ok"},
            "migrations": {"status": "ok"},
        },
    }


def test_readyz_is_503_without_a_worker(client: Client, settings) -> None:
    response = client.get("/readyz")

    assert response.status_code == 503
    assert response.json()["status"] == "error"
    dead_after = settings.TASKS_WORKER_DEAD_AFTER
    assert checks(response)["workers"] == {
        "status": "error",
        "reason": f"no worker heartbeat in the last {dead_after:g} s",
    }
    assert checks(response)["database"] == {"status": "ok"}


def test_readyz_is_503_when_the_only_worker_went_quiet(
    client: Client, worker: str, settings
) -> None:
    WorkerHeartbeat.objects.filter(worker_id=worker).update(
        beat_at=timezone.now() - timedelta(seconds=settings.TASKS_WORKER_DEAD_AFTER + 5)
    )

    response = client.get("/readyz")

    assert response.status_code == 503
    assert checks(response)["workers"]["status"] == "error"


def test_readyz_is_503_when_redis_is_away(
    client: Client, worker: str, settings
) -> None:
    away = f"redis://127.0.0.1:{free_port()}/0"
    layer = settings.CHANNEL_LAYERS["default"]
    host = {**layer["CONFIG"]["hosts"][0], "address": away}
    settings.CHANNEL_LAYERS = {
        "default": {**layer, "CONFIG": {**layer["CONFIG"], "hosts": [host]}}
    }

    response = client.get("/readyz")

    assert response.status_code == 503
    result = checks(response)
    assert result["channel_layer"] == {
        "status": "error",
        "reason": "channel layer unreachable: ConnectionError",
    }
    assert result["database"] == result["workers"] == {"status": "ok"}
    # Nothing about where Redis is, and no traceback.
    assert away.split("//")[1].split("/")[0] not in response.content.decode()
    assert b"Traceback" not in response.content


def test_readyz_is_503_with_an_unapplied_migration(client: Client, worker: str) -> None:
    MigrationRecorder(connection).record_unapplied("payments", "0002_workerheartbeat")

    response = client.get("/readyz")

    assert response.status_code == 503
    assert checks(response)["migrations"] == {
        "status": "error",
        "reason": "not applied: payments.0002_workerheartbeat",
    }


def test_readyz_gives_a_failure_s_class_never_its_message(
    client: Client, worker: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Refusing:
        def ping(self) -> None:
            raise readiness.redis.ConnectionError("secret-host:6379 password=hunter2")

    monkeypatch.setattr(readiness, "_redis_client", lambda host: Refusing())

    response = client.get("/readyz")

    assert response.status_code == 503
    assert checks(response)["channel_layer"]["reason"] == (
        "channel layer unreachable: ConnectionError"
    )
    assert b"hunter2" not in response.content
    assert b"secret-host" not in response.content


# /metrics -------------------------------------------------------------------


def test_metrics_are_off_without_a_token(client: Client, settings) -> None:
    settings.METRICS_TOKEN = ""

    response = client.get("/metrics", HTTP_AUTHORIZATION="Bearer ")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    "authorization", [None, "Bearer wrong", f"Basic {TOKEN}", TOKEN, "Bearer"]
)
def test_metrics_want_the_bearer_token(
    client: Client, settings, authorization: str | None
) -> None:
    settings.METRICS_TOKEN = TOKEN
    headers = {} if authorization is None else {"HTTP_AUTHORIZATION": authorization}

    response = client.get("/metrics", **headers)

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Bearer"
    assert response.json()["error"]["code"] == "not_authenticated"
    assert TOKEN.encode() not in response.content


@pytest.mark.django_db
def test_a_create_rolled_back_is_not_counted(
    django_capture_on_commit_callbacks,
) -> None:
    before = REGISTRY.get_sample_value("payments_created_total") or 0

    with django_capture_on_commit_callbacks(execute=True):
        with pytest.raises(RuntimeError), transaction.atomic():
            services.payment_create(
                amount=1000, currency="usd", payment_method="pm_card_visa"
            )
            raise RuntimeError("the idempotency key's write failed, say")
        services.payment_create(
            amount=1000, currency="usd", payment_method="pm_card_visa"
        )

    assert REGISTRY.get_sample_value("payments_created_total") == before + 1


def test_metrics_show_counters_and_database_figures(
    client: Client, settings, worker: str, django_capture_on_commit_callbacks
) -> None:
    settings.METRICS_TOKEN = TOKEN
    before = REGISTRY.get_sample_value("payments_created_total") or 0
    # Counted once the create commits.
    with django_capture_on_commit_callbacks(execute=True):
        created = client.post(
            "/api/payments/",
            {"amount": 1000, "currency": "usd", "payment_method": "pm_card_visa"},
            content_type="application/json",
        )
    assert created.status_code == 202, created.content
    assert REGISTRY.get_sample_value("payments_created_total") == before + 1

    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")
    text = response.content.decode()
    assert re.search(r"^payments_created_total [1-9]", text, re.M), text
    # The job is queued (no worker runs here), its change pushed at creation.
    assert "tasks_queue_depth 1.0" in text
    assert "tasks_workers_alive 1.0" in text
    assert f'tasks_worker_heartbeat_age_seconds{{worker_id="{worker}"}}' in text
    assert "payments_outbox_backlog 0.0" in text
    assert "ops_database_figures_up 1.0" in text
    for name in (
        "realtime_websockets_open",
        "realtime_socketio_sessions_open",
        "realtime_group_sends_total",
        "realtime_group_messages_dropped_total",
        "tasks_oldest_ready_age_seconds",
    ):
        assert f"\n{name}" in text, name


def test_throttle_refusals_are_counted_by_scope(
    client: Client, settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The class copies the rates from settings when DRF is imported.
    monkeypatch.setattr(
        PaymentCreateAnonThrottle, "THROTTLE_RATES", {"payments_create_anon": "1/hour"}
    )
    settings.CACHES = {
        "default": {
            **settings.CACHES["default"],
            "KEY_PREFIX": f"test-ops-throttle-{uuid.uuid4().hex}",
        }
    }
    sample = ("payments_throttled_requests_total", {"scope": "payments_create_anon"})
    before = REGISTRY.get_sample_value(*sample) or 0.0

    answers = [
        client.post(
            "/api/payments/",
            {"amount": 1000, "payment_method": "pm_card_visa"},
            content_type="application/json",
        ).status_code
        for _ in range(3)
    ]

    assert answers == [202, 429, 429]
    assert REGISTRY.get_sample_value(*sample) == before + 2


# Request ids ----------------------------------------------------------------


def test_a_valid_request_id_is_kept_and_travels_with_the_payment(
    client: Client,
) -> None:
    response = client.post(
        "/api/payments/",
        {"amount": 1000, "currency": "usd", "payment_method": "pm_card_visa"},
        content_type="application/json",
        HTTP_X_REQUEST_ID="trace-1234.abcd",
    )

    assert response.status_code == 202
    assert response["X-Request-ID"] == "trace-1234.abcd"
    payment = Payment.objects.get(pk=response.json()["id"])
    assert payment.request_id == "trace-1234.abcd"


@pytest.mark.parametrize(
    "given", ["", "x" * 129, "two words", "new\nline", 'quote"s', "é"]
)
def test_an_invalid_request_id_is_replaced(client: Client, given: str) -> None:
    response = client.get("/api/payments/nope/", HTTP_X_REQUEST_ID=given)

    assert re.fullmatch(r"[0-9a-f]{32}", response["X-Request-ID"])


def test_every_response_carries_a_request_id(client: Client) -> None:
    first = client.get("/healthz")["X-Request-ID"]
    second = client.get("/healthz")["X-Request-ID"]

    assert first != second


# The access log ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "status", "logged"),
    [
        ("/readyz", 200, False),
        ("/healthz", 200, False),
        ("/metrics", 200, False),
        ("/readyz", 503, True),
        ("/metrics", 401, True),
        ("/api/payments/", 200, True),
    ],
)
def test_access_log_leaves_out_successful_probes(
    caplog: pytest.LogCaptureFixture, path: str, status: int, logged: bool
) -> None:
    with caplog.at_level(logging.INFO, logger="realtime.access"):
        AccessLog()(
            "http",
            "complete",
            {
                "path": path,
                "status": status,
                "method": "GET",
                "client": "127.0.0.1:1",
                "size": 10,
                "time_taken": 0.01,
            },
        )

    assert bool(caplog.records) is logged
    if logged:
        assert caplog.records[0].getMessage().startswith(f"GET {path} {status} ")
        assert caplog.records[0].status == status
