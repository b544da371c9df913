"""Real daphne and db_worker processes for the end-to-end and fault tests.

``live_stack`` runs one web process and one worker on a free port; the
``LiveStack`` it yields can also kill, stop and start either of them again on
the same port and environment, so tests can crash and restart the service.
The processes and their command lines are scripts/processes.py's, the ones
scripts/run and the benchmarks start.
"""

from __future__ import annotations

import asyncio
import os
import re
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote

from django.conf import settings
from django.db import connection

from payments.gateways.simulated import SimulatedGateway
from scripts.processes import (
    HOST,
    ROOT,
    START_TIMEOUT,
    STOP_TIMEOUT,
    Process,
    free_port,
    web_command,
    worker_command,
)

if TYPE_CHECKING:
    from payments.gateways import GatewayResult
    from payments.models import Payment

REPO_ROOT = ROOT


def rss_bytes(pid: int) -> int:
    """Return a process's resident set size (VmRSS in /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def database_url(settings_dict: dict[str, Any]) -> str:
    """Return a DATABASE_URL (django-environ) for the database in settings_dict."""
    engine, name = settings_dict["ENGINE"], str(settings_dict["NAME"])
    if engine == "django.db.backends.sqlite3":
        if name == ":memory:" or name.startswith("file:"):
            raise RuntimeError(
                "the test database is in memory; other processes cannot open it "
                "(config.settings.test must give SQLite a TEST NAME file)"
            )
        # An absolute path after "sqlite:///" gives the four slashes it needs.
        return f"sqlite:///{Path(name).resolve()}"
    if engine == "django.db.backends.postgresql":
        auth = quote(settings_dict.get("USER") or "", safe="")
        if settings_dict.get("PASSWORD"):
            auth += ":" + quote(settings_dict["PASSWORD"], safe="")
        host = settings_dict.get("HOST") or "localhost"
        port = settings_dict.get("PORT") or 5432
        return f"postgres://{auth}@{host}:{port}/{quote(name, safe='')}"
    raise RuntimeError(f"no DATABASE_URL form for the {engine} engine")


def process_env(**overrides: str) -> dict[str, str]:
    """Return this process's environment with the given variables replaced."""
    env = {**os.environ, **overrides}
    # Never inherit the autoreloader's marker from a parent process.
    env.pop("RUN_MAIN", None)
    # Set for the browser tests' own process only (tests/browser.py); the
    # servers keep Django's async-safety checks.
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    return env


