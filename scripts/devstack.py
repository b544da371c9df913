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
from pathlib import Path

from embedded import redis_url

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from realtime.server import WEB_FLAGS

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
HOST = os.environ.get("HOST", "127.0.0.1")
PORT = os.environ.get("PORT", "8000")
APP = "config.asgi:application"

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


def stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main() -> int:
    env = {**os.environ}
    env.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")
    env.setdefault("PYTHONUNBUFFERED", "1")
    # Ctrl-C reaches the whole process group; let this process do the stopping.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with redis_url() as url:
        env["REDIS_URL"] = url
        manage("migrate", "--noinput", "-v", "0", env=env)
        created = manage(
            "shell", "-c", ENSURE_ADMIN, env=env, capture_output=True, text=True
        ).stdout.strip()

        def child(args: list[str]) -> subprocess.Popen:
            # Children ignore SIGINT from the terminal; stop() sends SIGTERM.
            return subprocess.Popen(
                args,
                cwd=ROOT,
                env=env,
                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
            )

        web = [PY, "-m", "realtime.server", *WEB_FLAGS, "-b", HOST, "-p", PORT, APP]
        processes = [
            child(web),
            child([PY, "manage.py", "db_worker", "--no-reload"]),
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
            while not stopping and all(p.poll() is None for p in processes):
                time.sleep(0.5)
        finally:
            print("\nStopping web and worker…", flush=True)
            stop(processes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
