"""CPU per part of ``POST /api/payments/``, in process, through config.asgi.

``python -m bench.create_path --requests 2000`` with the environment of a
stack (production settings; DATABASE_URL, REDIS_URL and the prefixes set):
the creates go through the ASGI application as daphne would call it, and
each part (middleware, DRF's steps, the idempotency check, the throttles,
each INSERT, the enqueue, the commit, the wake-up, logging) is timed with
the request thread's CPU clock around it. Parts nest: "self" is a part's
own time, its timed parts excluded. The total is the process's CPU per
create (every thread's, the event loop's too), daphne's HTTP work excluded.

``--key`` sends an Idempotency-Key (a random UUID v4) as the product's
client does; ``--plain`` measures the total only, no timers;
``--async-view`` serves the create from an async view (``async_view``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from functools import wraps
from typing import Any

_stack: list[list[float]] = []
_incl: dict[str, float] = defaultdict(float)
_self: dict[str, float] = defaultdict(float)
_calls: dict[str, int] = defaultdict(int)


def _timed(name: str | Callable[..., str], fn: Callable[..., Any]) -> Callable:
    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        label = name(*args) if callable(name) else name
        frame = [time.thread_time(), 0.0]
        _stack.append(frame)
        try:
            return fn(*args, **kwargs)
        finally:
            _stack.pop()
            elapsed = time.thread_time() - frame[0]
            _incl[label] += elapsed
            _self[label] += elapsed - frame[1]
            _calls[label] += 1
            if _stack:
                _stack[-1][1] += elapsed

    wrapper.__wrapped_timed__ = True  # type: ignore[attr-defined]
    return wrapper


def _patch(owner: Any, attr: str, name: str | Callable[..., str]) -> None:
    original = getattr(owner, attr)
    setattr(owner, attr, _timed(name, original))


def instrument() -> None:
    """Wrap every part of a create in a timer (after django.setup())."""
    import logging

    from django.conf import settings
    from django.db.backends.base.base import BaseDatabaseWrapper
    from django.db.backends.utils import CursorWrapper
    from django.db.models import Model
    from django.db.transaction import Atomic
    from django.utils.module_loading import import_string
    from django_tasks_db.backend import DatabaseBackend
    from rest_framework.parsers import JSONParser
    from rest_framework.renderers import JSONRenderer
    from rest_framework.serializers import Serializer
    from rest_framework.views import APIView

    from config.handlers import SyncStackASGIHandler
    from payments import services
    from payments.api import apis, idempotency, throttling
    from payments.worker import wakeup

    _patch(SyncStackASGIHandler, "get_response", "request (thread)")
    for path in settings.MIDDLEWARE:
        cls = import_string(path)
        _patch(cls, "__call__", f"mw {cls.__name__}")
    _patch(APIView, "initialize_request", "drf initialize_request")
    _patch(APIView, "perform_authentication", "drf authentication")
    _patch(APIView, "check_permissions", "drf permissions")
    _patch(APIView, "check_throttles", "drf throttles")
    if "check_throttles" in vars(apis.BasePaymentCreateApi):
        _patch(apis.BasePaymentCreateApi, "check_throttles", "drf throttles")
    _patch(
        throttling.WindowCounterMixin,
        "allow_request",
        lambda self, *a: f"throttle {type(self).__name__}",
    )
    _patch(APIView, "finalize_response", "drf finalize_response")
    _patch(JSONParser, "parse", "drf JSON parse")
    _patch(JSONRenderer, "render", "drf JSON render")
    _patch(Serializer, "is_valid", "serializer is_valid")
    _patch(apis.BasePaymentCreateApi, "render", "render payment body")
    _patch(idempotency, "idempotent_call", "idempotency idempotent_call")
    _patch(idempotency, "idempotency_key_validate", "idempotency key_validate")
    _patch(idempotency, "request_fingerprint", "idempotency fingerprint")
    _patch(services, "payment_create", "services.payment_create")
    _patch(Model, "save", lambda self, *a: f"save {type(self).__name__}")
    _patch(DatabaseBackend, "enqueue", "tasks enqueue")
    _patch(wakeup, "wake_workers", "wake_workers publish")
    _patch(wakeup, "on_task_enqueued", "task_enqueued signal")
    _patch(CursorWrapper, "execute", "sql execute")
    _patch(BaseDatabaseWrapper, "commit", "db commit")
    _patch(BaseDatabaseWrapper, "ensure_connection", "db ensure_connection")
    _patch(BaseDatabaseWrapper, "close", "db close (to pool)")
    _patch(
        BaseDatabaseWrapper,
        "close_if_unusable_or_obsolete",
        "db close_if_unusable_or_obsolete",
    )
    _patch(BaseDatabaseWrapper, "run_and_clear_commit_hooks", "on_commit hooks")
    _patch(Atomic, "__enter__", "atomic enter")
    _patch(Atomic, "__exit__", "atomic exit")
    _patch(logging.StreamHandler, "emit", "log emit")
    # The idempotency view passes perform as a closure; services.payment_create
    # is looked up on the module at call time, so the wrapper above is used.


def async_view() -> None:
    """Serve the create from an async view: the sync one in sync_to_async.

    What an async view costs at the least under config.handlers, whose
    chain is sync: Django calls it with async_to_sync, and its database
    work comes back to the request thread with sync_to_async (once here;
    an async ORM call per query would hop once each).
    """
    from asgiref.sync import markcoroutinefunction, sync_to_async
    from django.urls import get_resolver

    match = get_resolver().resolve("/api/payments/")
    sync_view = match.func

    @wraps(sync_view)  # csrf_exempt and the rest, as DRF set them
    async def view(request: Any, *args: Any, **kwargs: Any) -> Any:
        return await sync_to_async(sync_view)(request, *args, **kwargs)

    markcoroutinefunction(view)
    patterns = list(get_resolver().url_patterns)
    while patterns:
        pattern = patterns.pop()
        if getattr(pattern, "callback", None) is sync_view:
            pattern.callback = view
        patterns.extend(getattr(pattern, "url_patterns", []))


async def run(count: int, key: bool) -> dict[str, Any]:
    from bench.driver import _asgi_call

    body = json.dumps({"amount": 1000, "currency": "usd"}).encode()

    async def create() -> None:
        headers = [(b"idempotency-key", str(uuid.uuid4()).encode())] if key else []
        status, content, _ = await _asgi_call("POST", "/api/payments/", body, headers)
        assert status == 202, (status, content)

    for _ in range(max(20, count // 10)):
        await create()
    _incl.clear()
    _self.clear()
    _calls.clear()
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(count):
        await create()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    parts = {
        name: {
            "incl_ms": round(1000 * _incl[name] / count, 4),
            "self_ms": round(1000 * _self[name] / count, 4),
            "calls": round(_calls[name] / count, 2),
        }
        for name in sorted(_incl, key=lambda n: -_incl[n])
    }
    return {
        "requests": count,
        "key": key,
        "cpu_ms_per_create": round(1000 * cpu / count, 4),
        "wall_ms_per_create": round(1000 * wall / count, 4),
        "parts": parts,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.create_path")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--key", action="store_true")
    parser.add_argument("--plain", action="store_true")
    parser.add_argument("--async-view", action="store_true")
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.production")
    import django

    django.setup(set_prefix=False)
    import config.asgi  # noqa: F401 - the application, as daphne loads it

    if args.async_view:
        async_view()
    if not args.plain:
        instrument()
    result = asyncio.run(run(args.requests, args.key))
    text = json.dumps(result, indent=1)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text)
    else:
        sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
