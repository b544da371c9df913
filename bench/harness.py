"""Processes for the benchmarks: channel layer, database, web, workers, metrics.

Everything a benchmark starts goes through a ``Session`` (one embedded Valkey
or REDIS_URL, one migrated SQLite template) and a ``Stack`` (a fresh copy of
that database, one web process, any number of db_worker processes). Both are
context managers that stop what they started, on errors and Ctrl-C too.
The processes and their command lines are scripts/processes.py's, the ones
scripts/run and the tests start. Only 127.0.0.1 is ever used.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shlex
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import redis

from scripts.processes import (
    APP,
    HOST,
    PY,
    ROOT,
    PostgresCluster,
    Process,
    free_port,
    valkey,
    web_command,
    worker_command,
)

# The seed frontend's origin; the stack allows it (CORS_ALLOWED_ORIGINS).
ORIGIN = "http://localhost:3000"

LAYERS = {
    "core": "channels_redis.core.RedisChannelLayer",
    "pubsub": "realtime.layers.RedisPubSubChannelLayer",
}
SERVERS = ("daphne", "uvicorn")


def raise_open_files_limit() -> int:
    """Raise this process's soft open-files limit to the hard one; return it.

    Children inherit the limit, so the web process can hold as many sockets
    as the client opens.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def percentiles(values: list[float], points: tuple[float, ...] = (50, 95, 99)) -> dict:
    """Return {"p50": …} for ``points`` (linear interpolation), plus n/min/max/mean."""
    if not values:
        return {"n": 0}
    data = sorted(values)
    out: dict[str, float] = {"n": len(data)}
    for p in points:
        k = (len(data) - 1) * p / 100
        lo = int(k)
        hi = min(lo + 1, len(data) - 1)
        out[f"p{p:g}"] = data[lo] + (data[hi] - data[lo]) * (k - lo)
    out["min"], out["max"] = data[0], data[-1]
    out["mean"] = sum(data) / len(data)
    return out


class Proc(Process):
    """A child process of a stack (scripts/processes.py), measured with psutil.

    Its output stays in the stack's directory; its own process group lets a
    Ctrl-C reach only this runner, which then stops the children in order.
    """

    def __init__(
        self, name: str, args: list[str], env: dict[str, str], logdir: Path
    ) -> None:
        super().__init__(
            name, args, env, log_path=logdir / f"{name}.log", new_session=True
        )
        self.ps = psutil.Process(self.pid)

    def cpu_seconds(self) -> float:
        times = self.ps.cpu_times()
        return times.user + times.system

    def rss(self) -> int:
        return self.ps.memory_info().rss

    def num_fds(self) -> int:
        return self.ps.num_fds()

    def log_count(self, text: str) -> int:
        """How many times ``text`` appears in the process's output so far."""
        return self.output().count(text)