class LiveStack:
    """A web process and a worker sharing one environment and one port.

    ``web`` and ``worker`` are the current processes; each restart replaces
    one, and ``history`` keeps every process started, for reports.
    """

    def __init__(self, *, port: int, env: dict[str, str]) -> None:
        self.port = port
        self.env = env
        # Seconds between the worker's polls when no wake-up comes.
        self.worker_interval = "0.05"
        self.worker_verbosity = 1
        self.redis_url = env["REDIS_URL"]
        self.channels_prefix = env["CHANNELS_PREFIX"]
        self.http_url = f"http://{HOST}:{port}"
        self.ws_url = f"ws://{HOST}:{port}"
        self.history: list[Process] = []
        self._started = {"web": 0, "worker": 0}
        self.web: Process | None = None
        self.worker: Process | None = None
        self.extra_workers: list[Process] = []
        # Process names are worker ids, and a worker's heartbeat is keyed
        # by its id in the shared database: a stack opened beside another
        # names its processes apart, or its worker takes the other's lease.
        self.tag = f"@{port}" if LiveStack._open else ""
        LiveStack._open.add(port)

    _open: ClassVar[set[int]] = set()

    @property
    def processes(self) -> tuple[Process, ...]:
        """The current web and worker processes."""
        return tuple(p for p in (self.web, self.worker) if p is not None)

    def _name(self, role: str) -> str:
        self._started[role] += 1
        count = self._started[role]
        return (
            {"web": "daphne", "worker": "db_worker"}[role]
            + (f"-{count}" if count > 1 else "")
            + self.tag
        )

    # Web --------------------------------------------------------------------

    def start_web(self, *, wait: bool = True) -> Process:
        """Start daphne on the stack's port (again); return once it listens."""
        if self.web is not None and self.web.returncode is None:
            raise RuntimeError(f"{self.web.name} is still running")
        self.web = Process(self._name("web"), web_command(self.port), self.env)
        self.history.append(self.web)
        if wait:
            self.web.wait_for_port(self.port)
        return self.web

    def kill_web(self) -> int:
        """SIGKILL the web process: its sockets drop without a close frame."""
        assert self.web is not None
        return self.web.kill()

    def stop_web(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM the web process and wait for it (SIGKILL if it hangs)."""
        assert self.web is not None
        return self.web.stop(timeout)

    def restart_web(self, *, kill: bool) -> Process:
        """Kill (or stop) the web process, then start a new one on the port."""
        if kill:
            self.kill_web()
        else:
            self.stop_web()
        return self.start_web()

    # Worker -----------------------------------------------------------------

    def start_worker(self, *, wait: bool = False) -> Process:
        """Start a db_worker; with ``wait``, return once it polls for tasks.

        Its worker id is its process name, so tests can tell which worker
        claimed a task (DBTaskResult.worker_ids).
        """
        if self.worker is not None and self.worker.returncode is None:
            raise RuntimeError(f"{self.worker.name} is still running")
        self.worker = self._spawn_worker(wait=wait)
        return self.worker

    def start_extra_worker(self, *, wait: bool = False) -> Process:
        """Start one more db_worker beside ``worker`` (several workers share a queue).

        Kept in ``extra_workers`` and ``history``; close() stops it.
        """
        worker = self._spawn_worker(wait=wait)
        self.extra_workers.append(worker)
        return worker

    def _spawn_worker(self, *, wait: bool) -> Process:
        name = self._name("worker")
        worker = Process(
            name,
            worker_command(
                interval=self.worker_interval,
                worker_id=name,
                startup_delay=False,
                verbosity=self.worker_verbosity,
            ),
            self.env,
        )
        self.history.append(worker)
        if wait:
            worker.wait_for_output(f"worker_id={name}")
        return worker

    def kill_worker(self) -> int:
        """SIGKILL the worker: a task in hand is abandoned mid-way."""
        assert self.worker is not None
        return self.worker.kill()

    def stop_worker(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM the worker and wait for it (SIGKILL if it hangs)."""
        assert self.worker is not None
        return self.worker.stop(timeout)

    def restart_worker(self, *, kill: bool) -> Process:
        """Kill (or stop) the worker, then start a new one."""
        if kill:
            self.kill_worker()
        else:
            self.stop_worker()
        return self.start_worker()

    def close(self) -> None:
        """Stop whatever still runs, keeping every process's output."""
        LiveStack._open.discard(self.port)
        errors = []
        for process in reversed(self.history):
            try:
                process.stop()
            except Exception as exc:  # stop the others all the same
                errors.append(exc)
        if errors:
            raise errors[0]

    def report(self) -> str:
        return "\n".join(p.report() for p in self.history)


@contextmanager
def live_stack(
    *,
    database_url: str,
    redis_url: str,
    channels_prefix: str,
    worker_interval: str = "0.05",
    worker_verbosity: int = 1,
    worker: bool = True,
    **extra_env: str,
) -> Iterator[LiveStack]:
    """Run daphne (config.asgi) and db_worker until the block ends.

    With ``worker=False`` only the web process runs (tests of the server's
    own edges, which never reach a job).
    """
    env = process_env(
        DJANGO_SETTINGS_MODULE="config.settings.test",
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        CHANNELS_PREFIX=channels_prefix,
        PYTHONUNBUFFERED="1",
        **extra_env,
    )
    stack = LiveStack(port=free_port(), env=env)
    stack.worker_interval = worker_interval
    stack.worker_verbosity = worker_verbosity
    try:
        stack.start_web(wait=False)
        if worker:
            stack.start_worker()
        stack.web.wait_for_port(stack.port)
        yield stack
    finally:
        stack.close()


@contextmanager
def checked_stack(channels_prefix: str, **options: Any) -> Iterator[LiveStack]:
    """Run web and worker processes on the test database; check how they ended.

    The test database and REDIS_URL of this pytest process, the channel
    layer under ``channels_prefix`` (the isolated_channel_layer fixture).
    """
    stack: LiveStack | None = None
    try:
        with live_stack(
            database_url=database_url(connection.settings_dict),
            redis_url=settings.REDIS_URL,
            channels_prefix=channels_prefix,
            **options,
        ) as stack:
            yield stack
            # Checked before stopping: a process that died during the test
            # is a bug.
            crashed = [p for p in stack.processes if p.returncode is not None]
    except Exception:
        # The test failed in the block (a fixture's test never raises here):
        # what every process printed, a killed one too, up to its stop, for
        # pytest to show with the failure.
        if stack is not None:
            print(stack.report())
        raise
    for process in stack.processes:
        # Shown by pytest only when the test fails.
        print(process.report())
    assert all(p.returncode is not None for p in stack.processes), "not stopped"
    assert not any(p.killed for p in stack.processes), "ignored SIGTERM"
    assert not crashed, "exited during the test: " + ", ".join(
        f"{p.name} ({p.returncode})" for p in crashed
    )
    # An error the client never saw (a consumer crash after the last frame, a
    # failed task) still shows in the process's log.
    assert not [p.name for p in stack.processes if "Traceback" in p.output()]


@contextmanager
def started_stacks(
    channels_prefix: str, **defaults: Any
) -> Iterator[Callable[..., LiveStack]]:
    """Yield ``start(**options)``: a new live stack on the test database per call.

    Each stack gets live_stack's ``options`` over ``defaults``: the test
    database, the tests' Redis (unless ``redis_url`` says another) and the
    channel layer under ``channels_prefix``. Once the block ends and before
    the stacks stop, no process may have exited that the test did not end
    itself; after, none may have logged a traceback, but the web processes
    of a stack started with ``web_tracebacks=True``. The stacks stop before
    transactional_db flushes the tables under them.
    """
    stacks: list[tuple[LiveStack, bool]] = []
    with ExitStack() as exits:

        def start(*, web_tracebacks: bool = False, **options: Any) -> LiveStack:
            stack = exits.enter_context(
                live_stack(
                    **{
                        "database_url": database_url(connection.settings_dict),
                        "redis_url": settings.REDIS_URL,
                        "channels_prefix": channels_prefix,
                        **defaults,
                        **options,
                    }
                )
            )
            stacks.append((stack, web_tracebacks))
            return stack

        yield start
        died = [
            p.name
            for stack, _ in stacks
            for p in stack.history
            if p.returncode is not None and not p.ended_by_test
        ]
    for stack, _ in stacks:
        print(stack.report())  # shown by pytest only when the test fails
    assert not died, f"exited on their own during the test: {died}"
    logs = [
        p
        for stack, web_tracebacks in stacks
        for p in stack.history
        if not web_tracebacks or p.name.startswith("db_worker")
    ]
    assert not [p.name for p in logs if "Traceback" in p.output()], "tracebacks"


class RoundRobinProxy:
    """A TCP proxy sending each new connection to the next backend in turn.

    Not sticky: a client's next connection (a poll, a POST, the WebSocket
    upgrade) may land on another backend, as behind a plain L4 balancer.
    ``first_lines[port]`` keeps the first request line of every connection
    each backend got. A backend that refuses is skipped for the next one.
    """

    def __init__(self, backends: list[int]) -> None:
        self.backends = backends
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.first_lines: dict[int, list[str]] = {port: [] for port in backends}
        self._count = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> RoundRobinProxy:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, HOST, self.port), self._loop
        ).result(START_TIMEOUT)
        return self

    def __exit__(self, *exc_info: object) -> None:
        async def stop() -> None:
            self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(STOP_TIMEOUT)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(STOP_TIMEOUT)

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        start = self._count
        self._count += 1
        for attempt in range(len(self.backends)):
            backend = self.backends[(start + attempt) % len(self.backends)]
            try:
                up_reader, up_writer = await asyncio.open_connection(HOST, backend)
                break
            except OSError:
                continue  # down: the next one, as a balancer's health check would
        else:
            writer.close()
            return
        first = await reader.read(65536)
        self.first_lines[backend].append(first.split(b"\r\n", 1)[0].decode("latin-1"))
        up_writer.write(first)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


