"""What a socket follows and the versions it was sent, for both protocols.

The JSON consumer (/ws/payments/) and the Socket.IO session check, join,
catch up and drop duplicates the same way; this is that one piece.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings
from django.db import DatabaseError

from payments import selectors
from realtime import groups
from realtime.frames import FrameError

logger = logging.getLogger(__name__)


@database_sync_to_async
def _payment_visible(payment_id: str, client_secret: str, user: Any) -> bool:
    payment = selectors.payment_get_visible(
        payment_id=payment_id, client_secret=client_secret, user=user
    )
    return payment is not None


@database_sync_to_async
def _payment_snapshot(payment_id: str, client_secret: str, user: Any) -> dict | None:
    return selectors.payment_public_data_if_visible(
        payment_id=payment_id, client_secret=client_secret, user=user
    )


# Payments whose last sent version a socket remembers. A staff socket
# (staff.payments) sees every payment, so without a bound the dict grows for
# as long as the admin stays open; past it the oldest is forgotten, and only
# a re-push of that old a payment could reach the socket twice.
MAX_TRACKED_VERSIONS = 10_000


class SubscriptionRefusedError(FrameError):
    """A subscribe or unsubscribe refused: ``code`` and a message naming the field."""


NOT_FOUND = (
    "payment_not_found",
    "payment_id: no payment with this id is visible to you.",
)
# The API's code for the same outage (503); the socket stays open.
UNAVAILABLE = (
    "service_unavailable",
    "database: unavailable; subscribe again in a moment.",
)


@contextmanager
def _refused_while_database_away() -> Iterator[None]:
    """Turn a database error in the block into the ``service_unavailable`` refusal."""
    try:
        yield
    except DatabaseError as exc:
        # A warning, not a traceback per subscribing socket while the
        # database restarts.
        logger.warning("subscribe refused, database unavailable: %r", exc)
        raise SubscriptionRefusedError(*UNAVAILABLE) from None


class PaymentSubscriptions:
    """One socket's subscriptions and, per payment, the highest version sent."""

    def __init__(
        self,
        *,
        join: Callable[[str], Awaitable[None]],
        leave: Callable[[str], Awaitable[None]],
    ) -> None:
        self.join = join
        self.leave = leave
        self.payment_ids: set[str] = set()
        # payment id → highest version sent, so a change that reaches this
        # socket through two groups (or a snapshot and a live frame) goes once.
        self.sent_versions: dict[str, int] = {}

    async def subscribe(self, content: dict[str, Any], user: Any) -> dict | None:
        """Follow the payment named in ``content``; return its current data.

        Raise SubscriptionRefusedError for a bad or invisible payment, for
        too many subscriptions, or while the database cannot be read.
        """
        payment_id = content.get("payment_id")
        client_secret = content.get("client_secret", "")
        if not isinstance(payment_id, str) or not payment_id:
            raise SubscriptionRefusedError(
                "invalid_frame", "payment_id: must be a string."
            )
        if not isinstance(client_secret, str):
            raise SubscriptionRefusedError(
                "invalid_frame", "client_secret: must be a string."
            )
        try:
            payment_id = str(uuid.UUID(payment_id))
        except ValueError:
            raise SubscriptionRefusedError(*NOT_FOUND) from None
        limit = settings.REALTIME_MAX_SUBSCRIPTIONS
        if payment_id not in self.payment_ids and len(self.payment_ids) >= limit:
            raise SubscriptionRefusedError(
                "too_many_subscriptions",
                f"payment_id: at most {limit} subscriptions per socket; "
                "unsubscribe first.",
            )
        # Check before joining: a socket that joined the payment's group for
        # a refused subscribe, even for a moment, could be sent a status
        # change committed in that moment, and the frame would reach it.
        with _refused_while_database_away():
            visible = await _payment_visible(payment_id, client_secret, user)
        if not visible:
            raise SubscriptionRefusedError(*NOT_FOUND)
        # Join before reading: a change committed after the read arrives as a
        # live frame, one committed before it is in the snapshot, and
        # is_new() drops whichever copy comes second. (On the pub/sub layer
        # the join is a SUBSCRIBE written before the read; Redis runs it
        # first unless the packet itself is delayed past the worker's
        # PUBLISH, which a loopback or LAN link does not do.)
        await self.join(groups.payment_group(payment_id))
        self.payment_ids.add(payment_id)
        # Refused here, it is followed already: live changes come, and the
        # client asks again for the snapshot.
        with _refused_while_database_away():
            # None only if it stopped being visible since the check a moment ago.
            return await _payment_snapshot(payment_id, client_secret, user)

    async def unsubscribe(self, content: dict[str, Any]) -> None:
        """Stop following the payment named in ``content`` (refused if not followed)."""
        payment_id = content.get("payment_id")
        try:
            # The same spelling subscribe stored, whatever case the client uses.
            payment_id = str(uuid.UUID(payment_id))
        except (TypeError, ValueError, AttributeError):
            payment_id = None
        if payment_id not in self.payment_ids:
            raise SubscriptionRefusedError(
                "not_subscribed", "payment_id: this socket does not follow it."
            )
        self.payment_ids.discard(payment_id)
        await self.leave(groups.payment_group(payment_id))

    def is_new(self, payment: dict[str, Any]) -> bool:
        """Tell whether ``payment`` is newer than what was sent; record it if so."""
        payment_id, version = str(payment["id"]), int(payment["version"])
        if version <= self.sent_versions.get(payment_id, 0):
            return False
        self.sent_versions.pop(payment_id, None)  # re-inserted as the newest
        self.sent_versions[payment_id] = version
        if len(self.sent_versions) > MAX_TRACKED_VERSIONS:
            del self.sent_versions[next(iter(self.sent_versions))]
        return True
