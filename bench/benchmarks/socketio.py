"""9. Socket.IO beside the JSON protocol: idle sockets and payments, end to end.

The load client is the real socket.io-client from npm (bench/sio_load.mjs,
run by Node with tests/node_modules), one Node process for all sockets of a
mode. Per mode, on a fresh stack: open the sockets (50 handshakes at a
time), measure the web process's RSS per socket and its idle CPU (a whole
ping round at the default 25-s pingInterval in a full run), then run a
closed loop of payments bound to the sockets by their socket id in turn
(``POST /api/payments/make-payment-with-socket {amount, socketId}``),
``in_flight`` at a time, each timed from its POST to its ``succeeded``
event. The "json" mode is the same through the JSON protocol
(``/ws/payments/`` and ``POST /api/payments/ {socket_id}``), with the same
Node process and HTTP client, so only the protocol differs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import time
from typing import Any

import psutil

from bench.benchmarks.common import Context, pct_ms
from bench.harness import ORIGIN, ROOT, Stack, redis_delta

SCRIPT = ROOT / "bench" / "sio_load.mjs"
NODE_MODULES = ROOT / "tests" / "node_modules"
MODES = ("json", "websocket", "polling", "upgrade")
DEFAULT_MODES = ["json", "websocket", "polling"]
#: Handshakes in flight while the sockets open (as bench.client does).
CONCURRENCY = 50
#: Lines of a run's records can be long (one line, every payment).
LINE_LIMIT = 64 * 2**20
#: What in the web process's log says it failed a request.
WEB_LOG_FAILURES = ("Traceback", "MaxConnectionsError", "Too many connections")


def node_ready() -> None:
    if shutil.which("node") is None:
        raise RuntimeError("node (20) is needed for the socketio benchmark")
    if not (NODE_MODULES / "socket.io-client").is_dir():
        raise RuntimeError("tests/node_modules is missing: run npm ci in tests/")


class LoadClient:
    """One Node process holding ``sockets`` clients of one mode."""

    def __init__(self, stack: Stack, mode: str, sockets: int) -> None:
        self.stack = stack
        self.config = {
            "url": stack.http_url,
            "mode": mode,
            "origin": ORIGIN,
            "sockets": sockets,
            "concurrency": CONCURRENCY,
            # A handshake, or a payment's succeeded, later than this failed.
            "timeout_ms": 30_000,
            # Past it no more sockets are opened: a stack that cannot hold
            # them all is measured with what it holds (open_failures).
            "open_deadline_ms": 1000 * (60 + sockets / 5),
        }
        self.proc: asyncio.subprocess.Process | None = None
        self.ps: psutil.Process | None = None
        self.name = f"node-{mode}-{sockets}"

    async def start(self, timeout: float) -> dict[str, Any]:
        """Start Node; return its "open" report once every socket is open."""
        self._log = open(self.stack.dir / f"{self.name}.log", "wb")
        self.proc = await asyncio.create_subprocess_exec(
            "node",
            str(SCRIPT),
            json.dumps(self.config),
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=self._log,
            limit=LINE_LIMIT,
            start_new_session=True,
        )
        self.ps = psutil.Process(self.proc.pid)
        return await self.expect("open", timeout)

    async def expect(self, event: str, timeout: float) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not line:
            await self.proc.wait()
            log = (self.stack.dir / f"{self.name}.log").read_text(errors="replace")
            raise RuntimeError(f"{self.name} exited:\n{log[-3000:]}")
        report = json.loads(line)
        if report.get("event") != event:
            raise RuntimeError(f"{self.name}: expected {event}, got {report}")
        return report

    async def command(self, event: str, timeout: float, **command: Any) -> dict:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(command) + "\n").encode())
        await self.proc.stdin.drain()
        return await self.expect(event, timeout)

    def cpu_seconds(self) -> float:
        assert self.ps is not None
        times = self.ps.cpu_times()
        return times.user + times.system

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                await self.proc.wait()
        if getattr(self, "_log", None) is not None:
            self._log.close()


def progress(mode: str, text: str) -> None:
    print(f"   {mode}: {text}", flush=True)


def redis_footprint(stack: Stack) -> dict[str, int]:
    """Keys under the stack's prefix and their MEMORY USAGE, in bytes."""
    redis = stack.session.redis
    keys = list(redis.scan_iter(match=f"{stack.prefix}*", count=1000))
    with redis.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.memory_usage(key)
        sizes = pipe.execute() if keys else []
    return {"keys": len(keys), "bytes": sum(size or 0 for size in sizes)}


