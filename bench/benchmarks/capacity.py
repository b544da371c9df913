"""3. Capacity: how many sockets one web process holds."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from bench import client as ws_client
from bench.benchmarks.common import Context
from bench.client import (
    CountingConnection,
    ws_close_all,
    ws_open_many,
)
from bench.harness import (
    Stack,
)


async def measure_capacity(
    stack: Stack,
    levels: list[int],
    idle_seconds: Callable[[int], float],
    drop_wait: float = 60.0,
) -> dict[str, Any]:
    assert stack.web is not None
    web = stack.web
    sockets: list[tuple[CountingConnection, str]] = []
    out: dict[str, Any] = {}
    try:
        # Warm the code paths (first handshake imports, thread pools).
        warm, _ = await ws_open_many(stack.ws_url, 20)
        await ws_close_all([ws for ws, _ in warm])
        await asyncio.sleep(1)
        rss_base = web.rss()
        out["rss_base_mib"] = round(rss_base / 2**20, 1)
        for level in levels:
            failures = ws_client.stats["handshake_failures"]
            more, took = await ws_open_many(
                stack.ws_url, level - len(sockets), timeout=300
            )
            failures = ws_client.stats["handshake_failures"] - failures
            opened = len(more)
            sockets += more
            await asyncio.sleep(1)
            rss_open = web.rss()
            seconds = idle_seconds(level)
            cpu0, t0 = web.cpu_seconds(), time.monotonic()
            await asyncio.sleep(seconds)
            idle = 100 * (web.cpu_seconds() - cpu0) / (time.monotonic() - t0)
            rss = web.rss()
            stack.check_alive()
            out[str(level)] = {
                "open_seconds": round(took, 2),
                "opens_per_second": round(opened / took, 1),
                # Handshakes answered 500 and retried (see BENCHMARKS.md).
                "handshake_failures": failures,
                "rss_mib": round(rss / 2**20, 1),
                "bytes_per_socket": round((rss - rss_base) / level),
                "bytes_per_socket_at_open": round((rss_open - rss_base) / level),
                "idle_seconds": seconds,
                "idle_cpu_percent": round(idle, 2),
                "web_fds": web.num_fds(),
            }
        # A network blip: every socket drops at once (no close handshake), so
        # the server runs all their disconnects (group_discard) together.
        errors0 = web.log_count("MaxConnectionsError")
        for ws, _ in sockets:
            ws.transport.abort()
        sockets = []
        dropped_at = time.monotonic()
        await asyncio.sleep(3)
        keys = f"{stack.prefix}:group:"
        left_3s = stack.session.count_keys(keys)
        # Then wait (up to drop_wait s) until the server stops removing groups.
        left, previous = left_3s, -1
        while left and left != previous and time.monotonic() - dropped_at < drop_wait:
            previous = left
            await asyncio.sleep(3)
            left = stack.session.count_keys(keys)
        out["abrupt_drop"] = {
            "sockets": levels[-1],
            "redis_pool_errors": web.log_count("MaxConnectionsError") - errors0,
            "group_keys_left_after_3s": left_3s,
            "group_keys_left": left,
            "seconds_waited": round(time.monotonic() - dropped_at, 1),
        }
        out["rss_after_close_mib"] = round(web.rss() / 2**20, 1)
    finally:
        await ws_close_all([ws for ws, _ in sockets])
    return out


async def bench_capacity(ctx: Context) -> dict[str, Any]:
    levels = ctx.pick([1000], [1000, 5000, 10000])
    last = levels[-1]

    def idle(level: int) -> float:
        if ctx.quick:
            return 3.0
        return 30.0 if level == last else 10.0

    with Stack(ctx.session, ctx.config(workers=0)) as stack:
        result = await measure_capacity(
            stack, levels, idle, drop_wait=ctx.pick(6.0, 60.0)
        )
    return {"config": ctx.config().label(), **result}
