"""A gateway's answer made fit to store, or refused when it says nothing usable.

A provider's answer crosses a trust boundary like a request body does: its
texts go into the payment's columns and, with its data, into jsonb
(GatewayCall.response, PaymentEvent.detail), which refuses a NUL, a lone
surrogate or a NaN, and json refuses an integer of over 4,300 digits. One
such value would roll back the whole group commit (every payment of the
group, charged or not) on each retry. So texts are cleaned and cut to their
columns, and data that cannot be stored is kept as its repr: a charge the
provider settled stays settled whatever else it sent, since the provider
answers the same again on every retry. Only an answer with no outcome to
act on (not a GatewayResult, an unknown outcome, a pending one with no
usable wait) is refused, as GatewayAnswerRefusedError: recorded as an
``error`` call and asked again by recovery.
"""

from __future__ import annotations

import json
import math
import reprlib
from typing import Any

from payments.models import Payment

from .base import GatewayError, GatewayResult, Outcome

# A pending charge is asked about again at most this long after (seconds):
# a larger retry_after (or an infinite one) would overflow the datetime.
MAX_RETRY_AFTER = 24 * 3600.0
# Deeper data is kept as its repr: the walk below is recursive, and
# PostgreSQL's jsonb has a nesting limit of its own.
MAX_DATA_DEPTH = 32
# How much of the repr of data that cannot be stored is kept.
UNSTORABLE_DATA_LENGTH = 500


class GatewayAnswerRefusedError(GatewayError):
    """The provider answered, but with no outcome to act on."""


def storable_text(text: str) -> str:
    """``text`` as PostgreSQL takes it: NULs dropped, lone surrogates escaped."""
    return text.replace("\x00", "").encode("utf-8", "backslashreplace").decode()


def column_text(value: object, column: str) -> str:
    """``value`` as Payment's column ``column`` keeps it: cleaned, cut to length."""
    if value is None:
        value = ""
    text = value if isinstance(value, str) else str(value)
    return storable_text(text)[: Payment._meta.get_field(column).max_length]


def answer_taken_in(answer: object) -> GatewayResult:
    """Return ``answer`` as stored; raise GatewayAnswerRefusedError if it cannot act."""
    if not isinstance(answer, GatewayResult):
        raise GatewayAnswerRefusedError(
            f"answer: {type(answer).__name__}, not a GatewayResult"
        )
    try:
        outcome = Outcome(answer.outcome)
    except ValueError:
        raise GatewayAnswerRefusedError(
            f"outcome: unknown ({answer.outcome!r:.50})"
        ) from None
    retry_after = 0.0
    if outcome == Outcome.PENDING:
        wait = answer.retry_after
        if not isinstance(wait, int | float) or math.isnan(wait):
            raise GatewayAnswerRefusedError(f"retry_after: not a number ({wait!r:.50})")
        retry_after = min(max(float(wait), 0.0), MAX_RETRY_AFTER)
    return GatewayResult(
        outcome=outcome,
        failure_code=column_text(answer.failure_code, "failure_code"),
        failure_message=column_text(answer.failure_message, "failure_message"),
        retry_after=retry_after,
        data=_storable_data(answer.data),
    )


def _storable_data(data: object) -> dict[str, Any]:
    try:
        if not isinstance(data, dict):
            raise TypeError(f"{type(data).__name__}, not a dict")
        kept = _json(data, depth=0)
        # What the walk does not know (a 5,000-digit integer) json refuses.
        json.dumps(kept, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return {"unstorable_data": storable_text(_short_repr(data))}
    return kept


# Bounded as it is made, not cut after: the repr of a provider's 10-MB list
# would be built whole first.
_REPR = reprlib.Repr(maxlevel=6, maxstring=100, maxother=100)


def _short_repr(data: object) -> str:
    try:
        return _REPR.repr(data)[:UNSTORABLE_DATA_LENGTH]
    except Exception:  # a __repr__ that raises; an int too long to print
        return f"<{type(data).__name__}>"


def _json(value: Any, *, depth: int) -> Any:
    """A copy of ``value`` that jsonb takes; TypeError or ValueError if none."""
    if depth > MAX_DATA_DEPTH:
        raise ValueError(f"nested deeper than {MAX_DATA_DEPTH}")
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value!r} is not JSON")
        return value
    if isinstance(value, str):
        return storable_text(value)
    if isinstance(value, list | tuple):
        return [_json(item, depth=depth + 1) for item in value]
    if isinstance(value, dict):
        kept = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"key {key!r:.50} is not a string")
            kept[storable_text(key)] = _json(item, depth=depth + 1)
        return kept
    raise TypeError(f"{type(value).__name__} is not JSON")
