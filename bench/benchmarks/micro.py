"""8. Micro-benchmarks of the send path."""

from __future__ import annotations

from typing import Any

from bench.benchmarks.common import Context, in_thread
from bench.harness import (
    Stack,
)


async def bench_micro(ctx: Context) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for layer in ("core", "pubsub"):
        stack = Stack(ctx.session, ctx.config(layer=layer))
        try:
            out[layer] = await in_thread(
                stack.driver,
                "micro",
                "--seconds",
                str(ctx.pick(0.3, 1.0)),
                "--requests",
                str(ctx.pick(100, 1000)),
                timeout=120,
            )
        finally:
            stack.stop()
    return out
