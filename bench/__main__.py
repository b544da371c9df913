"""Run the benchmark suite: ``python -m bench [--quick] [NAME ...]``.

Each benchmark runs ``--runs`` times (3 by default, 1 with --quick; soak and
profile once) against fresh processes; its JSON (every run, plus median, min
and max of every figure) goes to bench/results/NAME.json (not committed), its
headline table to bench/results/NAME.md (committed), charts to
bench/results/*.png, and a summary against the issue's targets is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import report
from bench.benchmarks import BENCHMARKS, Context
from bench.harness import LAYERS, ROOT, SERVERS, Session

RESULTS = ROOT / "bench" / "results"
SUITE = [
    "micro",
    "latency",
    "e2e",
    "capacity",
    "fanout",
    "polling",
    "choices",
    "socketio",
    "workload",
    "soak",
]
ONCE = {"soak", "profile"}
# Hard limit on one run of a benchmark (seconds, quick and full); past it the
# run is cancelled, its processes stopped, and the suite goes on.
TIME_LIMIT = {"quick": 90, "full": 1200}
# socketio runs three modes, each on a fresh stack, with 1,000 sockets in a
# full run; polling opens them at ~10/s on a loaded 2-core machine.
TIME_LIMITS = {"socketio": {"quick": 240, "full": 2400}}


def flatten(data: Any, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}{key}."))
    elif isinstance(data, bool):
        pass
    elif isinstance(data, int | float):
        out[prefix.rstrip(".")] = data
    return out


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Median, min and max across runs of every numeric figure."""
    flat = [flatten(run) for run in runs]
    keys = sorted({k for f in flat for k in f})
    summary = {}
    for key in keys:
        values = sorted(f[key] for f in flat if key in f)
        n = len(values)
        median = values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2
        summary[key] = {"median": median, "min": values[0], "max": values[-1], "n": n}
    return summary


def machine() -> dict[str, Any]:
    import psutil

    def run(*cmd: str) -> str:
        try:
            return subprocess.run(
                cmd, capture_output=True, text=True, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in run("lscpu").splitlines()
            if line.startswith("Model name")
        ),
        platform.processor(),
    )
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str | None:
        # A benchmark that needs none of bench.txt's extras runs without them.
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    packages = {
        name: installed(name)
        for name in (
            "Django",
            "channels",
            "channels-redis",
            "daphne",
            "Twisted",
            "autobahn",
            "uvicorn",
            "uvloop",
            "websockets",
            "redis",
            "django-tasks-db",
            "djangorestframework",
            "orjson",
            "msgpack",
        )
    }
    commit = run("git", "-C", str(ROOT), "rev-parse", "--short", "HEAD")
    dirty = run("git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no")
    return {
        # The product code measured (bench/ itself is not part of it).
        "git_commit": commit + ("+uncommitted-changes" if dirty else ""),
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "load_average_at_start": os.getloadavg(),
        "packages": packages,
    }


