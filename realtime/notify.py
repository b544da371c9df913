"""The send side: push a committed status change to every interested socket."""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from realtime import groups

logger = logging.getLogger(__name__)

MESSAGE_TYPE = "payment.status"

#: Pushes made and failed by this process, for logs, tests and benchmarks.
stats: Counter[str] = Counter()


def payment_status_changed(
    *,
    payment_id: uuid.UUID | str,
    socket_id: str,
    user_id: int | None,
    data: dict[str, Any],
) -> bool:
    """Send ``data`` (the public payment) as a payment-status frame.

    Called after commit. Return whether the channel layer took the message; a
    failure is logged and counted, never raised, because the change is
    already committed: it is pushed again later (the PaymentEvent outbox) and
    a client catches up by subscribing anyway.
    """
    targets = [groups.payment_group(payment_id)]
    if socket_id:
        targets.append(groups.socket_group(socket_id))
    if user_id is not None:
        targets.append(groups.user_group(user_id))
    message = {"type": MESSAGE_TYPE, "payment": data}
    try:
        async_to_sync(_send)(targets, message)
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
    for group in targets:
        await layer.group_send(group, message)