def cpu_now(stack: Stack, client: LoadClient) -> dict[str, float]:
    cpu = stack.server_cpu()
    return {
        "web": cpu["web"],
        "workers": cpu["workers"],
        "redis": stack.session.redis_info()["cpu_seconds"],
        "load_client": client.cpu_seconds(),
        "t": time.monotonic(),
    }


async def run_mode(
    stack: Stack,
    mode: str,
    *,
    sockets: int,
    payments: int,
    in_flight: int,
    warmup: int,
    idle_seconds: float,
    warm_sockets: int,
) -> dict[str, Any]:
    assert stack.web is not None
    web = stack.web
    load_average = os.getloadavg()
    # Warm the code paths (first handshakes and payments import and fill
    # pools) in a Node process of its own, gone before the baseline.
    warm = LoadClient(stack, mode, warm_sockets)
    try:
        await warm.start(120)
        await warm.command(
            "paid", 120, cmd="pay", payments=warm_sockets, in_flight=warm_sockets
        )
        await warm.command("closed", 60, cmd="close")
    finally:
        await warm.stop()
    await asyncio.sleep(1)
    rss_base = web.rss()
    redis_base = redis_footprint(stack)
    failures_base = {text: web.log_count(text) for text in WEB_LOG_FAILURES}

    client = LoadClient(stack, mode, sockets)
    try:
        opened = await client.start(timeout=180 + sockets / 5)
        progress(mode, f"{opened['opened']} sockets open in {opened['seconds']:.1f} s")
        await asyncio.sleep(1)
        rss_open = web.rss()
        redis_open = redis_footprint(stack)
        cpu0, t0 = web.cpu_seconds(), time.monotonic()
        redis0 = stack.session.redis_info()
        await asyncio.sleep(idle_seconds)
        idle_cpu = 100 * (web.cpu_seconds() - cpu0) / (time.monotonic() - t0)
        idle_redis = redis_delta(redis0, stack.session.redis_info())
        rss_idle = web.rss()
        stack.check_alive()

        before = cpu_now(stack, client)
        redis1 = stack.session.redis_info()
        paid = await client.command(
            "paid",
            timeout=120 + payments,
            cmd="pay",
            payments=payments,
            in_flight=in_flight,
        )
        after = cpu_now(stack, client)
        paying_redis = redis_delta(redis1, stack.session.redis_info())
        progress(mode, f"{len(paid['records'])} payments in {paid['seconds']:.1f} s")
        stack.check_alive()
        closed = await client.command("closed", 60, cmd="close")
    finally:
        await client.stop()

    records = [r for r in paid["records"] if r["index"] >= warmup]
    window_ms = (
        max(r["t_succeeded"] for r in records) - min(r["t_post"] for r in records)
        if records
        else 0
    )
    elapsed = after["t"] - before["t"]
    done = len(paid["records"])

    def per_payment_ms(part: str) -> float:
        return round(1000 * (after[part] - before[part]) / max(1, done), 2)

    def percent(part: str) -> float:
        return round(100 * (after[part] - before[part]) / elapsed, 1)

    def seconds(values: list[float]) -> list[float]:
        return [v / 1000 for v in values]

    return {
        "load_average_at_start": load_average,
        "sockets": opened["opened"],
        "open_failures": opened["failed"],
        "open_seconds": round(opened["seconds"], 2),
        "opens_per_second": round(opened["opened"] / max(opened["seconds"], 1e-9), 1),
        "transports_at_open": opened["transports"],
        "transports_at_close": closed["transports"],
        "rss_base_mib": round(rss_base / 2**20, 1),
        "rss_idle_mib": round(rss_idle / 2**20, 1),
        "bytes_per_socket": round((rss_idle - rss_base) / max(1, opened["opened"])),
        "bytes_per_socket_at_open": round(
            (rss_open - rss_base) / max(1, opened["opened"])
        ),
        "redis_keys_per_socket": round(
            (redis_open["keys"] - redis_base["keys"]) / max(1, opened["opened"]), 2
        ),
        "redis_bytes_per_socket": round(
            (redis_open["bytes"] - redis_base["bytes"]) / max(1, opened["opened"])
        ),
        "idle_seconds": idle_seconds,
        "idle_web_cpu_percent": round(idle_cpu, 2),
        # Redis is the shared one in a run on REDIS_URL: other users' commands
        # count too (see BENCHMARKS.md).
        "idle_redis_commands_per_second": round(
            idle_redis["commands"] / idle_seconds, 1
        ),
        "idle_redis_by_command": idle_redis["by_command"],
        "in_flight": in_flight,
        "payments": len(records),
        "warmup_payments": min(warmup, done),
        "payments_per_second": round(1000 * len(records) / window_ms, 1)
        if window_ms
        else 0,
        "latency_ms": pct_ms(
            seconds([r["t_succeeded"] - r["t_post"] for r in records])
        ),
        "post_response_ms": pct_ms(
            seconds([r["t_response"] - r["t_post"] for r in records])
        ),
        "processing_after_post_ms": pct_ms(
            seconds(
                [r["t_processing"] - r["t_post"] for r in records if r["t_processing"]]
            )
        ),
        "redis_commands_per_payment": round(paying_redis["commands"] / max(1, done), 1),
        "redis_by_command_per_payment": {
            name: round(count / max(1, done), 2)
            for name, count in paying_redis["by_command"].items()
        },
        "http_errors": paid["errors"]["http"],
        "http_error_statuses": paid["errors"]["statuses"],
        "lost": paid["errors"]["lost"],
        # Before the client's own close: a socket that dropped meanwhile.
        "disconnects": closed["disconnects"],
        "reconnects": closed["reconnects"],
        "connect_errors": closed["connect_errors"],
        "disconnect_reasons": closed["disconnect_reasons"],
        "disconnects_while_opening": opened["disconnects"],
        "disconnect_reasons_while_opening": opened["disconnect_reasons"],
        "cpu_ms_per_payment": {
            part: per_payment_ms(part)
            for part in ("web", "workers", "redis", "load_client")
        },
        "cpu_percent_paying": {
            part: percent(part) for part in ("web", "workers", "redis", "load_client")
        },
        "web_log_failures": {
            text: web.log_count(text) - failures_base[text] for text in WEB_LOG_FAILURES
        },
    }


