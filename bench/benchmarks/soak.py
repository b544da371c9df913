"""7. Soak: sockets cycled for a long run; memory and descriptors."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench.benchmarks.common import Context
from bench.benchmarks.fanout import measure_fanout, subscribe_all
from bench.client import (
    ws_close_all,
    ws_open,
    ws_open_many,
)
from bench.harness import (
    Stack,
)


async def bench_soak(ctx: Context) -> dict[str, Any]:
    cycles = ctx.pick(500, 20000)
    frames = ctx.pick(2000, 100000)
    out: dict[str, Any] = {"config": ctx.config().label()}
    with Stack(ctx.session, ctx.config(workers=0)) as stack:
        assert stack.web is not None
        web, session = stack.web, stack.session
        group_prefix = f"{stack.prefix}:group:"

        def snapshot() -> dict[str, Any]:
            info = session.redis_info()
            return {
                "rss_mib": round(web.rss() / 2**20, 2),
                "web_fds": web.num_fds(),
                "redis_connected_clients": info["connected_clients"],
                "redis_group_keys": session.count_keys(group_prefix),
            }

        settle = ctx.pick(0.5, 2.0)
        await cycle_sockets(stack, 300, 50)
        await asyncio.sleep(settle)
        out["before"] = snapshot()
        # Two halves: growth that repeats in the second half is a leak,
        # growth that stops is a high-water mark (allocator, pools).
        took = 0.0
        failures = 0
        for half in ("after_half_cycles", "after_cycles"):
            seconds, failed = await cycle_sockets(stack, cycles // 2, 50)
            took += seconds
            failures += failed
            await asyncio.sleep(settle)
            out[half] = snapshot()
        out["cycles"] = cycles
        out["cycles_per_second"] = round(cycles / took, 1)
        out["cycle_failures"] = failures
        sockets, _ = await ws_open_many(stack.ws_url, 100)
        try:
            # Most frames as broadcasts (one message, 100 sockets), some as
            # distinct messages at a rate the layer sustains (see fanout).
            distinct = frames // 10
            out["frames_distinct"] = await measure_fanout(
                stack, sockets, count=distinct, rate=400
            )
            payment_id, group = await subscribe_all(stack, sockets)
            out["frames_broadcast"] = await measure_fanout(
                stack,
                sockets,
                count=(frames - distinct) // len(sockets),
                group=group,
                payment_id=payment_id,
                per_message=len(sockets),
                concurrency=1,
                rate=20,
            )
        finally:
            await ws_close_all([ws for ws, _ in sockets])
        await asyncio.sleep(settle)
        out["after_frames"] = snapshot()
        stack.check_alive()
    b, a = out["before"], out["after_frames"]
    h, c = out["after_half_cycles"], out["after_cycles"]
    out["rss_growth_first_half_mib"] = round(h["rss_mib"] - b["rss_mib"], 2)
    out["rss_growth_second_half_mib"] = round(c["rss_mib"] - h["rss_mib"], 2)
    out["rss_growth_mib"] = round(a["rss_mib"] - b["rss_mib"], 2)
    out["redis_clients_growth"] = (
        a["redis_connected_clients"] - b["redis_connected_clients"]
    )
    out["fds_growth"] = a["web_fds"] - b["web_fds"]
    out["frames_lost"] = (
        out["frames_distinct"]["frames_lost"] + out["frames_broadcast"]["frames_lost"]
    )
    return out


async def cycle_sockets(
    stack: Stack, cycles: int, concurrency: int
) -> tuple[float, int]:
    """Open and close ``cycles`` sockets, ``concurrency`` at a time."""
    remaining = cycles
    failures = 0

    async def worker() -> None:
        nonlocal remaining, failures
        while remaining > 0:
            remaining -= 1
            try:
                ws, _ = await ws_open(stack.ws_url, timeout=30)
                await asyncio.wait_for(ws.close(), 10)
            except Exception:
                failures += 1

    t0 = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(concurrency))), 900)
    return time.perf_counter() - t0, failures
