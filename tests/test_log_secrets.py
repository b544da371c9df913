"""After a full end-to-end flow on real processes, neither log shows a
client_secret or a socket_id.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from django.conf import settings
from django.db import connection

from tests.helpers import (
    CREATE,
    SEED,
    detail,
    next_frame,
    open_socket,
)
from tests.live import LiveStack, database_url, live_stack

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
async def test_client_secret_and_socket_id_stay_out_of_the_logs(
    live: LiveStack,
) -> None:
    seen_secrets: list[str] = []
    seen_sockets: list[str] = []
    async with (
        httpx.AsyncClient(base_url=live.http_url, trust_env=False, timeout=20) as http,
        open_socket(live) as ws,
        open_socket(live) as other_ws,
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
