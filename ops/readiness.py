"""What /readyz checks: the database, the channel layer, migrations, and more.

Each check answers a ``Check``: ok, or not with a short reason fit for an
unauthenticated caller (an exception's class name, never its message, which
may carry a host or a password). ops knows only the infrastructure; an app
adds what it needs to be ready (payments: a live worker) with
register_check() from its AppConfig.ready(), so ops imports no app.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, NamedTuple

import redis
from channels_redis.utils import decode_hosts
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.recorder import MigrationRecorder
from redis.sentinel import Sentinel

# Seconds a probe waits for Redis: well under a balancer's check timeout.
REDIS_TIMEOUT = 1.0


class Check(NamedTuple):
    ok: bool
    reason: str = ""

    def as_dict(self) -> dict[str, str]:
        if self.ok:
            return {"status": "ok"}
        return {"status": "error", "reason": self.reason}


def failed(what: str, exc: BaseException) -> Check:
    return Check(False, f"{what}: {type(exc).__name__}")


def check_database() -> Check:
    try:
        with connections[DEFAULT_DB_ALIAS].cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:
        return failed("database unreachable", exc)
    return Check(True)


_redis_clients: dict[str, Any] = {}
_redis_lock = threading.Lock()


def _redis_client(host: dict[str, Any]) -> Any:
    """A kept client for one channel-layer host (an address or a Sentinel set)."""
    key = repr(sorted(host.items(), key=lambda item: item[0]))
    with _redis_lock:
        if key not in _redis_clients:
            timeouts = {
                "socket_timeout": REDIS_TIMEOUT,
                "socket_connect_timeout": REDIS_TIMEOUT,
            }
            if "address" in host:
                client = redis.Redis.from_url(host["address"], **timeouts)
            else:
                sentinel = Sentinel(
                    host["sentinels"],
                    sentinel_kwargs={**timeouts, **(host.get("sentinel_kwargs") or {})},
                    **timeouts,
                )
                client = sentinel.master_for(host["master_name"])
            _redis_clients[key] = client
        return _redis_clients[key]


def check_channel_layer() -> Check:
    """Every Redis host of the default channel layer answers a PING."""
    config = settings.CHANNEL_LAYERS["default"].get("CONFIG", {})
    try:
        for host in decode_hosts(config.get("hosts")):
            _redis_client(host).ping()
    except Exception as exc:
        return failed("channel layer unreachable", exc)
    return Check(True)


_known_migrations: set[tuple[str, str]] | None = None


def _migrations_on_disk() -> set[tuple[str, str]]:
    # Read once per process: the code, and so its migrations, do not change
    # under a running process. Only which ones are applied is asked each time.
    global _known_migrations
    if _known_migrations is None:
        loader = MigrationLoader(None, ignore_no_migrations=True)
        _known_migrations = set(loader.graph.nodes)
    return _known_migrations


def check_migrations() -> Check:
    """Every migration this code ships is recorded as applied."""
    try:
        applied = MigrationRecorder(connections[DEFAULT_DB_ALIAS]).applied_migrations()
    except Exception as exc:
        return failed("database unreachable", exc)
    missing = sorted(_migrations_on_disk() - set(applied))
    if missing:
        app, name = missing[0]
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        return Check(False, f"not applied: {app}.{name}{more}")
    return Check(True)


CHECKS: dict[str, Callable[[], Check]] = {}
# Checks that read the database: with it away, each would wait out its own
# connection timeout, and the probe's answer would come too late to matter.
NEED_DATABASE: set[str] = set()


def register_check(
    name: str, check: Callable[[], Check], *, needs_database: bool = False
) -> None:
    """Have /readyz run ``check`` under ``name``, after those registered before.

    ``needs_database``: the check reads the database, so it is answered
    "not checked" rather than run when the database check failed.
    """
    CHECKS[name] = check
    if needs_database:
        NEED_DATABASE.add(name)


register_check("database", check_database)
register_check("channel_layer", check_channel_layer)
register_check("migrations", check_migrations, needs_database=True)


def readiness() -> dict[str, Check]:
    """Run every check, so the answer names each failure."""
    results: dict[str, Check] = {}
    for name, check in CHECKS.items():
        if name in NEED_DATABASE and not results["database"].ok:
            results[name] = Check(False, "not checked: database unreachable")
        else:
            results[name] = check()
    return results
