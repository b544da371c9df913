"""The worker's view of its database going away: which errors, and the wait.

A PostgreSQL that restarts, fails over or stops answering is an outage the
worker waits out (payments.worker.worker, db_worker's start); any other
database error (a missing table, a cancelled statement, a refused password,
SQLite's lock or disk errors) is a fault that stops it, as it did before.
"""

from __future__ import annotations

import logging
import time

from django.db import OperationalError, connection, connections

logger = logging.getLogger(__name__)

# Seconds between tries of a database that went away. With the pool each
# try first waits up to DJANGO_DB_POOL_TIMEOUT for a connection; without
# it, a refused connection fails at once and the loop would spin.
DATABASE_RETRY_INTERVAL = 1.0
# While it stays away, it is said again this often, with how long it has been.
STILL_AWAY_EVERY = 30.0


def is_database_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the database cannot be reached, not that it refused.

    psycopg's errors without an SQLSTATE (a connection refused, closed or
    timed out, the pool's timeout) or of class 08 (connection exception) or
    57P (the server shutting down or starting). Never SQLite's: its file
    does not go away, and its errors are faults.
    """
    if not isinstance(exc, OperationalError) or connection.vendor == "sqlite":
        return False
    sqlstate = getattr(exc.__cause__, "sqlstate", None)
    return sqlstate is None or sqlstate.startswith(("08", "57P"))


def wait_for_database() -> None:
    """Return once the database answers a query; until then, try again.

    A worker started while the database is away (a restart, a failover, a
    whole stack starting at once, or this worker replaced after its lease
    lapsed in an outage) holds no lease and no job yet, so waiting is safe,
    and it spares the supervisor a restart loop. An error that is not an
    outage (a wrong password, no such database) is raised at once; through
    the pool, whose timeout hides it, it is waited on, said every
    STILL_AWAY_EVERY seconds, beside psycopg_pool's warnings that name it.
    """
    away_since: float | None = None
    said_at = 0.0
    while True:
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
        except OperationalError as exc:
            if not is_database_unavailable(exc):
                raise
            now = time.monotonic()
            if away_since is None:
                away_since = now
            if now == away_since or now - said_at >= STILL_AWAY_EVERY:
                said_at = now
                logger.warning(
                    "database unavailable for %.0f s (%r); waiting for it "
                    "before starting",
                    now - away_since,
                    exc,
                )
            connections.close_all()
            time.sleep(DATABASE_RETRY_INTERVAL)
            continue
        if away_since is not None:
            logger.warning("database available; starting")
        return
