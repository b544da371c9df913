"""config.checks: every setting it validates, through Django's check framework.

Each bad value (or bad pair of values) gives its own check id, and the
shipped settings give none. The web process runs the checks at start
(daphne runs none), shown with a real import of config.asgi.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from django.conf import settings
from django.core.checks import run_checks
from django.test import override_settings

from tests.live import REPO_ROOT


def project_ids(**overrides: object) -> list[str]:
    """The ids of the project's checks' messages, with these settings."""
    with override_settings(**overrides):
        return sorted(message.id for message in run_checks(tags=["payments"]))


def test_the_shipped_settings_pass() -> None:
    assert project_ids() == []


@pytest.mark.parametrize(
    "name",
    [
        "ASGI_REQUEST_THREADS",
        "ASGI_REQUEST_THREAD_TIMEOUT",
        "TASKS_WORKER_HEARTBEAT_INTERVAL",
        "PAYMENTS_REDELIVER_AFTER",
        "PAYMENTS_NOTIFIED_MARK_INTERVAL",
        "AXES_FAILURE_LIMIT",
        "REALTIME_RATE_LIMIT",
        "REALTIME_MAX_FRAME_BYTES",
        "SOCKETIO_PING_INTERVAL",
        "SOCKETIO_PING_TIMEOUT",
        "SOCKETIO_MAX_PAYLOAD",
    ],
)
@pytest.mark.parametrize("value", [0, -1, float("nan"), float("inf")])
def test_a_number_that_must_be_positive_is_refused(name: str, value: float) -> None:
    assert "payments.E001" in project_ids(**{name: value})


@pytest.mark.parametrize("value", [-0.5, float("nan")])
def test_a_delay_may_be_zero_but_not_negative(value: float) -> None:
    assert project_ids(PAYMENTS_SIMULATED_DELAY=0, WEB_HEAD_TIMEOUT=0) == []
    assert project_ids(WEB_HEAD_TIMEOUT=value) == ["payments.E002"]


def test_a_body_limit_needs_a_path_and_a_size() -> None:
    assert project_ids(WEB_MAX_BODY_BYTES={"api/": 10, "/": 100}) == ["payments.E003"]
    assert project_ids(WEB_MAX_BODY_BYTES={"/": -1}) == ["payments.E003"]


def with_database(**changes: object) -> dict[str, dict[str, object]]:
    database = {**settings.DATABASES["default"], **changes}
    return {"default": database}


# Only the settings are read: no connection is made with the overridden ones.
ignore_databases_override = pytest.mark.filterwarnings(
    "ignore:Overriding setting DATABASES:UserWarning"
)


@ignore_databases_override
def test_a_pool_and_kept_connections_are_refused_together() -> None:
    pooled = {"pool": {"min_size": 2, "max_size": 20, "timeout": 5.0}}

    assert "payments.E004" in project_ids(
        DATABASES=with_database(OPTIONS=pooled, CONN_MAX_AGE=60)
    )
    assert project_ids(DATABASES=with_database(OPTIONS=pooled, CONN_MAX_AGE=0)) == []


@ignore_databases_override
@pytest.mark.parametrize(
    ("pool", "expected"),
    [
        ({"min_size": 5, "max_size": 2}, "payments.E005"),
        ({"min_size": 0, "max_size": 0}, "payments.E005"),
        ({"min_size": 2, "max_size": 4, "timeout": 0}, "payments.E006"),
        ({"min_size": 2, "max_size": 4, "reconnect_timeout": -1}, "payments.E006"),
        (
            {"min_size": 2, "max_size": 4, "reconnect_timeout": float("inf")},
            "payments.E006",
        ),
    ],
)
def test_pool_sizes_and_timeout_are_sane(pool: dict[str, float], expected: str) -> None:
    databases = with_database(OPTIONS={"pool": pool}, CONN_MAX_AGE=0)

    found = project_ids(DATABASES=databases, ASGI_REQUEST_THREADS=1)
    assert expected in found and "payments.E004" not in found


@pytest.mark.parametrize("value", [1, 0, -5, 2.5])
def test_the_databases_tcp_timeout_is_whole_seconds_of_at_least_two(value) -> None:
    assert project_ids(DATABASE_TCP_TIMEOUT=value) == ["payments.E013"]


@ignore_databases_override
def test_the_pool_holds_a_connection_per_request_thread_and_one_more() -> None:
    def pool(size: int) -> dict[str, dict[str, object]]:
        return with_database(OPTIONS={"pool": {"max_size": size}}, CONN_MAX_AGE=0)

    assert project_ids(ASGI_REQUEST_THREADS=16, DATABASES=pool(16)) == ["payments.E010"]
    assert project_ids(ASGI_REQUEST_THREADS=16, DATABASES=pool(17)) == []


def test_the_worker_lease_outlasts_two_heartbeats() -> None:
    assert project_ids(
        TASKS_WORKER_HEARTBEAT_INTERVAL=1.0, TASKS_WORKER_DEAD_AFTER=1.5
    ) == ["payments.E007"]
    assert (
        project_ids(TASKS_WORKER_HEARTBEAT_INTERVAL=1.0, TASKS_WORKER_DEAD_AFTER=2.0)
        == []
    )


def test_marks_are_written_well_before_redelivery() -> None:
    assert project_ids(
        PAYMENTS_NOTIFIED_MARK_INTERVAL=1.5, PAYMENTS_REDELIVER_AFTER=2.0
    ) == ["payments.E008"]
    assert (
        project_ids(PAYMENTS_NOTIFIED_MARK_INTERVAL=1.0, PAYMENTS_REDELIVER_AFTER=2.0)
        == []
    )


def test_recovery_rounds_slower_than_the_stuck_deadline_are_warned() -> None:
    assert project_ids(PAYMENTS_RECOVERY_INTERVAL=90, PAYMENTS_STUCK_AFTER=60) == [
        "payments.W001"
    ]


def test_a_socketio_ping_interval_past_proxy_timeouts_is_warned() -> None:
    assert project_ids(SOCKETIO_PING_INTERVAL=60) == ["payments.W002"]


def test_the_default_currency_must_be_accepted() -> None:
    assert project_ids(
        PAYMENTS_DEFAULT_CURRENCY="sek", PAYMENTS_CURRENCIES=["usd", "eur"]
    ) == ["payments.E009"]


def test_zero_turns_the_body_deadline_off_but_a_negative_one_is_refused() -> None:
    assert project_ids(WEB_BODY_TIMEOUT=0) == []
    assert project_ids(WEB_BODY_TIMEOUT=-1) == ["payments.E002"]


def test_a_negative_proxy_count_is_refused() -> None:
    rest = {**settings.REST_FRAMEWORK, "NUM_PROXIES": -1}
    assert project_ids(REST_FRAMEWORK=rest) == ["payments.E002"]


def test_a_body_limit_table_cannot_be_empty() -> None:
    assert project_ids(WEB_MAX_BODY_BYTES={}) == ["payments.E003"]


def test_the_log_format_must_be_one_the_logging_config_has() -> None:
    assert project_ids(LOG_FORMAT="xml") == ["payments.E011"]


@pytest.mark.parametrize("port", [-1, 65536])
def test_the_worker_metrics_port_must_be_a_port(port: int) -> None:
    assert project_ids(METRICS_WORKER_PORT=port) == ["payments.E012"]


def test_the_web_process_refuses_to_start_on_a_failed_check() -> None:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "TASKS_WORKER_HEARTBEAT_INTERVAL": "5",
        "TASKS_WORKER_DEAD_AFTER": "6",
    }
    started = subprocess.run(
        [sys.executable, "-c", "import config.asgi"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert started.returncode != 0
    assert "payments.E007" in started.stderr
    assert "TASKS_WORKER_DEAD_AFTER (6.0)" in started.stderr
