"""config.sqlite3: writers queue on a file lock; readers and errors unaffected."""

from __future__ import annotations

import threading

import pytest
from django.db import connection, connections, transaction

from payments.models import Payment
from tests.factories import PaymentFactory

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        connection.vendor != "sqlite", reason="the SQLite backend's own behaviour"
    ),
]

TIMEOUT = 10


def test_it_is_the_configured_backend() -> None:
    assert connection.settings_dict["ENGINE"] == "config.sqlite3"


def test_a_second_writer_waits_for_the_first_and_starts_when_it_commits() -> None:
    payment = PaymentFactory()
    first_in = threading.Event()
    second_in = threading.Event()
    release_first = threading.Event()
    order: list[str] = []

    def first() -> None:
        try:
            with transaction.atomic():
                Payment.objects.filter(pk=payment.pk).update(description="first")
                first_in.set()
                assert release_first.wait(TIMEOUT)
                order.append("first commits")
        finally:
            connections.close_all()

    def second() -> None:
        try:
            assert first_in.wait(TIMEOUT)
            with transaction.atomic():
                second_in.set()
                order.append("second begins")
                Payment.objects.filter(pk=payment.pk).update(description="second")
        finally:
            connections.close_all()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    assert first_in.wait(TIMEOUT)
    # The second writer is queued on the lock, not inside its transaction.
    assert not second_in.wait(0.2)
    release_first.set()
    for thread in threads:
        thread.join(TIMEOUT)

    assert order == ["first commits", "second begins"]
    payment.refresh_from_db()
    assert payment.description == "second"


def test_the_lock_is_given_back_on_rollback_and_on_error() -> None:
    payment = PaymentFactory()

    with pytest.raises(RuntimeError), transaction.atomic():
        Payment.objects.filter(pk=payment.pk).update(description="rolled back")
        raise RuntimeError("abort")

    done = threading.Event()

    def other_writer() -> None:
        try:
            with transaction.atomic():
                Payment.objects.filter(pk=payment.pk).update(description="after")
            done.set()
        finally:
            connections.close_all()

    thread = threading.Thread(target=other_writer)
    thread.start()
    thread.join(TIMEOUT)

    assert done.is_set()
    payment.refresh_from_db()
    assert payment.description == "after"


def test_reads_do_not_wait_for_a_writer() -> None:
    payment = PaymentFactory()
    writing = threading.Event()
    finish = threading.Event()

    def writer() -> None:
        try:
            with transaction.atomic():
                Payment.objects.filter(pk=payment.pk).update(description="busy")
                writing.set()
                assert finish.wait(TIMEOUT)
        finally:
            connections.close_all()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert writing.wait(TIMEOUT)
        # WAL: the committed row is readable while the writer holds the lock.
        assert Payment.objects.get(pk=payment.pk).description == payment.description
    finally:
        finish.set()
        thread.join(TIMEOUT)