class Session:
    """The parts shared by every stack of one run: Redis and a migrated DB."""

    def __init__(self, *, keep_logs: bool = False, db: str = "sqlite") -> None:
        self.keep_logs = keep_logs
        self.db = db
        self.tmp = Path(tempfile.mkdtemp(prefix="bench-"))
        self._stack = contextlib.ExitStack()
        self.redis_url = ""
        self.own_redis = False
        self.template_db = self.tmp / "template.sqlite3"
        # A database given by the caller is used as it is (not fresh).
        self.database_url = os.environ.get("DATABASE_URL", "")
        self.postgres: EmbeddedPostgres | None = None

    def __enter__(self) -> Session:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self) -> None:
        raise_open_files_limit()
        if os.environ.get("REDIS_URL"):
            self.redis_url = os.environ["REDIS_URL"]
        else:
            self.redis_url = self._stack.enter_context(valkey(maxclients=50000))
            self.own_redis = True
        self.redis = redis.Redis.from_url(self.redis_url)
        self._stack.callback(self.redis.close)
        self.redis.ping()
        if self.database_url:
            return
        if self.db == "postgres":
            self.postgres = EmbeddedPostgres()
            self._stack.callback(self.postgres.remove)
            self.postgres.start()
            self.postgres.execute("CREATE DATABASE bench_template")
            template_url = self.postgres.url("bench_template")
        else:
            template_url = f"sqlite:///{self.template_db}"
        # Migrate once; every stack starts from a copy of this database.
        env = self.env(database_url=template_url, prefix="bench-migrate")
        subprocess.run(
            [PY, "manage.py", "migrate", "--noinput", "-v", "0"],
            cwd=ROOT,
            env=env,
            check=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )

    def close(self) -> None:
        self._stack.close()
        if not self.keep_logs:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def env(self, *, database_url: str, prefix: str, **extra: str) -> dict[str, str]:
        """The environment of the web and worker processes (production settings)."""
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "config.settings.production",
            "DJANGO_SECRET_KEY": "bench-secret-key-not-for-production-" + "x" * 32,
            "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
            "DJANGO_SECURE_SSL_REDIRECT": "false",
            "DJANGO_DEBUG": "false",
            "DATABASE_URL": database_url,
            "REDIS_URL": self.redis_url,
            "CHANNELS_PREFIX": prefix,
            "CACHE_PREFIX": prefix,
            "CORS_ALLOWED_ORIGINS": ORIGIN,
            # The create throttle would refuse a load test from one address.
            "PAYMENTS_CREATE_RATE_ANON": "100000000/min",
            "PAYMENTS_CREATE_RATE_USER": "100000000/min",
            "PAYMENTS_SIMULATED_DELAY": "0",
            # Thousands of sockets come from one address here.
            "REALTIME_MAX_CONNECTIONS_PER_CLIENT": "1000000",
            "SOCKETIO_MAX_SESSIONS_PER_CLIENT": "1000000",
            # Each pending poll holds one of these: 1,000 polling sessions in
            # one web process would take the default pool whole and leave
            # pushes and renewals waiting for a connection.
            "SOCKETIO_MAX_REDIS_CONNECTIONS": "4000",
            **extra,
        }
        env.pop("RUN_MAIN", None)
        return env

    def redis_info(self) -> dict[str, Any]:
        """Figures of the channel layer's Redis, for deltas around a measurement."""
        info = self.redis.info("all")
        commands = {
            key.removeprefix("cmdstat_"): value["calls"]
            for key, value in info.items()
            if key.startswith("cmdstat_")
        }
        return {
            "connected_clients": info["connected_clients"],
            "total_connections_received": info["total_connections_received"],
            "total_commands_processed": info["total_commands_processed"],
            "cpu_seconds": info["used_cpu_user"] + info["used_cpu_sys"],
            "used_memory": info["used_memory"],
            "commands": commands,
        }

    def redis_cpu_seconds(self) -> float:
        info = self.redis.info("cpu")
        return info["used_cpu_user"] + info["used_cpu_sys"]

    def count_keys(self, prefix: str) -> int:
        return sum(1 for _ in self.redis.scan_iter(match=f"{prefix}*", count=1000))


def redis_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    commands = {
        name: after["commands"].get(name, 0) - before["commands"].get(name, 0)
        for name in after["commands"]
    }
    return {
        "connections_opened": after["total_connections_received"]
        - before["total_connections_received"],
        "commands": after["total_commands_processed"]
        - before["total_commands_processed"],
        "cpu_seconds": round(after["cpu_seconds"] - before["cpu_seconds"], 3),
        "by_command": {k: v for k, v in sorted(commands.items()) if v},
    }


@dataclass
class StackConfig:
    server: str = "daphne"
    layer: str = "pubsub"
    workers: int = 0
    interval: float = 1.0  # db_worker's default; wake-ups make it a fallback
    simulated_delay: float = 0.0
    env: dict[str, str] = field(default_factory=dict)

    def label(self) -> str:
        return f"{self.server}+{self.layer}"


