"""The send side: push a committed status change to every interested socket."""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections import Counter
from collections.abc import Coroutine
from typing import Any

from channels.layers import get_channel_layer

from realtime import groups
from realtime.layers import RedisPubSubChannelLayer

logger = logging.getLogger(__name__)

MESSAGE_TYPE = "payment.status"
# Longest a push through the sender loop (core layer) may take before it
# counts as failed and the outbox retries; the pub/sub layer's sync send is
# bounded by the Redis host's socket timeouts (config/settings).
SEND_TIMEOUT = 10.0

#: Pushes made and failed by this process, for logs, tests and benchmarks.
stats: Counter[str] = Counter()


class _SenderLoop:
    """One event loop, in a daemon thread, for every push from sync code.

    ``async_to_sync`` would make a new loop per call, and channels-redis keeps
    its connections per loop: every push paid for a new Redis connection
    (about 3 ms). One long-lived loop keeps them.
    """

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    def run(self, coroutine: Coroutine[Any, Any, None], timeout: float) -> None:
        future = asyncio.run_coroutine_threadsafe(coroutine, self._get_loop())
        try:
            future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise

    def _get_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or not self._loop.is_running():
                loop = asyncio.new_event_loop()
                started = threading.Event()
                loop.call_soon(started.set)
                threading.Thread(
                    target=loop.run_forever, name="realtime-notify", daemon=True
                ).start()
                started.wait()
                self._loop = loop
            return self._loop


_sender = _SenderLoop()


def payment_status_changed(
    *,
    payment_id: uuid.UUID | str,
    socket_id: str,
    user_id: int | None,
    data: dict[str, Any],
) -> bool:
    """Send ``data`` (the public payment) as a payment-status frame.

    Called after commit, from sync code. Return whether the channel layer
    took the message; a failure is logged and counted, never raised, because
    the change is already committed: it is pushed again later (the
    PaymentEvent outbox) and a client catches up by subscribing anyway.
    """
    targets = [groups.payment_group(payment_id)]
    if socket_id:
        targets.append(groups.socket_group(socket_id))
    if user_id is not None:
        targets.append(groups.user_group(user_id))
    # Staff sockets (the live admin) see every payment; nobody else joins it.
    targets.append(groups.STAFF_GROUP)
    message = {"type": MESSAGE_TYPE, "payment": data}
    layer = get_channel_layer()
    try:
        if isinstance(layer, RedisPubSubChannelLayer) and layer.can_send_sync:
            layer.group_send_many_sync(targets, message)
        else:
            _sender.run(_send(targets, message), SEND_TIMEOUT)
    except Exception as exc:
        stats["failed"] += 1
        logger.warning(
            "payment-status not pushed payment=%s version=%s: %r (failed so far: %d)",
            payment_id,
            data.get("version"),
            exc,
            stats["failed"],
        )
        return False
    stats["sent"] += 1
    return True


async def _send(targets: list[str], message: dict[str, Any]) -> None:
    layer = get_channel_layer()
    await asyncio.gather(*(layer.group_send(group, message) for group in targets))
