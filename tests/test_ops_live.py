"""Metrics and request ids across real daphne and db_worker processes."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from django.conf import settings
from websockets.asyncio.client import connect

from tests.live import LiveStack, checked_stack, free_port, live_stack

pytestmark = pytest.mark.e2e

ORIGIN = "http://localhost:3000"
TIMEOUT = 20.0
TOKEN = "live-metrics-token"
CARDS = {"pm_card_visa": "succeeded", "pm_card_chargeDeclined": "failed"}


@pytest.fixture
def live(transactional_db: None, isolated_channel_layer: str) -> Iterator[LiveStack]:
    with checked_stack(
        isolated_channel_layer,
        METRICS_TOKEN=TOKEN,
        METRICS_WORKER_PORT=str(free_port()),
        DJANGO_LOG_FORMAT="json",
    ) as stack:
        yield stack


def scrape(url: str) -> dict[str, float]:
    """Every sample of a Prometheus text answer, keyed by name and labels."""
    response = httpx.get(
        url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=TIMEOUT
    )
    assert response.status_code == 200, response.text
    samples = {}
    for line in response.text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples


def moved(before: dict[str, float], after: dict[str, float], key: str) -> float:
    return after.get(key, 0.0) - before.get(key, 0.0)


async def pay_and_follow(
    live: LiveStack, cards: list[str], request_id: str | None = None
) -> list[dict[str, Any]]:
    """Create a payment per card on one socket; return once each is terminal."""
    headers = {"X-Request-ID": request_id} if request_id else {}
    async with (
        connect(f"{live.ws_url}/ws/payments/", origin=ORIGIN, proxy=None) as ws,
        httpx.AsyncClient(
            base_url=live.http_url, trust_env=False, timeout=TIMEOUT
        ) as http,
    ):
        hello = json.loads(await ws.recv())
        assert hello["event"] == "socket-id"
        created = []
        for card in cards:
            response = await http.post(
                "/api/payments/",
                json={
                    "amount": 1000,
                    "currency": "usd",
                    "payment_method": card,
                    "socket_id": hello["data"],
                },
                headers=headers,
            )
            assert response.status_code == 202, response.text
            if request_id:
                assert response.headers["X-Request-ID"] == request_id
            created.append(response.json())
        open_ids = {payment["id"] for payment in created}
        while open_ids:
            async with asyncio.timeout(TIMEOUT):
                frame = json.loads(await ws.recv())
            assert frame["event"] == "payment-status", frame
            if frame["data"]["status"] in ("succeeded", "failed"):
                assert frame["data"]["status"] == CARDS[frame["data"]["payment_method"]]
                open_ids.discard(frame["data"]["id"])
    return created


async def test_metrics_move_after_a_few_payments(live: LiveStack) -> None:
    web_url = f"{live.http_url}/metrics"
    worker_url = f"http://127.0.0.1:{live.env['METRICS_WORKER_PORT']}/metrics"
    live.worker.wait_for_output("serving metrics")
    web_before, worker_before = scrape(web_url), scrape(worker_url)

    await pay_and_follow(
        live, ["pm_card_visa", "pm_card_visa", "pm_card_chargeDeclined"]
    )
    web, worker = scrape(web_url), scrape(worker_url)

    # The web process created them and sent their frames...
    assert moved(web_before, web, "payments_created_total") == 3
    assert (
        moved(web_before, web, 'realtime_status_frames_sent_total{protocol="json"}')
        >= 6
    )
    # ...the worker settled them, timed them and pushed every change.
    assert (
        moved(worker_before, worker, 'payments_settled_total{status="succeeded"}') == 2
    )
    assert moved(worker_before, worker, 'payments_settled_total{status="failed"}') == 1
    assert (
        moved(
            worker_before,
            worker,
            'payments_time_to_terminal_seconds_count{status="succeeded"}',
        )
        == 2
    )
    transitions = (
        "payments_transition_seconds_count"
        '{from_status="pending",to_status="processing"}'
    )
    assert moved(worker_before, worker, transitions) == 3
    assert (
        moved(worker_before, worker, 'realtime_group_sends_total{outcome="sent"}') >= 6
    )
    assert worker.get('realtime_group_sends_total{outcome="failed"}') == 0
    # Figures from the database, at the web's scrape: one live worker, the
    # queue drained, every change marked pushed (the marks are batched, so
    # the backlog may still be on its way to 0).
    assert web["tasks_workers_alive"] == 1
    assert web["tasks_queue_depth"] == 0
    assert "payments_outbox_backlog" in web
    assert web["ops_database_figures_up"] == 1
    # Counters of one process are not the other's: the worker created none.
    assert moved(worker_before, worker, "payments_created_total") == 0

    # The worker's port wants the token too.
    refused = httpx.get(worker_url, timeout=TIMEOUT)
    assert refused.status_code == 401


async def test_one_request_id_follows_a_payment_across_processes(
    live: LiveStack,
) -> None:
    request_id = f"e2e-{uuid.uuid4().hex}"

    [payment] = await pay_and_follow(live, ["pm_card_visa"], request_id)
    live.worker.wait_for_output(f"{payment['id']} processing")

    web = json_lines(live.web.output())
    worker = json_lines(live.worker.output())
    web_lines = [line for line in web if line["request_id"] == request_id]
    worker_lines = [line for line in worker if line["request_id"] == request_id]
    assert any("payment created" in line["message"] for line in web_lines), web
    # The access log's line for the POST, written by the server, says it too.
    [access] = [line for line in web_lines if line["logger"] == "realtime.access"]
    assert (access["method"], access["path"], access["status"]) == (
        "POST",
        "/api/payments/",
        202,
    )
    # Both transitions the job made, pending → processing → succeeded.
    assert [line["message"] for line in worker_lines if "→" in line["message"]] == [
        f"payment {payment['id']} pending → processing",
        f"payment {payment['id']} processing → succeeded",
    ], worker
    for line in web_lines + worker_lines:
        assert {"timestamp", "level", "logger", "pid", "message"} <= line.keys()
        assert payment["client_secret"] not in json.dumps(line)


def json_lines(output: str) -> list[dict[str, Any]]:
    """Every line of a process's output, each of which must be a JSON object."""
    lines = []
    for text in output.splitlines():
        if not text.strip():
            continue
        try:
            line = json.loads(text)
        except ValueError:
            pytest.fail(f"not a JSON log line: {text!r}")
        assert isinstance(line, dict), text
        lines.append(line)
    assert lines
    return lines


def test_readyz_names_an_unreachable_database_and_healthz_still_answers(
    isolated_channel_layer: str,
) -> None:
    # PostgreSQL on a port nobody listens on; no pool, so it fails at once.
    away = f"postgres://nobody:pw-never-shown@127.0.0.1:{free_port()}/nothing"
    with live_stack(
        database_url=away,
        redis_url=settings.REDIS_URL,
        channels_prefix=isolated_channel_layer,
        worker=False,
        DJANGO_DB_POOL="false",
    ) as stack:
        ready = httpx.get(f"{stack.http_url}/readyz", timeout=TIMEOUT)
        alive = httpx.get(f"{stack.http_url}/healthz", timeout=TIMEOUT)

    assert alive.status_code == 200
    assert ready.status_code == 503
    assert ready.json()["checks"] == {
        "database": {
            "status": "error",
            "reason": "database unreachable: OperationalError",
        },
        "channel_layer": {"status": "ok"},
        "workers": {"status": "error", "reason": "not checked: database unreachable"},
        "migrations": {
            "status": "error",
            "reason": "not checked: database unreachable",
        },
    }
    assert "pw-never-shown" not in ready.text
    assert "Traceback" not in stack.web.output()
