"""6. Choices: the configuration alternatives measured side by side."""

from __future__ import annotations

from typing import Any

from bench.benchmarks.capacity import measure_capacity
from bench.benchmarks.common import Context, in_thread
from bench.benchmarks.e2e import run_payments
from bench.benchmarks.fanout import measure_fanout
from bench.benchmarks.latency import measure_latency
from bench.client import (
    ws_close_all,
    ws_open_many,
)
from bench.harness import (
    Stack,
    StackConfig,
)


async def bench_choices(ctx: Context) -> dict[str, Any]:
    variants = [("daphne", "core"), ("uvicorn", "core"), ("daphne", "pubsub")]
    if not ctx.quick:
        variants.append(("uvicorn", "pubsub"))
    latency_sockets = ctx.pick(50, 1000)
    transitions = ctx.pick(30, 200)
    fan_sockets = ctx.pick(50, 500)
    fan_count = ctx.pick(500, 10000)
    idle_sockets = ctx.pick(500, 2000)
    e2e_seconds = ctx.pick(3.0, 6.0)
    out: dict[str, Any] = {}
    for server, layer in variants:
        config = StackConfig(server=server, layer=layer, workers=0, interval=0.1)
        result: dict[str, Any] = {}
        with Stack(ctx.session, config) as stack:
            sockets, _ = await ws_open_many(stack.ws_url, latency_sockets)
            try:
                result["latency"] = await measure_latency(stack, sockets, transitions)
                fan = sockets[:fan_sockets]
                result["fanout"] = await measure_fanout(stack, fan, count=fan_count)
            finally:
                await ws_close_all([ws for ws, _ in sockets])
            stack.check_alive()
            if ctx.quick:
                out[f"{server}+{layer}"] = result
                continue
            result["capacity"] = await measure_capacity(
                stack, [idle_sockets], lambda _: 10.0
            )
            # The payments made above wait in the queue; clear it for e2e.
            await in_thread(_clear_tasks, stack)
            stack.start_worker()
            result["e2e"] = await run_payments(
                stack, clients=50, seconds=e2e_seconds, warmup=1
            )
            stack.check_alive()
        out[f"{server}+{layer}"] = result
    return out


def _clear_tasks(stack: Stack) -> None:
    stack.sql("DELETE FROM django_tasks_database_dbtaskresult", write=True)