async def run_one(name: str, ctx: Context, limit: float) -> dict[str, Any]:
    return await asyncio.wait_for(BENCHMARKS[name](ctx), limit)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "names",
        nargs="*",
        help=f"benchmarks to run (default: {' '.join(SUITE)}; also: profile, report)",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, one run")
    parser.add_argument("--runs", type=int, help="runs per benchmark (default 3)")
    parser.add_argument("--server", choices=SERVERS, default="daphne")
    parser.add_argument("--layer", choices=sorted(LAYERS), default="pubsub")
    parser.add_argument("--workers", type=int, default=1, help="db_workers for e2e")
    parser.add_argument(
        "--db",
        choices=("sqlite", "postgres"),
        default="sqlite",
        help="a fresh SQLite file (default) or a private PostgreSQL cluster "
        "(needs the server binaries); DATABASE_URL overrides both",
    )
    parser.add_argument(
        "--sockets",
        type=int,
        help="socketio: sockets per mode; workload: sockets of A (default 1000)",
    )
    parser.add_argument(
        "--payments",
        type=int,
        help="socketio: payments per mode; workload: payments of A (default 1000)",
    )
    parser.add_argument(
        "--in-flight",
        type=int,
        help="socketio: payments in flight (default 50); workload: in A (500)",
    )
    parser.add_argument(
        "--modes",
        help="socketio: comma-separated, of json, websocket, polling, upgrade "
        "(default json,websocket,polling)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--keep-logs", action="store_true")
    args = parser.parse_args(argv)

    if args.names == ["report"]:
        print(report.render(args.out))
        return 0
    names = args.names or SUITE
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    runs = args.runs or (1 if args.quick else 3)
    size = "quick" if args.quick else "full"
    args.out.mkdir(parents=True, exist_ok=True)

    # Ctrl-C and SIGTERM raise KeyboardInterrupt wherever the suite is (also
    # in blocking code; asyncio's own SIGINT handling only cancels at the
    # next await); every process started is stopped on the way out.
    def on_signal(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    meta = {
        "machine": machine(),
        "quick": args.quick,
        "argv": argv,
        "db": os.environ.get("DATABASE_URL", "").split("@")[-1] or args.db,
    }
    # Variants get their own files: e2e-postgres.json, capacity-uvicorn.json.
    suffix = "".join(
        f"-{value}"
        for value, default in (
            (args.db, "sqlite"),
            (args.server, "daphne"),
            (args.layer, "pubsub"),
        )
        if value != default
    )
    if args.workers != 1:
        suffix += f"-{args.workers}workers"
    started = time.monotonic()
    failed = []
    try:
        with Session(keep_logs=args.keep_logs, db=args.db) as session:
            ctx = Context(
                session=session,
                quick=args.quick,
                server=args.server,
                layer=args.layer,
                workers=args.workers,
                profile_dir=args.out / "profiles",
                db=args.db,
                sockets=args.sockets,
                payments=args.payments,
                in_flight=args.in_flight,
                modes=args.modes.split(",") if args.modes else None,
            )
            for name in names:
                results = []
                for i in range(1 if name in ONCE else runs):
                    print(f"== {name} run {i + 1} …", flush=True)
                    t0 = time.monotonic()
                    try:
                        limit = TIME_LIMITS.get(name, TIME_LIMIT)[size]
                        result = asyncio.run(run_one(name, ctx, limit))
                    except (Exception, TimeoutError) as exc:
                        print(f"!! {name} run {i + 1} failed: {exc!r}", flush=True)
                        failed.append(name)
                        continue
                    result["seconds"] = round(time.monotonic() - t0, 1)
                    results.append(result)
                    try:
                        print(report.brief(name, result), flush=True)
                    except Exception as exc:  # printing must not lose the run
                        print(f"   (summary failed: {exc!r})", flush=True)
                if results:
                    path = args.out / f"{name}{suffix}.json"
                    path.write_text(
                        json.dumps(
                            {
                                "name": name,
                                "meta": {**meta, "finished": time.time()},
                                "runs": results,
                                "summary": summarize(results),
                            },
                            indent=1,
                        )
                    )
                    # The small, committed summary BENCHMARKS.md is made from;
                    # the raw runs above stay out of git (bench/results/.gitignore).
                    summary = args.out / f"{name}{suffix}.md"
                    summary.write_text(
                        report.render(args.out, only=[name], suffix=suffix) + "\n"
                    )
    except KeyboardInterrupt:
        print("\ninterrupted: everything started was stopped", file=sys.stderr)
        return 130
    try:
        from bench import charts

        for chart in charts.make_all(args.out):
            print(f"chart: {chart}")
    except Exception as exc:  # a chart must not lose the figures
        print(f"charts failed: {exc!r}", file=sys.stderr)
    print(f"\nsuite took {time.monotonic() - started:.0f} s\n")
    print(report.render(args.out, only=names, suffix=suffix))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