class Stack:
    """A fresh database copy, one web process and ``workers`` db_workers."""

    def __init__(self, session: Session, config: StackConfig) -> None:
        self.session = session
        self.config = config
        self.id = uuid.uuid4().hex[:8]
        self.prefix = f"bench{self.id}"
        self.dir = session.tmp / f"stack-{self.id}"
        self.dir.mkdir()
        self.port = free_port()
        self.http_url = f"http://{HOST}:{self.port}"
        self.ws_url = f"ws://{HOST}:{self.port}/ws/payments/"
        self.db_path: Path | None = None
        if session.database_url:
            self.database_url = session.database_url
        elif session.postgres is not None:
            name = f"bench_{self.id}"
            session.postgres.execute(f"CREATE DATABASE {name} TEMPLATE bench_template")
            self.database_url = session.postgres.url(name)
        else:
            self.db_path = self.dir / "db.sqlite3"
            shutil.copyfile(session.template_db, self.db_path)
            self.database_url = f"sqlite:///{self.db_path}"
        self.env = session.env(
            database_url=self.database_url,
            prefix=self.prefix,
            CHANNELS_BACKEND=LAYERS[config.layer],
            PAYMENTS_SIMULATED_DELAY=str(config.simulated_delay),
            **config.env,
        )
        self.web: Proc | None = None
        self.workers: list[Proc] = []
        self._procs: list[Proc] = []

    def __enter__(self) -> Stack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self, name: str, args: list[str]) -> Proc:
        proc = Proc(name, args, self.env, self.dir)
        self._procs.append(proc)
        return proc

    def web_args(self, *extra: str) -> list[str]:
        """The web process's command line, ``extra`` flags before the app."""
        if self.config.server == "daphne":
            # realtime.server: daphne with the product's graceful stop and
            # flags (ping every 45 s, 60 s timeout); 4 KiB frames by default.
            return web_command(self.port, *extra)
        if self.config.server == "uvicorn":
            # uvicorn as deployed ("standard" extras: uvloop, httptools), with
            # the product's WebSocket limits and daphne's ping timings.
            return [
                PY,
                "-m",
                "uvicorn",
                "--host",
                HOST,
                "--port",
                str(self.port),
                "--loop",
                "uvloop",
                "--http",
                "httptools",
                "--ws",
                "websockets",
                "--ws-max-size",
                "4096",
                "--ws-ping-interval",
                "45",
                "--ws-ping-timeout",
                "60",
                "--lifespan",
                "off",
                "--no-access-log",
                "--timeout-graceful-shutdown",
                "5",
                *extra,
                APP,
            ]
        raise ValueError(f"unknown server {self.config.server!r}")

    def start(self) -> None:
        # BENCH_WEB_ARGS: extra server flags for an experiment, e.g.
        # "--ping-interval 600" (see BENCHMARKS.md).
        extra = shlex.split(os.environ.get("BENCH_WEB_ARGS", ""))
        self.web = self._spawn("web", self.web_args(*extra))
        for i in range(self.config.workers):
            self.start_worker(wait=False, index=i)
        self.web.wait_for_port(self.port)
        for worker in self.workers:
            worker.wait_for_output("Starting worker")

    def start_worker(self, *, wait: bool = True, index: int | None = None) -> Proc:
        index = len(self.workers) if index is None else index
        worker = self._spawn(
            f"worker{index}",
            worker_command(
                interval=self.config.interval,
                worker_id=f"bench-{self.id}-{index}",
                startup_delay=False,
            ),
        )
        self.workers.append(worker)
        if wait:
            worker.wait_for_output("Starting worker")
        return worker

    def manage_py(self, *args: str, timeout: float = 120) -> str:
        return subprocess.run(
            [PY, "manage.py", *args],
            cwd=ROOT,
            env=self.env,
            check=True,
            timeout=timeout,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
        ).stdout

    def server_cpu(self) -> dict[str, float]:
        """CPU seconds so far: web, workers (sum), PostgreSQL, Redis.

        ``postgres`` only on the session's private cluster (SQLite runs in
        the web and worker processes; a DATABASE_URL's server is not ours to
        measure). ``redis`` is the whole server's (INFO): on a shared
        REDIS_URL, other clients' commands count too.
        """
        assert self.web is not None
        cpu = {
            "web": self.web.cpu_seconds(),
            "workers": sum(w.cpu_seconds() for w in self.workers if w.alive()),
        }
        postgres = self.session.postgres
        if postgres is not None and not self.session.database_url:
            cpu["postgres"] = postgres.cpu_seconds()
        cpu["redis"] = self.session.redis_cpu_seconds()
        return cpu

    def check_alive(self) -> None:
        for proc in self._procs:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} died:\n{proc.tail()}")

    def stop(self) -> None:
        # Workers first (they push to the web), then the web process.
        for proc in reversed(self._procs):
            with contextlib.suppress(Exception):
                proc.stop()
        if self.session.own_redis:
            with contextlib.suppress(Exception):
                for key in self.session.redis.scan_iter(match=f"{self.prefix}*"):
                    self.session.redis.delete(key)

    @property
    def dialect(self) -> str:
        return "postgres" if self.database_url.startswith("postgres") else "sqlite"

    def sql(self, query: str, *, write: bool = False) -> list[tuple]:
        """Run one statement on the stack's database (results after a run)."""
        if self.dialect == "postgres":
            import psycopg

            with psycopg.connect(self.database_url, autocommit=True) as db:
                cursor = db.execute(query)
                return [] if write else cursor.fetchall()
        import sqlite3

        if self.db_path is None:
            raise RuntimeError("no SQLite file for this stack")
        with contextlib.closing(sqlite3.connect(self.db_path, timeout=30)) as db:
            rows = db.execute(query).fetchall()
            db.commit()
            return rows

    def driver(self, *args: str, timeout: float) -> dict[str, Any]:
        """Run ``python -m bench.driver ARGS`` with the stack's settings."""
        out = self.dir / f"driver-{uuid.uuid4().hex[:6]}.json"
        proc = subprocess.run(
            [PY, "-m", "bench.driver", *args, "--out", str(out)],
            cwd=ROOT,
            env=self.env,
            timeout=timeout,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"driver {args[0]} failed:\n{proc.stderr[-3000:]}")
        return json.loads(out.read_text())


