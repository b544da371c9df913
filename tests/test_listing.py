"""GET /api/payments/: the caller's own payments (staff: all), cursor pages,
status and date filters; anonymous gets 401 in the error shape.
"""

from __future__ import annotations

from base64 import b64encode
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import pytest

from payments.models import Payment, PaymentStatus
from tests.factories import PaymentFactory
from tests.helpers import (
    LIST,
    assert_error,
    token_client,
)

# Listing --------------------------------------------------------------------------


@pytest.mark.django_db
def test_list_anonymous_is_401_in_the_error_shape(api_client) -> None:
    response = api_client.get(LIST)

    assert_error(response, 401, "not_authenticated", "Authorization")
    assert response["WWW-Authenticate"] == "Token"


@pytest.mark.django_db
def test_list_shows_only_the_callers_payments_and_staff_sees_all(make_user) -> None:
    ann, bob = make_user("ann"), make_user("bob")
    staff = make_user("staff", staff=True)
    anns = {str(PaymentFactory(user=ann).id) for _ in range(3)}
    bobs = {str(PaymentFactory(user=bob).id) for _ in range(2)}
    anonymous = {str(PaymentFactory().id)}

    def listed(user: Any) -> set[str]:
        response = token_client(user).get(LIST)
        assert response.status_code == 200, response.content
        results = response.json()["results"]
        assert all("client_secret" not in p for p in results)
        return {p["id"] for p in results}

    assert listed(ann) == anns
    assert listed(bob) == bobs
    assert listed(staff) == anns | bobs | anonymous


@pytest.mark.django_db
def test_list_pages_with_a_cursor(make_user) -> None:
    ann = make_user("ann")
    start = datetime(2026, 1, 1, tzinfo=UTC)
    ids = []
    for minute in range(5):
        payment = PaymentFactory(user=ann)
        Payment.objects.filter(pk=payment.pk).update(
            created_at=start + timedelta(minutes=minute)
        )
        ids.append(str(payment.id))
    PaymentFactory(user=make_user("bob"))
    client = token_client(ann)

    pages = []
    url = f"{LIST}?page_size=2"
    while url:
        response = client.get(url)
        assert response.status_code == 200, response.content
        body = response.json()
        pages.append([p["id"] for p in body["results"]])
        url = body["next"]

    # Newest first, two a page, each payment once.
    assert pages == [ids[4:2:-1], ids[2:0:-1], ids[0:1]]
    last = client.get(client.get(f"{LIST}?page_size=2").json()["next"]).json()
    back = client.get(last["previous"]).json()
    assert [p["id"] for p in back["results"]] == ids[4:2:-1]


@pytest.mark.django_db
def test_list_default_page_size_is_50(make_user) -> None:
    ann = make_user("ann")
    for _ in range(51):
        PaymentFactory(user=ann)

    body = token_client(ann).get(LIST).json()

    assert len(body["results"]) == 50
    assert body["next"]


@pytest.mark.django_db
def test_list_filters_by_status_and_date(make_user) -> None:
    ann = make_user("ann")
    client = token_client(ann)
    by_status = {
        status: PaymentFactory(user=ann, status=status)
        for status in [
            PaymentStatus.PENDING,
            PaymentStatus.SUCCEEDED,
            PaymentStatus.FAILED,
        ]
    }
    old = by_status[PaymentStatus.FAILED]
    Payment.objects.filter(pk=old.pk).update(
        created_at=datetime(2020, 1, 1, tzinfo=UTC)
    )

    def ids(**query: Any) -> set[str]:
        response = client.get(LIST, query)
        assert response.status_code == 200, response.content
        return {p["id"] for p in response.json()["results"]}

    assert ids(status="succeeded") == {str(by_status["succeeded"].id)}
    assert ids(status=["succeeded", "failed"]) == {
        str(by_status["succeeded"].id),
        str(old.id),
    }
    assert ids(status="canceled") == set()
    assert ids(created_before="2021-01-01T00:00:00Z") == {str(old.id)}
    assert ids(created_after="2021-01-01T00:00:00Z") == {
        str(by_status["pending"].id),
        str(by_status["succeeded"].id),
    }
    assert ids(created_after="2021-01-01T00:00:00Z", status="succeeded") == {
        str(by_status["succeeded"].id)
    }
    # A blank filter is no filter.
    assert len(ids(created_after="", page_size="")) == 3
    # Offsets ISO 8601 allows and PostgreSQL refuses (beyond ±15:59) are
    # compared in UTC, in a filter as in a cursor's position.
    assert ids(created_before="2020-01-02T20:00:00+22:00") == {str(old.id)}
    position = urlencode({"p": "2020-01-02T20:00:00+22:00"})
    assert ids(cursor=b64encode(position.encode()).decode()) == {str(old.id)}
