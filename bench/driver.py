"""The sending side of the benchmarks, run in its own process with the stack's
settings (``python -m bench.driver COMMAND ... --out FILE``).

- ``transitions``: play the worker. Create payments bound to the given
  sockets, then move each pending → processing → succeeded with
  ``payments.services``, exactly the worker's code path (transaction, then
  on_commit → ``realtime.notify`` → ``group_send``). The
  moment the commit returned is recorded (entry of ``services.payment_notify``, the
  on_commit callback), plus the start and end of the channel-layer send.
- ``fanout``: push payment-status messages to socket groups (or one payment
  group) as fast as a persistent event loop can, through the configured
  channel layer.
- ``micro``: micro-benchmarks of the send path: DRF serialisation, JSON
  encoding (json vs orjson), the layer's msgpack, one
  ``notify.payment_status_changed`` call as shipped against the same
  group_sends on a long-lived loop, and a bare ``async_to_sync``; and the
  CPU of a create and of a poll driven through ``config.asgi`` without a
  server (the web's own share of a request, apart from the HTTP server's).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from typing import Any

import django


def _setup() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.production")
    django.setup()


def sample_payment(payment_id: str, version: int, socket_id: str = "") -> dict:
    """A payment as a payment-status frame carries it (PaymentOutputSerializer)."""
    return {
        "id": payment_id,
        "status": "processing" if version == 2 else "succeeded",
        "amount": 1000,
        "currency": "usd",
        "payment_method": "pm_card_visa",
        "description": "",
        "socket_id": socket_id,
        "failure_code": "",
        "failure_message": "",
        "created_at": "2026-11-26T01:19:47.123456Z",
        "updated_at": "2026-11-26T01:19:47.223456Z",
        "version": version,
    }


# transitions ------------------------------------------------------------------


def cmd_transitions(args: argparse.Namespace) -> dict[str, Any]:
    _setup()
    from payments import services
    from realtime import notify

    socket_ids: list[str] = json.loads(open(args.sockets).read())
    records: list[dict[str, Any]] = []
    current: dict[str, Any] = {}

    original_notify = services.payment_notify
    original_send = notify.payment_status_changed

    def timed_notify(*, payment: Any, event_ids: list[int]) -> bool:
        # Called by on_commit right after COMMIT returned.
        current["t_commit"] = time.time()
        sent = original_notify(payment=payment, event_ids=event_ids)
        current["t_notified"] = time.time()
        return sent

    def timed_send(**kwargs: Any) -> bool:
        current["t_send0"] = time.time()
        sent = original_send(**kwargs)
        current["t_send1"] = time.time()
        current["sent"] = sent
        return sent

    services.payment_notify = timed_notify
    notify.payment_status_changed = timed_send

    payments = [
        services.payment_create(
            amount=1000,
            currency="usd",
            payment_method="pm_card_visa",
            socket_id=socket_ids[i % len(socket_ids)],
        )
        for i in range(args.count)
    ]
    # A first send outside the measurement: imports, first connection.
    deadline = time.monotonic() + args.max_seconds
    next_at = time.monotonic() + args.spacing
    for payment in payments:
        for transition in (
            services.payment_start_processing,
            services.payment_mark_succeeded,
        ):
            if time.monotonic() > deadline:
                break
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            next_at = time.monotonic() + args.spacing
            current.clear()
            t0 = time.time()
            moved = transition(payment_id=payment.id)
            current["t_done"] = time.time()
            current["t_start"] = t0
            if moved is not None:
                records.append(
                    {"id": str(payment.id), "version": moved.version, **current}
                )
    return {"records": records, "stats": dict(notify.stats)}


# fanout ---------------------------------------------------------------------------


async def _fanout(args: argparse.Namespace) -> dict[str, Any]:
    from channels.layers import get_channel_layer

    from realtime import groups, notify

    layer = get_channel_layer()
    if args.group:
        targets = [args.group]
        payment_ids = [args.payment_id]
    else:
        socket_ids: list[str] = json.loads(open(args.sockets).read())
        targets = [groups.socket_group(s) for s in socket_ids]
        payment_ids = [str(uuid.uuid4()) for _ in socket_ids]
    count = args.count
    errors = 0
    index = 0

    async def pusher() -> None:
        nonlocal index, errors
        while index < count:
            i = index
            index += 1
            if args.rate:
                # Message i is due at t0 + i / rate: an offered load, paced.
                delay = t0 + i / args.rate - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            slot = i % len(targets)
            message = {
                "type": notify.MESSAGE_TYPE,
                "payment": sample_payment(payment_ids[slot], 2 + i // len(targets)),
            }
            try:
                await layer.group_send(targets[slot], message)
            except Exception:
                errors += 1

    # Warm the connection pool before the clock starts.
    await layer.group_send("bench.warmup", {"type": "bench.none"})
    t0 = time.time()
    await asyncio.wait_for(
        asyncio.gather(*(pusher() for _ in range(args.concurrency))), args.max_seconds
    )
    t1 = time.time()
    return {
        "sent": count,
        "errors": errors,
        "t_start": t0,
        "t_end": t1,
        "send_rate": count / (t1 - t0),
        "dropped_logged": notify.stats.get("dropped", 0),
    }


def cmd_fanout(args: argparse.Namespace) -> dict[str, Any]:
    _setup()
    return asyncio.run(_fanout(args))


# micro ------------------------------------------------------------------------------


def _timeit(fn: Any, seconds: float) -> dict[str, float]:
    """Call fn repeatedly for about ``seconds``; return µs per call."""
    fn()
    calls = 0
    started = time.perf_counter()
    while True:
        for _ in range(50):
            fn()
        calls += 50
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            break
    return {"us_per_call": 1e6 * elapsed / calls, "calls": calls}


def cmd_micro(args: argparse.Namespace) -> dict[str, Any]:
    _setup()
    import orjson
    from asgiref.sync import async_to_sync
    from channels.generic.websocket import AsyncJsonWebsocketConsumer
    from channels.layers import get_channel_layer
    from django.utils import timezone

    from payments.api.serializers import PaymentOutputSerializer
    from payments.models import Payment
    from payments.payloads import payment_public_data
    from realtime import notify

    now = timezone.now()
    payment = Payment(
        id=uuid.uuid4(),
        amount=1000,
        currency="usd",
        payment_method="pm_card_visa",
        socket_id="s" * 32,
        status="succeeded",
        version=3,
        created_at=now,
        updated_at=now,
    )
    data = dict(PaymentOutputSerializer(payment).data)
    frame = {"event": "payment-status", "data": data}
    layer = get_channel_layer()
    message = {"type": notify.MESSAGE_TYPE, "payment": data, "__asgi_channel__": "x"}
    seconds = args.seconds
    out: dict[str, Any] = {
        "frame_bytes": len(json.dumps(frame)),
        "drf_serialize": _timeit(
            lambda: dict(PaymentOutputSerializer(payment).data), seconds
        ),
        # What the push path uses instead (payments.payloads).
        "public_data": _timeit(lambda: payment_public_data(payment), seconds),
        # What AsyncJsonWebsocketConsumer.encode_json does today.
        "json_dumps": _timeit(
            lambda: AsyncJsonWebsocketConsumer.encode_json(frame), seconds
        ),
        "orjson_dumps": _timeit(lambda: orjson.dumps(frame).decode(), seconds),
        "json_loads_client": _timeit(lambda: json.loads(json.dumps(frame)), seconds),
    }
    if hasattr(layer, "serialize"):
        out["layer_msgpack"] = _timeit(lambda: layer.serialize(message), seconds)

    # The product's notify, as it is in the tree measured (to the payment's
    # and the socket's groups).
    def product_notify() -> None:
        notify.payment_status_changed(
            payment_id=payment.id, socket_id="s" * 32, user_id=None, data=data
        )

    out["notify_as_shipped"] = _timeit(product_notify, seconds)

    # The same two group_sends, one after the other, on a long-lived event
    # loop of this thread (the floor for a sync caller).
    loop = asyncio.new_event_loop()
    targets = [f"payment.{payment.id}", "socket." + "s" * 32]
    msg = {"type": notify.MESSAGE_TYPE, "payment": data}

    async def two_sends() -> None:
        for group in targets:
            await layer.group_send(group, msg)

    try:
        out["notify_persistent_loop"] = _timeit(
            lambda: loop.run_until_complete(two_sends()), seconds
        )
    finally:
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()

    # async_to_sync with nothing to send: what a new loop per call costs.
    async def nothing() -> None:
        return None

    out["async_to_sync_empty"] = _timeit(lambda: async_to_sync(nothing)(), seconds)
    out.update(asyncio.run(_asgi_requests(args.requests)))
    return out


async def _asgi_call(
    method: str,
    path: str,
    body: bytes = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
    query: bytes = b"",
) -> tuple[int, bytes, dict[bytes, bytes]]:
    """One HTTP request through config.asgi's application, as daphne makes it."""
    from config.asgi import application

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": [
            (b"host", b"localhost"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *(headers or []),
        ],
        "client": ("127.0.0.1", 40000),
        "server": ("localhost", 80),
    }
    answered = asyncio.Event()
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    status, content, answer_headers = 0, b"", {}

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        await answered.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status, content, answer_headers
        if message["type"] == "http.response.start":
            status = message["status"]
            answer_headers = {k.lower(): v for k, v in message["headers"]}
        else:
            content += message.get("body", b"")

    await application(scope, receive, send)
    answered.set()
    return status, content, answer_headers


