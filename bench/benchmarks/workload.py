"""10. The post's workload, and issue 15's figures against its targets.

A. The post's own scenario: the gateway takes ``delay`` seconds (10 s; the
   simulated gateway, ``PAYMENTS_SIMULATED_DELAY``), ``sockets`` JSON-protocol
   WebSockets are connected, then ``payments`` are POSTed, each bound to one
   socket by its socket id, at most ``in_flight`` at a time: a slot frees
   when that payment's ``succeeded`` frame arrives. POST → ``succeeded``
   percentiles, what did not complete (lost: no terminal frame in time;
   failed: a terminal frame other than ``succeeded``; HTTP errors), and the
   total time.
B. Gateway 0 s, 50 clients in closed loops: payments/s (e2e.run_payments).
C. Gateway 0 s, open loops at 100 payments/s offered: p99 (run_payments).
D. CPU ms per payment of every process (web, workers, PostgreSQL, Redis:
   Stack.server_cpu) in A and in B, and the workers' CPU per payment in A
   against B's.

B and C share a stack: a closed loop ends with nothing in flight.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from bench.benchmarks.common import (
    TERMINAL,
    Context,
    FrameLog,
    cpu_per_payment,
    machine_cpu,
    machine_share,
    pct_ms,
)
from bench.benchmarks.e2e import payment_record, run_payments, stage_times
from bench.client import HttpConnection, ws_close_all, ws_open_many
from bench.harness import Stack


class HttpPool:
    """Keep-alive connections for concurrent requests, as a browser keeps them.

    A connection idle for ``max_idle`` seconds is closed, not reused: the
    server closes it WEB_HEAD_TIMEOUT (10 s) after its last response, and a
    request written just as it does would fail for the client's timing.
    """

    def __init__(self, port: int, max_idle: float = 5.0) -> None:
        self.port = port
        self.max_idle = max_idle
        self.idle: list[tuple[float, HttpConnection]] = []
        self.opened = 0

    async def _take(self) -> HttpConnection:
        now = time.monotonic()
        while self.idle and now - self.idle[0][0] >= self.max_idle:
            await self.idle.pop(0)[1].close()
        if self.idle:
            return self.idle.pop()[1]
        self.opened += 1
        return HttpConnection(self.port)

    async def post(self, path: str, body: Any) -> tuple[int, bytes]:
        http = await self._take()
        try:
            status, _, content = await http.request("POST", path, body)
        except BaseException:
            await http.close()
            raise
        self.idle.append((time.monotonic(), http))
        return status, content

    async def close(self) -> None:
        for _, http in self.idle:
            await http.close()
        self.idle = []


async def post_workload(
    stack: Stack,
    *,
    sockets: int,
    payments: int,
    in_flight: int,
    delay: float,
    timeout: float,
) -> dict[str, Any]:
    """A: ``payments`` bound to ``sockets`` open sockets, ``in_flight`` at a time."""
    opened, open_seconds = await ws_open_many(
        stack.ws_url, sockets, timeout=120 + sockets / 10
    )
    log = FrameLog()
    log.watch([ws for ws, _ in opened])
    socket_ids = [socket_id for _, socket_id in opened]
    pool = HttpPool(stack.port)
    slots = asyncio.Semaphore(in_flight)
    records: list[dict[str, Any]] = []
    unfinished: list[str] = []
    http_errors: dict[str, int] = {}

    async def pay(index: int) -> None:
        async with slots:
            t_post = time.time()
            body = {"amount": 1000, "socket_id": socket_ids[index % len(socket_ids)]}
            try:
                status, content = await pool.post("/api/payments/", body)
            except (OSError, EOFError, TimeoutError) as exc:
                # IncompleteReadError is an EOFError: the server hung up.
                name = type(exc).__name__
                http_errors[name] = http_errors.get(name, 0) + 1
                return
            t_response = time.time()
            if status != 202:
                http_errors[str(status)] = http_errors.get(str(status), 0) + 1
                return
            payment_id = json.loads(content)["id"]
            try:
                t_done = await asyncio.wait_for(
                    log.wait_status(payment_id, "succeeded"), timeout
                )
            except TimeoutError:
                unfinished.append(payment_id)
                return
            records.append(payment_record(log, payment_id, t_post, t_response, t_done))

    try:
        cpu0 = stack.server_cpu()
        machine0 = machine_cpu()
        client_cpu0 = time.process_time()
        t0 = time.time()
        await asyncio.gather(*(pay(i) for i in range(payments)))
        elapsed = time.time() - t0
        client_cpu = time.process_time() - client_cpu0
        cpu1 = stack.server_cpu()
        machine1 = machine_cpu()
    finally:
        await log.stop()
        await pool.close()
        await ws_close_all([ws for ws, _ in opened])
    failed = sum(
        1
        for payment_id in unfinished
        if any((payment_id, status) in log.statuses for status in TERMINAL)
    )
    done = len(records)
    http_error_count = sum(http_errors.values())
    return {
        "gateway_seconds": delay,
        "sockets": len(opened),
        "open_seconds": round(open_seconds, 1),
        "payments": payments,
        "in_flight": in_flight,
        "succeeded": done,
        "not_completed": payments - done,
        "lost": len(unfinished) - failed,
        "failed": failed,
        "http_errors": http_error_count,
        "http_error_kinds": http_errors,
        "http_connections_opened": pool.opened,
        # First POST to the last payment's outcome (or its timeout).
        "total_seconds": round(elapsed, 2),
        "payments_per_second": round(done / elapsed, 1) if elapsed else 0.0,
        "latency_ms": pct_ms([r["t_succeeded"] - r["t_post"] for r in records]),
        "post_response_ms": pct_ms([r["t_response"] - r["t_post"] for r in records]),
        "processing_after_post_ms": pct_ms(
            [r["t_processing"] - r["t_post"] for r in records if r["t_processing"]]
        ),
        **stage_times(stack, records),
        **cpu_per_payment(cpu0, cpu1, done),
        **machine_share(machine0, machine1),
        "load_generator_cpu_ms_per_payment": round(1000 * client_cpu / max(1, done), 2),
    }


async def bench_workload(ctx: Context) -> dict[str, Any]:
    delay = ctx.pick(2.0, 10.0)
    sockets = ctx.sockets or ctx.pick(100, 1000)
    payments = ctx.payments or ctx.pick(100, 1000)
    in_flight = ctx.in_flight or ctx.pick(50, 500)
    out: dict[str, Any] = {
        "config": ctx.config().label(),
        "db": ctx.db,
        "workers": ctx.workers,
    }
    # Keys carry the gateway's delay ("post_10s"): report.py's targets are
    # relative to it, so a --quick run at 2 s has verdicts too.
    post_key = f"post_{delay:g}s".replace(".", "_")
    config = ctx.config(workers=ctx.workers, simulated_delay=delay)
    with Stack(ctx.session, config) as stack:
        out[post_key] = await post_workload(
            stack,
            sockets=sockets,
            payments=payments,
            in_flight=in_flight,
            delay=delay,
            timeout=delay + ctx.pick(20.0, 60.0),
        )
        stack.check_alive()
    print(f"   A: {out[post_key]['succeeded']} of {payments} succeeded", flush=True)

    with Stack(ctx.session, ctx.config(workers=ctx.workers)) as stack:
        warmup = ctx.pick(0.5, 1.0)
        out["closed_50"] = await run_payments(
            stack, clients=50, seconds=ctx.pick(3.0, 12.0), warmup=warmup
        )
        out["open_100"] = await run_payments(
            stack, clients=50, seconds=ctx.pick(3.0, 8.0), warmup=warmup, rate=100
        )
        stack.check_alive()

    # D: the workers' CPU per payment with the gateway's delay against 0 s.
    at_delay = out[post_key]["cpu_ms_per_payment"]["workers"]
    at_zero = out["closed_50"]["cpu_ms_per_payment"]["workers"]
    out[f"worker_ms_ratio_{post_key.removeprefix('post_')}_to_0s"] = (
        round(at_delay / at_zero, 2) if at_zero else 0.0
    )
    return out
