"""1. Push latency: status change to socket frame, against the sockets open."""

from __future__ import annotations

import asyncio
from typing import Any

from bench.benchmarks.common import Context, FrameLog, in_thread, pct_ms, write_json
from bench.client import (
    CountingConnection,
    ws_close_all,
    ws_open_many,
)
from bench.harness import (
    Stack,
    redis_delta,
)


async def measure_latency(
    stack: Stack, sockets: list[tuple[CountingConnection, str]], transitions: int
) -> dict[str, Any]:
    """Commit → frame for ``transitions`` status changes spread over ``sockets``."""
    socket_ids = [sid for _, sid in sockets]
    log = FrameLog()
    log.watch([ws for ws, _ in sockets])
    redis0 = stack.session.redis_info()
    cpu0 = stack.server_cpu()
    try:
        result = await in_thread(
            stack.driver,
            "transitions",
            "--sockets",
            write_json(stack.dir / "sockets.json", socket_ids),
            "--count",
            str(max(1, transitions // 2)),
            "--spacing",
            "0.01",
            timeout=300,
        )
        records = result["records"]
        await log.wait_frames(len(records), timeout=10)
    finally:
        await log.stop()
    cpu1 = stack.server_cpu()
    redis1 = stack.session.redis_info()
    # The first few transitions warm the driver up (imports, first queries).
    records = records[4:]
    total, serialize, send, deliver = [], [], [], []
    lost = 0
    for rec in records:
        arrived = log.arrivals.get((rec["id"], rec["version"]))
        if arrived is None:
            lost += 1
            continue
        total.append(arrived - rec["t_commit"])
        serialize.append(rec["t_send0"] - rec["t_commit"])
        send.append(rec["t_send1"] - rec["t_send0"])
        deliver.append(arrived - rec["t_send1"])
    delta = redis_delta(redis0, redis1)
    return {
        "sockets": len(sockets),
        "commit_to_frame_ms": pct_ms(total),
        "commit_to_notify_ms": pct_ms(serialize),
        "notify_call_ms": pct_ms(send),
        "notify_return_to_frame_ms": pct_ms(deliver),
        "lost": lost,
        "redis_connections_per_transition": round(
            delta["connections_opened"] / max(1, len(result["records"])), 2
        ),
        "redis_commands_per_transition": round(
            delta["commands"] / max(1, len(result["records"])), 1
        ),
        "redis_by_command": delta["by_command"],
        "web_cpu_seconds": round(cpu1["web"] - cpu0["web"], 3),
    }


async def bench_latency(ctx: Context) -> dict[str, Any]:
    sizes = ctx.pick([1, 100], [1, 100, 1000])
    transitions = ctx.pick(100, 400)
    out: dict[str, Any] = {"config": ctx.config().label(), "levels": {}}
    with Stack(ctx.session, ctx.config(workers=0)) as stack:
        sockets: list[tuple[CountingConnection, str]] = []
        try:
            for size in sizes:
                more, _ = await ws_open_many(stack.ws_url, size - len(sockets))
                sockets += more
                await asyncio.sleep(0.5)
                out["levels"][str(size)] = await measure_latency(
                    stack, sockets, transitions
                )
                stack.check_alive()
        finally:
            await ws_close_all([ws for ws, _ in sockets])
    return out