class GatedChargeGateway(SimulatedGateway):
    """The simulated gateway, answering a charge only when the test opens a gate.

    The charge is made (its SimulatedCharge row committed), then the worker
    waits for a token on the Redis list ``PAYMENTS_TEST_CHARGE_GATE`` at
    ``PAYMENTS_TEST_GATE_REDIS_URL`` (ChargeGate), at most a minute: the test
    decides how long a worker holds a charged payment whose charge is not
    yet recorded.
    """

    def charge(self, *, payment: Payment) -> GatewayResult:
        import redis

        result = super().charge(payment=payment)
        # redis-py 8 reads with a 5 s socket timeout by default, shorter than
        # a test may keep the gate shut; the BLPOP's own 60 s bounds the wait.
        client = redis.Redis.from_url(
            os.environ["PAYMENTS_TEST_GATE_REDIS_URL"], socket_timeout=None
        )
        try:
            client.blpop([os.environ["PAYMENTS_TEST_CHARGE_GATE"]], timeout=60)
        finally:
            client.close()
        return result


class GatedOutcomeGateway(SimulatedGateway):
    """The simulated gateway, pending until the test opens a gate, then settled.

    Charges are made as usual, but every answer is ``pending`` (ask again in
    0.1 s) until the key ``PAYMENTS_TEST_OUTCOME_GATE`` exists on the Redis
    at ``PAYMENTS_TEST_GATE_REDIS_URL`` (OutcomeGate); from then on the
    simulated outcome comes. The test decides when an outcome is committed,
    not a delay it must outrun.
    """

    def charge(self, *, payment: Payment) -> GatewayResult:
        return self._gated(super().charge(payment=payment))

    def retrieve(self, *, payment: Payment) -> GatewayResult:
        return self._gated(super().retrieve(payment=payment))

    def _gated(self, result: GatewayResult) -> GatewayResult:
        import redis

        from payments.gateways import GatewayResult, Outcome

        with redis.Redis.from_url(os.environ["PAYMENTS_TEST_GATE_REDIS_URL"]) as gate:
            if gate.exists(os.environ["PAYMENTS_TEST_OUTCOME_GATE"]):
                return result
        return GatewayResult(Outcome.PENDING, retry_after=0.1)


