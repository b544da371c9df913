"""The contract every payment gateway implements."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from payments.models import Payment


class Outcome(enum.StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    # The provider accepted the charge but has no outcome yet: ask again later.
    PENDING = "pending"


@dataclass(frozen=True, slots=True)
class GatewayResult:
    outcome: Outcome
    failure_code: str = ""
    failure_message: str = ""
    # For PENDING: seconds until the outcome is worth asking for again.
    retry_after: float = 0.0
    data: dict[str, Any] = field(default_factory=dict)


class GatewayError(Exception):
    """The gateway could not be reached or answered nonsense; safe to retry."""


class BaseGateway:
    """A payment provider. Subclasses implement every method below."""

    #: Payment method identifiers this gateway accepts (validated on create).
    payment_methods: frozenset[str] = frozenset()

    def charge(self, *, payment: Payment) -> GatewayResult:
        """Charge the payment's amount to its payment method.

        Must be idempotent on ``payment.id``: the id is the idempotency key
        sent to the provider, so calling again for the same payment (a worker
        that crashed after the call and runs the job again) never charges a
        second time and answers with the first charge's state.
        """
        raise NotImplementedError

    def retrieve(self, *, payment: Payment) -> GatewayResult:
        """Return the current state of the charge made for ``payment``."""
        raise NotImplementedError

    @property
    def name(self) -> str:
        cls = type(self)
        return f"{cls.__module__}.{cls.__qualname__}"
