"""Production settings pass ``check --deploy`` and refuse to start without
their secrets.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys

import pytest

from tests.live import REPO_ROOT

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
