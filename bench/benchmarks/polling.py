"""5. Polling vs push: what a client following a payment costs each way."""

from __future__ import annotations

import asyncio
import json
import random
import time
from typing import Any

from bench import client as ws_client
from bench.benchmarks.common import TERMINAL, Context, FrameLog, pct_ms
from bench.client import (
    CountingConnection,
    HttpConnection,
    ws_close_all,
    ws_open_retry,
)
from bench.harness import (
    Stack,
    parse_db_time,
)


async def follow(
    stack: Stack, *, mode: str, clients: int, period: float = 1.0
) -> dict[str, Any]:
    """``clients`` each create one payment, then learn its outcome by ``mode``."""
    assert mode in ("polling", "push")
    known: dict[str, float] = {}
    follow_bytes = {"in": 0, "out": 0}
    follow_requests = 0
    created: list[dict[str, Any]] = []
    barrier_created = asyncio.Event()
    ready = 0
    create_cpu: dict[str, float] = {}

    async def client() -> None:
        nonlocal follow_requests, ready
        ws: CountingConnection | None = None
        log = FrameLog()
        socket_id = ""
        if mode == "push":
            ws, socket_id = await ws_open_retry(stack.ws_url)
            log.watch([ws])
        creator = HttpConnection(stack.port)
        body: dict[str, Any] = {"amount": 1000}
        if socket_id:
            body["socket_id"] = socket_id
        status, _, raw = await creator.request("POST", "/api/payments/", body)
        await creator.close()
        assert status == 202, raw
        payment = json.loads(raw)
        created.append(payment)
        ready += 1
        if ready == clients:
            barrier_created.set()
        await barrier_created.wait()
        try:
            if mode == "push":
                assert ws is not None
                t_known = await asyncio.wait_for(
                    asyncio.shield(log.wait_status(payment["id"], "succeeded")), 120
                )
                known[payment["id"]] = t_known
                await log.stop()
                await ws_close_all([ws])
                follow_bytes["in"] += ws.bytes_in
                follow_bytes["out"] += ws.bytes_out
                # The handshake is an HTTP request served too.
                follow_requests += 1
                return
            http = HttpConnection(stack.port)
            path = (
                f"/api/payments/{payment['id']}/"
                f"?client_secret={payment['client_secret']}"
            )
            next_at = time.monotonic() + random.random() * period
            deadline = time.monotonic() + 120
            try:
                while time.monotonic() < deadline:
                    await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                    next_at += period
                    status, _, raw = await http.request("GET", path)
                    if status == 200 and json.loads(raw)["status"] in TERMINAL:
                        known[payment["id"]] = time.time()
                        break
            finally:
                await http.close()
                follow_bytes["in"] += http.bytes_in
                follow_bytes["out"] += http.bytes_out
                follow_requests += http.requests
        finally:
            await log.stop()

    assert stack.web is not None
    cpu_start = stack.server_cpu()
    failures0 = ws_client.stats["handshake_failures"]

    async def mark_created() -> None:
        await barrier_created.wait()
        create_cpu.update(stack.server_cpu())

    marker = asyncio.ensure_future(mark_created())
    t0 = time.time()
    await asyncio.gather(*(client() for _ in range(clients)))
    await marker
    wall = time.time() - t0
    cpu_end = stack.server_cpu()
    # The outcome's commit time: its PaymentEvent row (written in the same
    # transaction, just before COMMIT).
    outcome = {
        str(row[0]).replace("-", ""): parse_db_time(row[1])
        for row in stack.sql(
            "SELECT payment_id, created_at FROM payments_paymentevent "
            "WHERE to_status = 'succeeded'"
        )
    }
    delays = [
        known[p["id"]] - outcome[p["id"].replace("-", "")]
        for p in created
        if p["id"] in known and p["id"].replace("-", "") in outcome
    ]

    def cpu(start: dict[str, float], end: dict[str, float]) -> dict[str, float]:
        web = end["web"] - start["web"]
        workers = end["workers"] - start["workers"]
        return {
            "web": round(web, 3),
            "workers": round(workers, 3),
            "total": round(web + workers, 3),
        }

    return {
        "mode": mode,
        "clients": clients,
        "known": len(known),
        "wall_seconds": round(wall, 2),
        "follow_http_requests": follow_requests,
        # Handshakes refused and retried when all clients connect at
        # once: the Redis pool limit (see BENCHMARKS.md).
        "handshake_failures": ws_client.stats["handshake_failures"] - failures0,
        "follow_bytes": follow_bytes["in"] + follow_bytes["out"],
        "follow_bytes_per_client": round(
            (follow_bytes["in"] + follow_bytes["out"]) / clients
        ),
        "cpu_seconds_all": cpu(cpu_start, cpu_end),
        "cpu_seconds_following": cpu(create_cpu, cpu_end),
        "outcome_to_known_ms": pct_ms(delays),
    }


async def bench_polling(ctx: Context) -> dict[str, Any]:
    clients = ctx.pick(50, 200)
    delay = ctx.pick(1.5, 10.0)
    out: dict[str, Any] = {"config": ctx.config().label(), "delay_seconds": delay}
    for mode in ("polling", "push"):
        config = ctx.config(workers=1, interval=1.0, simulated_delay=delay)
        with Stack(ctx.session, config) as stack:
            out[mode] = await follow(stack, mode=mode, clients=clients)
            stack.check_alive()
    poll, push = out["polling"], out["push"]
    for scope in ("cpu_seconds_following", "cpu_seconds_all"):
        for part in ("web", "total"):
            out[f"ratio_{scope}_{part}"] = round(
                poll[scope][part] / max(push[scope][part], 1e-6), 1
            )
    out["ratio_bytes"] = round(poll["follow_bytes"] / max(1, push["follow_bytes"]), 1)
    out["ratio_http_requests"] = round(
        poll["follow_http_requests"] / max(1, push["follow_http_requests"]), 1
    )
    return out
