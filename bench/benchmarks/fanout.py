"""4. Fan-out: one change to many sockets."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from bench.benchmarks.common import Context, FrameLog, in_thread, write_json
from bench.client import (
    CountingConnection,
    HttpConnection,
    ws_close_all,
    ws_open_many,
)
from bench.harness import (
    Stack,
    redis_delta,
)


async def measure_fanout(
    stack: Stack,
    sockets: list[tuple[CountingConnection, str]],
    *,
    count: int,
    group: str = "",
    payment_id: str = "",
    per_message: int = 1,
    rate: float = 0.0,
    concurrency: int = 20,
) -> dict[str, Any]:
    """Push ``count`` messages (each reaching ``per_message`` sockets)."""
    assert stack.web is not None
    log = FrameLog()
    log.watch([ws for ws, _ in sockets])
    args = ["fanout", "--count", str(count), "--concurrency", str(concurrency)]
    if group:
        args += ["--group", group, "--payment-id", payment_id]
    else:
        args += [
            "--sockets",
            write_json(stack.dir / "sockets.json", [sid for _, sid in sockets]),
        ]
    if rate:
        args += ["--rate", str(rate)]
    expected = count * per_message
    cpu0 = stack.web.cpu_seconds()
    redis0 = stack.session.redis_info()
    try:
        result = await in_thread(stack.driver, *args, timeout=300)
        # Frames still in flight when the driver is done: wait for them, or
        # for two quiet seconds after the last one.
        deadline = time.monotonic() + 60
        while log.frames < expected and time.monotonic() < deadline:
            before = log.frames
            await asyncio.sleep(2)
            if log.frames == before:
                break
    finally:
        await log.stop()
    cpu = stack.web.cpu_seconds() - cpu0
    redis1 = stack.session.redis_info()
    span = (log.last - log.first) or 1e-9
    return {
        "sockets": len(sockets),
        "messages_sent": count,
        "frames_expected": expected,
        "frames_received": log.frames,
        "frames_lost": expected - log.frames,
        "send_rate_per_second": round(result["send_rate"], 1),
        "frames_per_second": round(log.frames / span, 1),
        "web_cpu_seconds": round(cpu, 2),
        "web_cpu_percent": round(100 * cpu / span, 1),
        "web_cpu_us_per_frame": round(1e6 * cpu / max(1, log.frames), 1),
        "redis_commands_per_frame": round(
            redis_delta(redis0, redis1)["commands"] / max(1, log.frames), 2
        ),
        "dropped_over_capacity_logged": result["dropped_logged"],
    }


async def subscribe_all(
    stack: Stack, sockets: list[tuple[CountingConnection, str]]
) -> tuple[str, str]:
    """Create one payment (no worker: it stays pending); subscribe every socket."""
    http = HttpConnection(stack.port)
    try:
        status, _, body = await http.request("POST", "/api/payments/", {"amount": 1000})
    finally:
        await http.close()
    assert status == 202, body
    payment = json.loads(body)
    frame = json.dumps(
        {
            "action": "subscribe",
            "payment_id": payment["id"],
            "client_secret": payment["client_secret"],
        }
    )
    sem = asyncio.Semaphore(20)

    async def one(ws: CountingConnection) -> None:
        async with sem:
            await ws.send(frame)
            reply = json.loads(await asyncio.wait_for(ws.recv(), 30))
            assert reply["event"] == "payment-status", reply

    await asyncio.gather(*(one(ws) for ws, _ in sockets))
    return payment["id"], f"payment.{payment['id']}"


async def bench_fanout(ctx: Context) -> dict[str, Any]:
    size = ctx.pick(200, 1000)
    count = ctx.pick(1000, 30000)
    broadcasts = ctx.pick(5, 30)
    paced_seconds = ctx.pick(1, 8)
    out: dict[str, Any] = {"config": ctx.config().label()}
    with Stack(ctx.session, ctx.config(workers=0)) as stack:
        sockets, _ = await ws_open_many(stack.ws_url, size)
        try:
            out["distinct"] = await measure_fanout(stack, sockets, count=count)
            stack.check_alive()
            for rate in ctx.pick((1000,), (1000, 3000)):
                out[f"distinct_paced_{rate}"] = await measure_fanout(
                    stack, sockets, count=int(rate * paced_seconds), rate=rate
                )
                stack.check_alive()
            payment_id, group = await subscribe_all(stack, sockets)
            out["broadcast"] = await measure_fanout(
                stack,
                sockets,
                count=broadcasts,
                group=group,
                payment_id=payment_id,
                per_message=size,
                concurrency=1,
            )
            stack.check_alive()
        finally:
            await ws_close_all([ws for ws, _ in sockets])
    return out
