"""The simulated gateway and the gateway contract."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from payments import gateways, selectors
from payments.gateways import (
    BaseGateway,
    GatewayError,
    GatewayResult,
    Outcome,
    get_gateway,
)
from payments.gateways.simulated import SimulatedGateway
from payments.models import SimulatedCharge
from tests.factories import PaymentFactory

pytestmark = pytest.mark.django_db

SIMULATED_PATH = "payments.gateways.simulated.SimulatedGateway"


class OtherGateway(BaseGateway):
    """A stand-in provider, to show the setting picks the class."""

    payment_methods = frozenset({"pm_other"})


@pytest.fixture(autouse=True)
def fresh_gateway_cache():
    gateways._load.cache_clear()
    yield
    gateways._load.cache_clear()


@pytest.fixture
def gateway() -> SimulatedGateway:
    return SimulatedGateway()


@pytest.mark.parametrize("method", ["pm_card_visa", "pm_card_mastercard"])
def test_charge_succeeds_for_succeeding_test_methods(gateway, method):
    payment = PaymentFactory(payment_method=method)

    result = gateway.charge(payment=payment)

    assert result.outcome == Outcome.SUCCEEDED
    assert result.failure_code == ""
    assert result.failure_message == ""
    assert result.retry_after == 0
    assert result.data == {"charge": str(payment.id)}


@pytest.mark.parametrize(
    ("method", "code"),
    [
        ("pm_card_chargeDeclined", "card_declined"),
        ("pm_card_chargeDeclinedInsufficientFunds", "insufficient_funds"),
        ("pm_card_chargeDeclinedExpiredCard", "expired_card"),
    ],
)
def test_charge_fails_with_stripe_failure_code(gateway, method, code):
    payment = PaymentFactory(payment_method=method)

    result = gateway.charge(payment=payment)

    assert result.outcome == Outcome.FAILED
    assert result.failure_code == code
    assert isinstance(result.failure_message, str)
    assert result.failure_message


def test_payment_methods_are_exactly_the_stripe_test_methods(gateway):
    assert gateway.payment_methods == {
        "pm_card_visa",
        "pm_card_mastercard",
        "pm_card_chargeDeclined",
        "pm_card_chargeDeclinedInsufficientFunds",
        "pm_card_chargeDeclinedExpiredCard",
    }


def test_charge_records_one_simulated_charge(gateway):
    payment = PaymentFactory(amount=4321, currency="eur")

    gateway.charge(payment=payment)

    charge = SimulatedCharge.objects.get()
    assert charge.payment_id == payment.id
    assert charge.amount == 4321
    assert charge.currency == "eur"
    assert charge.payment_method == "pm_card_visa"


def test_charge_with_delay_is_pending_with_retry_after(gateway, settings):
    settings.PAYMENTS_SIMULATED_DELAY = 5
    payment = PaymentFactory()

    result = gateway.charge(payment=payment)

    assert result.outcome == Outcome.PENDING
    assert 4 < result.retry_after <= 5
    assert result.failure_code == ""


def test_retrieve_after_delay_passed_gives_outcome(gateway, settings):
    settings.PAYMENTS_SIMULATED_DELAY = 5
    payment = PaymentFactory(payment_method="pm_card_chargeDeclined")
    assert gateway.charge(payment=payment).outcome == Outcome.PENDING
    assert gateway.retrieve(payment=payment).outcome == Outcome.PENDING

    SimulatedCharge.objects.filter(payment_id=payment.id).update(
        settles_at=timezone.now() - timedelta(seconds=1)
    )

    result = gateway.retrieve(payment=payment)
    assert result.outcome == Outcome.FAILED
    assert result.failure_code == "card_declined"


def test_charge_is_idempotent_on_payment_id(gateway, settings):
    settings.PAYMENTS_SIMULATED_DELAY = 5
    payment = PaymentFactory()
    first = gateway.charge(payment=payment)
    settles_at = SimulatedCharge.objects.get().settles_at

    # A changed payment method must not create or alter the charge: the first
    # charge is the one the provider knows.
    payment.payment_method = "pm_card_chargeDeclined"
    second = gateway.charge(payment=payment)

    assert SimulatedCharge.objects.count() == 1
    charge = SimulatedCharge.objects.get()
    assert charge.settles_at == settles_at
    assert charge.payment_method == "pm_card_visa"
    assert first.outcome == second.outcome == Outcome.PENDING
    assert second.retry_after <= first.retry_after


@pytest.mark.django_db(transaction=True)
def test_charge_is_idempotent_outside_a_transaction(gateway, settings):
    """The worker charges in autocommit: the second INSERT fails on its own."""
    settings.PAYMENTS_SIMULATED_DELAY = 5
    payment = PaymentFactory()
    first = gateway.charge(payment=payment)
    second = gateway.charge(payment=payment)

    assert SimulatedCharge.objects.count() == 1
    assert first.outcome == second.outcome == Outcome.PENDING
    assert abs(first.retry_after - second.retry_after) < 1
    # The connection is still usable after the refused INSERT.
    assert gateway.retrieve(payment=payment).outcome == Outcome.PENDING


def test_charges_for_two_payments_are_separate(gateway):
    gateway.charge(payment=PaymentFactory())
    gateway.charge(payment=PaymentFactory())

    assert SimulatedCharge.objects.count() == 2


def test_retrieve_matches_charge(gateway):
    payment = PaymentFactory(payment_method="pm_card_chargeDeclinedExpiredCard")
    charged = gateway.charge(payment=payment)

    assert gateway.retrieve(payment=payment) == charged


def test_retrieve_without_charge_raises_gateway_error(gateway):
    payment = PaymentFactory()

    with pytest.raises(GatewayError, match=str(payment.id)):
        gateway.retrieve(payment=payment)
    assert SimulatedCharge.objects.count() == 0


def test_base_gateway_methods_raise_not_implemented():
    payment = PaymentFactory()
    base = BaseGateway()

    with pytest.raises(NotImplementedError):
        base.charge(payment=payment)
    with pytest.raises(NotImplementedError):
        base.retrieve(payment=payment)
    assert base.payment_methods == frozenset()


def test_gateway_name_is_dotted_path(gateway):
    assert gateway.name == SIMULATED_PATH
    assert OtherGateway().name == "tests.test_gateway.OtherGateway"


def test_gateway_result_defaults():
    result = GatewayResult(Outcome.SUCCEEDED)

    assert result.failure_code == ""
    assert result.failure_message == ""
    assert result.retry_after == 0.0
    assert result.data == {}


def test_get_gateway_default_is_simulated(settings):
    assert settings.PAYMENTS_GATEWAY == SIMULATED_PATH
    assert type(get_gateway()) is SimulatedGateway


def test_get_gateway_honours_setting(settings):
    settings.PAYMENTS_GATEWAY = "tests.test_gateway.OtherGateway"

    gateway = get_gateway()

    assert type(gateway) is OtherGateway
    assert gateway.payment_methods == {"pm_other"}


def test_get_gateway_returns_one_instance_per_path(settings):
    first = get_gateway()
    assert get_gateway() is first

    settings.PAYMENTS_GATEWAY = "tests.test_gateway.OtherGateway"
    assert get_gateway() is not first

    settings.PAYMENTS_GATEWAY = SIMULATED_PATH
    assert get_gateway() is first


def test_get_gateway_with_bad_path_raises(settings):
    settings.PAYMENTS_GATEWAY = "payments.gateways.nowhere.Missing"

    with pytest.raises(ImportError):
        get_gateway()


def test_the_pages_card_chooser_lists_the_configured_gateways_methods(settings):
    simulated = selectors.payment_method_outcomes()
    assert [m["method"] for m in simulated][:2] == [
        "pm_card_visa",
        "pm_card_mastercard",
    ]
    assert {m["method"] for m in simulated} == SimulatedGateway.payment_methods
    declined = next(m for m in simulated if m["method"] == "pm_card_chargeDeclined")
    assert (declined["outcome"], declined["failure_code"]) == (
        "failed",
        "card_declined",
    )

    settings.PAYMENTS_GATEWAY = "tests.test_gateway.OtherGateway"

    # What the API accepts, with no simulated outcome to promise.
    assert selectors.payment_method_outcomes() == [
        {"method": "pm_other", "outcome": "", "failure_code": "", "failure_message": ""}
    ]
