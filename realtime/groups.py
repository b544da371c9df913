"""Channel-layer group names, in one place for the send and receive sides."""

from __future__ import annotations

import secrets
import uuid


def new_socket_id() -> str:
    """Return a fresh socket id: 192 random bits, URL-safe (32 characters)."""
    return secrets.token_urlsafe(24)


def socket_group(socket_id: str) -> str:
    return f"socket.{socket_id}"


def payment_group(payment_id: uuid.UUID | str) -> str:
    return f"payment.{payment_id}"


def user_group(user_id: int | str) -> str:
    return f"user.{user_id}"


#: Every payment's status changes, for staff sockets only (the live admin).
STAFF_GROUP = "staff.payments"