def parse_db_time(value: Any) -> float:
    """Seconds since the epoch for a datetime column (SQLite text, UTC)."""
    from datetime import UTC, datetime

    if isinstance(value, datetime):
        return value.timestamp()
    text = value.replace("T", " ").removesuffix("+00:00").removesuffix("Z")
    fmt = "%Y-%m-%d %H:%M:%S.%f" if "." in text else "%Y-%m-%d %H:%M:%S"
    return datetime.strptime(text, fmt).replace(tzinfo=UTC).timestamp()


@contextlib.contextmanager
def sampling_cpu(proc: Proc) -> Iterator[dict[str, float]]:
    """Measure a process's CPU seconds and wall time over a block."""
    result: dict[str, float] = {}
    cpu0, t0 = proc.cpu_seconds(), time.monotonic()
    try:
        yield result
    finally:
        result["cpu_seconds"] = proc.cpu_seconds() - cpu0
        result["wall_seconds"] = time.monotonic() - t0
        result["cpu_percent"] = 100 * result["cpu_seconds"] / result["wall_seconds"]


class EmbeddedPostgres(PostgresCluster):
    """The session's private cluster, whose CPU the benchmarks count."""

    def cpu_seconds(self) -> float:
        """CPU seconds of the cluster so far: the postmaster and its children.

        Children that exited (a closed connection's backend, an autovacuum
        worker) are in the postmaster's reaped-children times; the live ones
        are measured before it, so one that exits between the two reads is
        counted twice rather than lost.
        """
        root = psutil.Process(self.pid)
        total = 0.0
        for child in root.children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                times = child.cpu_times()
                total += times.user + times.system
        times = root.cpu_times()
        return (
            total
            + times.user
            + times.system
            + times.children_user
            + times.children_system
        )