async def bench_socketio(ctx: Context) -> dict[str, Any]:
    node_ready()
    modes = ctx.modes or DEFAULT_MODES
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise ValueError(f"unknown mode(s) {unknown}; choose from {MODES}")
    sockets = ctx.sockets or ctx.pick(20, 1000)
    payments = ctx.payments or ctx.pick(40, 1000)
    in_flight = ctx.in_flight or ctx.pick(10, 50)
    # The first payments of a run fill pools and caches: not counted.
    warmup = min(payments // 10, 100)
    out: dict[str, Any] = {
        "config": ctx.config().label(),
        "db": ctx.db,
        "workers": ctx.workers,
        "sockets": sockets,
        "payments": payments,
        "in_flight": in_flight,
    }
    for mode in modes:
        try:
            out[mode] = await run_stack(
                ctx,
                mode,
                sockets=sockets,
                payments=payments,
                in_flight=in_flight,
                warmup=warmup,
            )
        except (Exception, TimeoutError) as exc:
            # One mode failing must not lose the others' figures.
            print(f"   {mode}: failed: {exc!r}"[:2000], flush=True)
            out[mode] = {"error": repr(exc)[:2000]}
    return out


async def run_stack(
    ctx: Context,
    mode: str,
    *,
    sockets: int,
    payments: int,
    in_flight: int,
    warmup: int,
) -> dict[str, Any]:
    stack = Stack(ctx.session, ctx.config(workers=ctx.workers))
    try:
        with stack:
            return await run_mode(
                stack,
                mode,
                sockets=sockets,
                payments=payments,
                in_flight=in_flight,
                warmup=warmup,
                idle_seconds=ctx.pick(2.0, 30.0),
                warm_sockets=ctx.pick(5, 20),
            )
    finally:
        if not stack.session.own_redis:
            # A shared Redis: leave nothing of this stack behind, once its
            # processes (which close their sessions there) are gone.
            for key in stack.session.redis.scan_iter(match=f"{stack.prefix}*"):
                stack.session.redis.delete(key)