async def _asgi_requests(count: int) -> dict[str, Any]:
    """CPU per create and per poll through config.asgi, in this process.

    Process CPU (every thread's), so the request threads count; the HTTP
    server's own share (daphne parsing and writing) is not in it.
    """
    call = _asgi_call

    body = json.dumps({"amount": 1000, "currency": "usd"}).encode()

    async def create() -> dict[str, Any]:
        status, content, _ = await call("POST", "/api/payments/", body)
        assert status == 202, (status, content)
        return json.loads(content)

    async def measure(request: Any) -> dict[str, float]:
        for _ in range(max(5, count // 20)):  # warm-up
            await request()
        cpu = time.process_time()
        for _ in range(count):
            await request()
        return {
            "cpu_ms_per_request": 1000 * (time.process_time() - cpu) / count,
            "requests": count,
        }

    payment = await create()
    path = f"/api/payments/{payment['id']}/"
    secret = f"client_secret={payment['client_secret']}".encode()

    async def poll() -> None:
        status, content, _ = await call("GET", path, query=secret)
        assert status == 200, (status, content)

    return {"asgi_create": await measure(create), "asgi_poll": await measure(poll)}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.driver")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("transitions")
    p.add_argument("--sockets", required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--spacing", type=float, default=0.01)
    p.add_argument("--max-seconds", type=float, default=120)
    p.add_argument("--out", required=True)
    p = sub.add_parser("fanout")
    p.add_argument("--sockets")
    p.add_argument("--group", default="")
    p.add_argument("--payment-id", default="")
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--concurrency", type=int, default=20)
    p.add_argument("--rate", type=float, default=0.0)
    p.add_argument("--max-seconds", type=float, default=120)
    p.add_argument("--out", required=True)
    p = sub.add_parser("micro")
    p.add_argument("--seconds", type=float, default=0.5)
    p.add_argument("--requests", type=int, default=500)
    p.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    handler = {
        "transitions": cmd_transitions,
        "fanout": cmd_fanout,
        "micro": cmd_micro,
    }[args.command]
    result = handler(args)
    with open(args.out, "w") as fh:
        json.dump(result, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
