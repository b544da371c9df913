"""What every benchmark shares: the run context, timing helpers, the frame log."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.client import (
    CountingConnection,
)
from bench.harness import (
    Session,
    StackConfig,
    percentiles,
)

TERMINAL = {"succeeded", "failed", "canceled"}


@dataclass
class Context:
    session: Session
    quick: bool
    server: str = "daphne"
    layer: str = "pubsub"
    workers: int = 1
    profile_dir: Path | None = None
    db: str = "sqlite"
    # Sizes of the socketio benchmark (None: its defaults, smaller with --quick).
    sockets: int | None = None
    payments: int | None = None
    in_flight: int | None = None
    modes: list[str] | None = None

    def config(self, **kwargs: Any) -> StackConfig:
        kwargs.setdefault("server", self.server)
        kwargs.setdefault("layer", self.layer)
        return StackConfig(**kwargs)

    def pick(self, quick: Any, full: Any) -> Any:
        return quick if self.quick else full


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def pct_ms(values: list[float]) -> dict[str, float]:
    """Percentiles of durations given in seconds, as milliseconds."""
    stats = percentiles(values)
    return {k: (v if k == "n" else ms(v)) for k, v in stats.items()}


def cpu_per_payment(
    before: dict[str, float], after: dict[str, float], payments: int
) -> dict[str, Any]:
    """CPU ms per payment of each process of ``Stack.server_cpu``, and in all.

    ``all`` is the product's processes (web, workers, PostgreSQL, Redis),
    not the load generator; ``worker_share_percent`` the workers' part of it.
    """
    parts = {k: 1000 * (after[k] - before[k]) / max(1, payments) for k in after}
    total = sum(parts.values())
    return {
        "cpu_ms_per_payment": {k: round(v, 2) for k, v in parts.items()},
        "cpu_ms_per_payment_all": round(total, 2),
        "worker_share_percent": round(100 * parts["workers"] / total, 1)
        if total
        else 0.0,
    }


def machine_cpu() -> dict[str, float]:
    """The machine's CPU seconds so far, all cores, by kind (Linux /proc/stat).

    ``steal`` is time the hypervisor gave this guest's virtual CPUs to
    someone else: a run slower than its neighbours with steal in it was
    slowed by the host, not by the product.
    """
    first_line = Path("/proc/stat").read_text().split("\n")[0]
    fields = [int(v) for v in first_line.split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = fields
    tick = os.sysconf("SC_CLK_TCK")
    return {
        "busy": (user + nice + system + irq + softirq) / tick,
        "idle": (idle + iowait) / tick,
        "steal": steal / tick,
    }


def machine_share(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """Each kind's percent of the machine's capacity between two ``machine_cpu``."""
    spent = {k: after[k] - before[k] for k in after}
    total = sum(spent.values()) or 1.0
    return {f"machine_{k}_percent": round(100 * v / total, 1) for k, v in spent.items()}


async def in_thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return await asyncio.to_thread(fn, *args, **kwargs)


class FrameLog:
    """Receive loops for many sockets; record when each payment version arrived."""

    def __init__(self) -> None:
        self.arrivals: dict[tuple[str, int], float] = {}
        self.statuses: dict[tuple[str, str], float] = {}
        self.frames = 0
        self.first = 0.0
        self.last = 0.0
        self.waiters: dict[tuple[str, str], asyncio.Future] = {}
        self._tasks: list[asyncio.Task] = []

    def watch(self, sockets: list[CountingConnection]) -> None:
        self._tasks += [asyncio.ensure_future(self._loop(ws)) for ws in sockets]

    async def _loop(self, ws: CountingConnection) -> None:
        with contextlib.suppress(Exception):
            async for raw in ws:
                now = time.time()
                frame = json.loads(raw)
                if frame.get("event") != "payment-status":
                    continue
                self.frames += 1
                if not self.first:
                    self.first = now
                self.last = now
                data = frame["data"]
                self.arrivals.setdefault((data["id"], int(data["version"])), now)
                key = (data["id"], data["status"])
                self.statuses.setdefault(key, now)
                waiter = self.waiters.pop(key, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(now)

    def wait_status(self, payment_id: str, status: str) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if (payment_id, status) in self.statuses:
            future.set_result(self.statuses[(payment_id, status)])
        else:
            self.waiters[(payment_id, status)] = future
        return future

    async def wait_frames(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.frames < count and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []


def write_json(path: Path, data: Any) -> str:
    path.write_text(json.dumps(data))
    return str(path)
