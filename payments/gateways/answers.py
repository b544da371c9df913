"""A gateway's answer made fit to store, or refused as nonsense.

A provider's answer crosses a trust boundary like a request body does: its
texts go into the payment's columns and, with its data, into jsonb
(GatewayCall.response, PaymentEvent.detail), which refuses a NUL, a lone
surrogate or a NaN. One such value would roll back the whole group commit
(every payment of the group, charged or not) on each retry. Texts are
cleaned and cut to their columns; an answer that cannot be kept (no known
outcome, data that is not JSON) is a GatewayError, recorded as an ``error``
call and retried by recovery like a provider that did not answer.
"""

from __future__ import annotations

import math
from typing import Any

from payments.models import Payment

from .base import GatewayError, GatewayResult, Outcome

# A pending charge is asked about again at most this long after (seconds):
# a larger retry_after (or an infinite one) would overflow the datetime.
MAX_RETRY_AFTER = 24 * 3600.0
# Nesting of the answer's data kept, as a request body's is bounded.
MAX_DATA_DEPTH = 32


def storable_text(text: str) -> str:
    """``text`` as PostgreSQL takes it: no NUL, lone surrogates escaped."""
    return text.replace("\x00", "").encode("utf-8", "backslashreplace").decode()


def answer_taken_in(answer: object) -> GatewayResult:
    """Return ``answer`` as stored; raise GatewayError if it cannot be stored."""
    if not isinstance(answer, GatewayResult):
        raise GatewayError(f"answer: {type(answer).__name__}, not a GatewayResult")
    try:
        outcome = Outcome(answer.outcome)
    except ValueError:
        raise GatewayError(f"outcome: unknown ({answer.outcome!r:.50})") from None
    retry_after = answer.retry_after
    if not isinstance(retry_after, int | float) or math.isnan(retry_after):
        raise GatewayError(f"retry_after: not a number ({retry_after!r:.50})")
    return GatewayResult(
        outcome=outcome,
        failure_code=_column_text(answer.failure_code, "failure_code"),
        failure_message=_column_text(answer.failure_message, "failure_message"),
        retry_after=min(max(float(retry_after), 0.0), MAX_RETRY_AFTER),
        data=_data(answer.data),
    )


def _column_text(value: object, name: str) -> str:
    """The text for Payment's column ``name``: cleaned, cut to its length."""
    if not isinstance(value, str):
        raise GatewayError(f"{name}: {type(value).__name__}, not a string")
    return storable_text(value)[: Payment._meta.get_field(name).max_length]


def _data(data: object) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise GatewayError(f"data: {type(data).__name__}, not a dict")
    return _json(data, depth=0)


def _json(value: Any, *, depth: int) -> Any:
    """A copy of ``value`` that jsonb takes, or GatewayError naming what is not."""
    if depth > MAX_DATA_DEPTH:
        raise GatewayError(f"data: nested deeper than {MAX_DATA_DEPTH}")
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise GatewayError(f"data: {value!r} is not JSON")
        return value
    if isinstance(value, str):
        return storable_text(value)
    if isinstance(value, list | tuple):
        return [_json(item, depth=depth + 1) for item in value]
    if isinstance(value, dict):
        kept = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise GatewayError(f"data: key {key!r:.50} is not a string")
            kept[storable_text(key)] = _json(item, depth=depth + 1)
        return kept
    raise GatewayError(f"data: {type(value).__name__} is not JSON")
