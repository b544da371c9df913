"""Parse the JSON protocol's client frames (/ws/payments/, README).

Every way a frame can be wrong raises one ``FrameError`` carrying the error
frame's code and a message naming the field; the consumer answers it in one
place. Subscription refusals (realtime.subscriptions) are FrameErrors too.
"""

from __future__ import annotations

import json
from typing import Any

ACTIONS = ("subscribe", "unsubscribe", "ping")


class FrameError(Exception):
    """A client frame refused: ``code`` and a message naming the field."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def parse(data: str | bytes) -> dict[str, Any]:
    """Return the frame's JSON object; its ``action`` is one of ACTIONS."""
    if not isinstance(data, str):
        raise FrameError("binary_not_supported", "frame: send JSON text frames.")
    try:
        content = json.loads(data)
    except (ValueError, RecursionError):
        raise FrameError("invalid_json", "frame: not valid JSON.") from None
    if not isinstance(content, dict):
        raise FrameError("invalid_frame", "frame: must be a JSON object.")
    if content.get("action") not in ACTIONS:
        raise FrameError(
            "unknown_action", "action: must be one of subscribe, unsubscribe, ping."
        )
    return content
