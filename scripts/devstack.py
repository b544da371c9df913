"""Run web, worker and an embedded channel layer together until Ctrl-C.

Started by scripts/run inside the project's virtualenv. Settings default to
config.settings.local (SQLite file, debug); any variable from the README's
settings table can be set to change that.
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
        processes = [
            Process(
                "web", web_command(PORT, host=HOST), env, log=False, new_session=True
            ),
            Process("worker", worker_command(), env, log=False, new_session=True),
        ]
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
        try:
            while not stopping and all(p.alive() for p in processes):
                time.sleep(0.5)
        finally:
            print("\nStopping web and worker…", flush=True)
            stop_all(processes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
