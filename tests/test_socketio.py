"""Socket.IO at /socket.io/: the real socket.io-client against real processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.live import LiveStack
from tests.test_e2e import checked_stack

pytestmark = pytest.mark.e2e

TESTS = Path(__file__).resolve().parent
ORIGIN = "http://localhost:3000"
HEARTBEAT = {"SOCKETIO_PING_INTERVAL": "1", "SOCKETIO_PING_TIMEOUT": "2"}


@pytest.fixture(scope="session")
def node_client() -> Path:
    """The post's frontend script, its npm packages installed (npm ci)."""
    if shutil.which("node") is None:
        pytest.fail("node is needed for the Socket.IO tests (Node 20)")
    if not (TESTS / "node_modules" / "socket.io-client").is_dir():
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"], cwd=TESTS, check=True, timeout=300
        )
    return TESTS / "socketio_client.mjs"


@pytest.fixture
def live(transactional_db: None, isolated_channel_layer: str) -> Iterator[LiveStack]:
    with checked_stack(
        isolated_channel_layer, PAYMENTS_SIMULATED_DELAY="0.3", **HEARTBEAT
    ) as stack:
        yield stack


def run_clients(
    script: Path, url: str, *, timeout: float = 60, **options: Any
) -> list[dict[str, Any]]:
    """Run the node script; return one result per client."""
    env = {**os.environ, "SIO_URL": url}
    for name, value in options.items():
        env[f"SIO_{name.upper()}"] = (
            value if isinstance(value, str) else json.dumps(value)
        )
    done = subprocess.run(
        ["node", str(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=TESTS,
    )
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    assert done.returncode == 0 and lines and lines[-1] == {"done": True}, (
        done.stdout,
        done.stderr,
    )
    return [line for line in lines if "index" in line]


TRANSPORT_MODES = [
    pytest.param(None, "websocket", id="default"),
    pytest.param(["websocket"], "websocket", id="websocket"),
    pytest.param(["polling"], "polling", id="polling"),
]


@pytest.mark.parametrize(("transports", "ends_on"), TRANSPORT_MODES)
def test_post_frontend_gets_processing_then_succeeded(
    live: LiveStack, node_client: Path, transports: list[str] | None, ends_on: str
) -> None:
    options = {"transports": transports} if transports else {}
    [result] = run_clients(node_client, live.http_url, **options)
    assert result["ok"], result
    assert result["socketId"] == result["socketDotId"]
    assert result["socketId"] != result["engineId"]
    assert result["statuses"] == ["processing", "succeeded"], result
    assert result["transport"] == ends_on
    assert result["disconnects"] == []
