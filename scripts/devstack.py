"""Run web, worker and an embedded channel layer together until Ctrl-C.

Started by scripts/run inside the project's virtualenv. Settings default to
config.settings.local (SQLite file, debug); any variable from the README's
settings table can be set to change that.

A worker that lost its heartbeat lease exits with LEASE_LOST and is started
again (after a backoff); web and Valkey stay up. Any other exit of web or
worker stops the stack, and this script then exits with 1.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from processes import PY, ROOT, Process, stop_all, valkey, web_command, worker_command

HOST = os.environ.get("HOST", "127.0.0.1")
PORT = os.environ.get("PORT", "8000")
#: payments.worker.heartbeat.LEASE_LOST_EXIT, its exit when renewals came late
#: or were refused (tests/test_devstack.py has a real worker lose its lease):
#: the job in hand is left to recovery, and a new process claims a new lease.
LEASE_LOST = 70
# Seconds between a lost lease and the worker's restart: doubling from the
# first to the most, back to the first after a run of STABLE_AFTER. A
# database away for long then costs a start every 30 s, not a restart loop.
FIRST_DELAY = 1.0
MOST_DELAY = 30.0
STABLE_AFTER = 60.0

ENSURE_ADMIN = """
from django.contrib.auth import get_user_model
User = get_user_model()
if not User.objects.filter(is_superuser=True).exists():
    User.objects.create_superuser("admin", "admin@localhost", "admin")
    print("created")
"""


def manage(*args: str, env: dict[str, str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PY, "manage.py", *args], cwd=ROOT, env=env, check=True, **kwargs
    )


class Backoff:
    """The delay before each restart of a worker that keeps losing its lease."""

    def __init__(
        self,
        first: float = FIRST_DELAY,
        most: float = MOST_DELAY,
        stable_after: float = STABLE_AFTER,
    ) -> None:
        self.first, self.most, self.stable_after = first, most, stable_after
        self._next = first

    def after(self, ran_for: float) -> float:
        """The delay after a run of ``ran_for`` seconds; the next one doubles."""
        if ran_for >= self.stable_after:
            self._next = self.first
        delay = self._next
        self._next = min(2 * delay, self.most)
        return delay


def main() -> int:
    env = {**os.environ}
    env.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")
    env.setdefault("PYTHONUNBUFFERED", "1")
    # Ctrl-C reaches the whole process group; let this process do the stopping.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with valkey() as url:
        env["REDIS_URL"] = url
        manage("migrate", "--noinput", "-v", "0", env=env)
        created = manage(
            "shell", "-c", ENSURE_ADMIN, env=env, capture_output=True, text=True
        ).stdout.strip()

        # Their own process group: Ctrl-C reaches this process only, and
        # stop_all() sends them SIGTERM. Their output goes to this terminal.
        def start(name: str, command: list[str]) -> Process:
            return Process(name, command, env, log=False, new_session=True)

        web = start("web", web_command(PORT, host=HOST))
        worker = start("worker", worker_command())
        worker_started = time.monotonic()
        base = f"http://{HOST}:{PORT}"
        login = (
            "user admin, password admin (created now; change it with "
            "'manage.py changepassword admin')"
            if created
            else "your superuser (new one: .venv/bin/python manage.py createsuperuser)"
        )
        print(
            "\n"
            f"  Page       {base}/  (pay and watch it live; polling vs push)\n"
            f"  API        {base}/api/payments/\n"
            f"  WebSocket  ws://{HOST}:{PORT}/ws/payments/\n"
            f"  Admin      {base}/admin/  log in as {login}\n"
            f"  Redis      {url} (channel layer)\n"
            "  Ctrl-C stops everything.\n",
            flush=True,
        )
        stopping = False

        def on_signal(signum: int, frame: object) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        backoff = Backoff()
        restart_at: float | None = None
        ended: Process | None = None
        try:
            while not stopping:
                if not web.alive():
                    ended = web
                    break
                if restart_at is None and not worker.alive():
                    if worker.returncode != LEASE_LOST:
                        ended = worker
                        break
                    delay = backoff.after(time.monotonic() - worker_started)
                    print(
                        f"\nThe worker lost its lease (exit {LEASE_LOST}); "
                        f"starting it again in {delay:g} s.",
                        flush=True,
                    )
                    restart_at = time.monotonic() + delay
                if restart_at is not None and time.monotonic() >= restart_at:
                    worker = start("worker", worker_command())
                    worker_started = time.monotonic()
                    restart_at = None
                    print(f"Worker started again (pid {worker.pid}).", flush=True)
                time.sleep(0.5)  # polling children, as a supervisor does
        finally:
            if ended is not None:
                print(f"\nThe {ended.name} exited ({ended.returncode}).", flush=True)
            print("\nStopping web and worker…", flush=True)
            stop_all([web, worker])
    return 0 if ended is None else 1


if __name__ == "__main__":
    sys.exit(main())
