"""Profiling: where the processes spend their time (py-spy)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.benchmarks.common import Context
from bench.benchmarks.e2e import run_payments
from bench.benchmarks.fanout import measure_fanout
from bench.client import (
    ws_close_all,
    ws_open_many,
)
from bench.harness import (
    Stack,
)


async def bench_profile(ctx: Context) -> dict[str, Any]:
    """py-spy on the web process and the worker under e2e load and fan-out."""
    assert ctx.profile_dir is not None
    ctx.profile_dir.mkdir(parents=True, exist_ok=True)
    seconds = ctx.pick(4, 10)
    out: dict[str, Any] = {}
    config = ctx.config(workers=1, interval=1.0)
    with Stack(ctx.session, config) as stack:
        assert stack.web is not None
        spies = [
            spy(stack.web.pid, seconds + 1, ctx.profile_dir / "e2e-web"),
            spy(stack.workers[0].pid, seconds + 1, ctx.profile_dir / "e2e-worker"),
        ]
        out["e2e"] = await run_payments(stack, clients=50, seconds=seconds, warmup=0.5)
        out["e2e_profiles"] = {
            name: summarize(proc, path)
            for name, (proc, path) in zip(("web", "worker"), spies, strict=True)
        }
    with Stack(ctx.session, ctx.config(workers=0)) as stack:
        assert stack.web is not None
        sockets, _ = await ws_open_many(stack.ws_url, 500)
        try:
            proc, path = spy(stack.web.pid, seconds + 1, ctx.profile_dir / "fanout-web")
            out["fanout"] = await measure_fanout(
                stack, sockets, count=int(2000 * seconds)
            )
            out["fanout_profile"] = summarize(proc, path)
        finally:
            await ws_close_all([ws for ws, _ in sockets])
    # Where an idle web process's CPU goes (daphne's pings and its per-second
    # loops over every connection).
    out["idle"] = await profile_idle(ctx, ctx.pick(2000, 10000), ctx.pick(10, 30))
    return out


async def profile_idle(ctx: Context, sockets: int, seconds: int) -> dict[str, Any]:
    """py-spy (busy samples only) on a web process holding idle sockets."""
    assert ctx.profile_dir is not None
    with Stack(ctx.session, ctx.config(workers=0)) as stack:
        assert stack.web is not None
        opened, _ = await ws_open_many(stack.ws_url, sockets, timeout=300)
        try:
            await asyncio.sleep(2)
            cpu0, t0 = stack.web.cpu_seconds(), time.monotonic()
            proc, path = spy(
                stack.web.pid, seconds, ctx.profile_dir / "idle-web", idle=False
            )
            await asyncio.sleep(seconds + 1)
            cpu = stack.web.cpu_seconds() - cpu0
            return {
                "sockets": sockets,
                "idle_cpu_percent": round(100 * cpu / (time.monotonic() - t0), 2),
                "profile": summarize(proc, path),
            }
        finally:
            await ws_close_all([ws for ws, _ in opened])


def spy(
    pid: int, seconds: float, stem: Path, *, idle: bool = True
) -> tuple[subprocess.Popen, Path]:
    import shutil
    import sys

    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    raw = stem.with_suffix(".txt")
    proc = subprocess.Popen(
        [
            exe,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(int(seconds)),
            "--rate",
            "250",
            "--format",
            "raw",
            "--output",
            str(raw),
            "--nonblocking",
            "--threads",
            # Waiting (SQLite's busy handler, socket reads) is where the
            # time goes too: sample idle threads as well.
            *(["--idle"] if idle and not os.environ.get("BENCH_PROFILE_BUSY") else []),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    return proc, raw


def summarize(proc: subprocess.Popen, raw: Path, top: int = 20) -> dict[str, Any]:
    """Collapse py-spy's raw stacks: per thread group, the inclusive and self
    share of each function in that group's wall time (idle included)."""
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if not raw.exists():
        return {"error": "py-spy wrote nothing (ptrace not permitted?)"}
    groups: dict[str, dict[str, Any]] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        # A frame name can span lines (py-spy prints some code objects'
        # names verbatim): skip the pieces that are not "stack count".
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        thread, *frames = stack.split(";")
        if not frames:
            continue
        name = thread.rpartition(": ")[2]
        # asgiref's sync_to_async / async_to_sync pools: one group.
        if name.startswith(("ThreadPoolExecutor", "asyncio_")):
            name = "executor threads"
        group = groups.setdefault(name, {"samples": 0, "inclusive": {}, "self": {}})
        group["samples"] += count
        total += count
        seen = set()
        for frame in frames:
            fn = _frame_name(frame)
            if fn not in seen:
                group["inclusive"][fn] = group["inclusive"].get(fn, 0) + count
                seen.add(fn)
        leaf = _frame_name(frames[-1])
        group["self"][leaf] = group["self"].get(leaf, 0) + count

    def share(table: dict[str, int], of: int) -> list[tuple[str, float]]:
        ranked = sorted(table.items(), key=lambda kv: -kv[1])[:top]
        return [(fn, round(100 * n / max(1, of), 1)) for fn, n in ranked]

    ranked = sorted(groups.items(), key=lambda kv: -kv[1]["samples"])
    # Short-lived threads (asgiref's per-request joins) below 1 %: counted only.
    kept = [(n, g) for n, g in ranked if g["samples"] >= total / 100]
    return {
        "samples": total,
        "other_threads_percent": round(
            100 * (total - sum(g["samples"] for _, g in kept)) / max(1, total), 1
        ),
        "threads": {
            name: {
                "share_of_samples_percent": round(100 * g["samples"] / total, 1),
                "inclusive_percent": share(g["inclusive"], g["samples"]),
                "self_percent": share(g["self"], g["samples"]),
            }
            for name, g in kept
        },
    }


def _frame_name(frame: str) -> str:
    # py-spy raw frames look like "function (path/to/file.py:123)".
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "/work/main/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{name} ({path})"
