"""The send side: push a committed status change to every interested socket."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from realtime import groups

logger = logging.getLogger(__name__)

MESSAGE_TYPE = "payment.status"


def payment_status_changed(
    *,
    payment_id: uuid.UUID | str,
    socket_id: str,
    user_id: int | None,
    data: dict[str, Any],
) -> None:
    """Send ``data`` (the public payment) as a payment-status frame.

    Called after commit; a failure is logged, never raised, because the change
    is already committed and the client catches up by subscribing.
    """
    targets = [groups.payment_group(payment_id)]
    if socket_id:
        targets.append(groups.socket_group(socket_id))
    if user_id is not None:
        targets.append(groups.user_group(user_id))
    message = {"type": MESSAGE_TYPE, "payment": data}
    try:
        async_to_sync(_send)(targets, message)
    except Exception:
        logger.exception(
            "payment-status not pushed payment=%s version=%s",
            payment_id,
            data.get("version"),
        )


async def _send(targets: list[str], message: dict[str, Any]) -> None:
    layer = get_channel_layer()
    for group in targets:
        await layer.group_send(group, message)