class OutcomeGate:
    """A gate of GatedOutcomeGateway: ``env`` puts a stack behind it; open() it.

    The key is on the suite's Redis, whichever Redis the stack uses (a test
    may stop the stack's own).
    """

    def __init__(self) -> None:
        self.key = f"test-outcome-gate-{uuid.uuid4().hex}"
        self.env = {
            "PAYMENTS_GATEWAY": "tests.live.GatedOutcomeGateway",
            "PAYMENTS_TEST_OUTCOME_GATE": self.key,
            "PAYMENTS_TEST_GATE_REDIS_URL": settings.REDIS_URL,
            "PAYMENTS_SIMULATED_DELAY": "0",
        }

    def open(self) -> None:
        """Let every outcome behind the gate come, from now on."""
        import redis

        with redis.Redis.from_url(settings.REDIS_URL) as client:
            client.set(self.key, b"open", ex=3600)


class ChargeGate:
    """A gate of GatedChargeGateway: ``env`` puts a stack behind it; open() it.

    Each open lets that many charges through, waiting or still to come. The
    list is on the suite's Redis, as OutcomeGate's key.
    """

    def __init__(self) -> None:
        self.key = f"test-charge-gate-{uuid.uuid4().hex}"
        self.env = {
            "PAYMENTS_GATEWAY": "tests.live.GatedChargeGateway",
            "PAYMENTS_TEST_CHARGE_GATE": self.key,
            "PAYMENTS_TEST_GATE_REDIS_URL": settings.REDIS_URL,
        }

    def open(self, charges: int = 1) -> None:
        import redis

        with redis.Redis.from_url(settings.REDIS_URL) as client:
            client.rpush(self.key, *[b"open"] * charges)


