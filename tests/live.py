"""Real daphne and db_worker processes for the end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

REPO_ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


def free_port() -> int:
    """Return a TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


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


class LiveProcess:
    """One child process of this interpreter, its output kept in a file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str]) -> None:
        self.name = name
        # Closed in stop(); the child writes to it.
        self._log = tempfile.NamedTemporaryFile(
            prefix=f"e2e-{name}-", suffix=".log", delete=False
        )
        self.log_path = Path(self._log.name)
        self._final_output: str | None = None
        #: Whether stop() had to SIGKILL it after SIGTERM was ignored.
        self.killed = False
        self.popen = subprocess.Popen(
            [sys.executable, *args],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def output(self) -> str:
        if self._final_output is not None:
            return self._final_output
        # The child writes to the file itself; nothing is buffered here.
        return self.log_path.read_text(errors="replace")

    def report(self) -> str:
        return (
            f"----- {self.name} (pid {self.popen.pid}, "
            f"returncode {self.returncode}{', killed' if self.killed else ''}) "
            f"-----\n{self.output()}"
        )

    def wait_for_port(self, port: int, timeout: float = START_TIMEOUT) -> None:
        """Return once HOST:port accepts connections; fail if the process exits."""
        deadline = time.monotonic() + timeout
        while True:
            if self.returncode is not None:
                raise RuntimeError(
                    f"{self.name} exited while starting\n{self.report()}"
                )
            try:
                with socket.create_connection((HOST, port), timeout=0.5):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{self.name} did not listen on {HOST}:{port} within "
                        f"{timeout} s\n{self.report()}"
                    ) from None
                time.sleep(0.05)  # polling a port, not synchronising on an event

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, wait, SIGKILL if it hangs; keep the output, drop the file."""
        try:
            if self.popen.poll() is None:
                self.popen.send_signal(signal.SIGTERM)
                try:
                    self.popen.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self.killed = True
                    self.popen.kill()
                    self.popen.wait(timeout=timeout)
        finally:
            self._log.close()
            self._final_output = self.output()
            self.log_path.unlink(missing_ok=True)
        return self.popen.returncode


@dataclass(frozen=True)
class LiveStack:
    http_url: str
    ws_url: str
    web: LiveProcess
    worker: LiveProcess

    @property
    def processes(self) -> tuple[LiveProcess, LiveProcess]:
        return (self.web, self.worker)


def process_env(**overrides: str) -> dict[str, str]:
    """Return this process's environment with the given variables replaced."""
    env = {**os.environ, **overrides}
    # Never inherit the autoreloader's marker from a parent process.
    env.pop("RUN_MAIN", None)
    return env


@contextmanager
def live_stack(
    *, database_url: str, redis_url: str, channels_prefix: str, **extra_env: str
) -> Iterator[LiveStack]:
    """Run daphne (config.asgi) and db_worker until the block ends."""
    port = free_port()
    env = process_env(
        DJANGO_SETTINGS_MODULE="config.settings.test",
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        CHANNELS_PREFIX=channels_prefix,
        PYTHONUNBUFFERED="1",
        **extra_env,
    )
    with ExitStack() as stack:
        web = LiveProcess(
            "daphne",
            [
                "-m",
                "realtime.server",
                "-b",
                HOST,
                "-p",
                str(port),
                "config.asgi:application",
            ],
            env,
        )
        stack.callback(web.stop)
        worker = LiveProcess(
            "db_worker",
            [
                "manage.py",
                "db_worker",
                "--no-reload",
                "--interval",
                "0.05",
                "--no-startup-delay",
            ],
            env,
        )
        stack.callback(worker.stop)
        web.wait_for_port(port)
        yield LiveStack(
            http_url=f"http://{HOST}:{port}",
            ws_url=f"ws://{HOST}:{port}",
            web=web,
            worker=worker,
        )