class ChargePendingGateway(SimulatedGateway):
    """The simulated gateway whose charge always answers ``pending`` (0.1 s).

    The charge is made as usual; its outcome comes from the retrieve that
    follows, so each payment gets exactly one (with a delay of 0), however
    long a write waited for SQLite's lock before the charge answered.
    """

    def charge(self, *, payment: Payment) -> GatewayResult:
        from payments.gateways import GatewayResult, Outcome

        super().charge(payment=payment)
        return GatewayResult(Outcome.PENDING, retry_after=0.1)


HAPROXY = "/usr/sbin/haproxy"
HAPROXY_CFG = REPO_ROOT / "deploy" / "haproxy.cfg"


class HAProxy:
    """Debian's HAProxy with deploy/haproxy.cfg, in front of local web processes.

    The deployment's file as it is, but for its ``server-template`` line
    (Docker's DNS names in compose), replaced by one ``server webN`` line per
    port given. ``X-Served-By`` is on (HAPROXY_SERVED_BY): each response
    names the web process that served it. HAProxy logs one line per request
    to its stdout (httplog: ``backend/server`` and the request line), kept in
    ``process.output()``.
    """

    def __init__(self, backends: list[int], *, http_check: bool = True) -> None:
        self.backends = backends
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.ws_url = f"ws://{HOST}:{self.port}"
        self.names = {port: f"web{i}" for i, port in enumerate(backends, 1)}
        config = HAPROXY_CFG.read_text()
        servers = "".join(
            f"    server {name} {HOST}:{port}\n" for port, name in self.names.items()
        )
        config, replaced = re.subn(r"(?m)^\s*server-template .*\n", servers, config)
        assert replaced == 1, "deploy/haproxy.cfg: one server-template line expected"
        # Checks every 0.5 s: a killed web is out of rotation within a second.
        config = config.replace("inter 2s fall 2 rise 2", "inter 500ms fall 2 rise 1")
        if not http_check:
            config = re.sub(r"(?m)^\s*(option httpchk|http-check ).*\n", "", config)
        self._config = tempfile.NamedTemporaryFile(
            "w", prefix="haproxy-", suffix=".cfg", delete=False
        )
        self._config.write(config)
        self._config.close()
        self.config_path = Path(self._config.name)
        self.process: Process | None = None

    def __enter__(self) -> HAProxy:
        env = process_env(
            HAPROXY_BIND=f"{HOST}:{self.port}",
            HAPROXY_CHECK_HOST="localhost",
            HAPROXY_SERVED_BY="1",
        )
        self.process = Process(
            "haproxy", [HAPROXY, "-db", "-f", str(self.config_path)], env
        )
        self.process.wait_for_port(self.port)
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            if self.process is not None:
                self.process.stop()
                print(self.process.report())  # shown by pytest when a test fails
        finally:
            self.config_path.unlink(missing_ok=True)

    def log_lines(self) -> list[str]:
        assert self.process is not None
        return self.process.output().splitlines()
