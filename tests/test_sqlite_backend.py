"""config.sqlite3: writers queue on a file lock; readers and errors unaffected.

The lock is probed from a file descriptor of the test's own, as another
process would see it.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from django.db import connection, connections, transaction

from config.sqlite3.base import writers_lock_path
from payments.models import Payment
from tests.factories import PaymentFactory

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        connection.vendor != "sqlite", reason="the SQLite backend's own behaviour"
    ),
]

TIMEOUT = 10


def lock_path() -> str:
    return writers_lock_path(str(connection.settings_dict["NAME"]))


def held_by_someone() -> bool:
    fd = os.open(lock_path(), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


@contextmanager
def lock_held_elsewhere() -> Iterator[None]:
    fd = os.open(lock_path(), os.O_RDWR | os.O_CREAT, 0o666)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def in_thread(work: Callable[[], None]) -> tuple[threading.Thread, threading.Event]:
    done = threading.Event()

    def run() -> None:
        try:
            work()
            done.set()
        finally:
            connections.close_all()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, done


def test_it_is_the_configured_backend() -> None:
    assert connection.settings_dict["ENGINE"] == "config.sqlite3"


def test_a_transaction_holds_the_lock_until_commit_and_hooks_run_after() -> None:
    payment = PaymentFactory()
    seen_by_hook: list[bool] = []

    with transaction.atomic():
        Payment.objects.filter(pk=payment.pk).update(description="x")
        assert held_by_someone()
        transaction.on_commit(lambda: seen_by_hook.append(held_by_someone()))

    assert seen_by_hook == [False]
    assert not held_by_someone()


def test_a_rollback_gives_the_lock_back() -> None:
    payment = PaymentFactory()

    with pytest.raises(RuntimeError), transaction.atomic():
        Payment.objects.filter(pk=payment.pk).update(description="rolled back")
        raise RuntimeError("abort")

    assert not held_by_someone()
    payment.refresh_from_db()
    assert payment.description != "rolled back"


@pytest.mark.parametrize("kind", ["transaction", "autocommit"])
def test_a_writer_waits_for_the_lock_and_goes_on_once_it_is_free(kind: str) -> None:
    payment = PaymentFactory()

    def write() -> None:
        if kind == "transaction":
            with transaction.atomic():
                Payment.objects.filter(pk=payment.pk).update(description=kind)
        else:
            Payment.objects.filter(pk=payment.pk).update(description=kind)

    with lock_held_elsewhere():
        thread, done = in_thread(write)
        # Queued on the lock: nothing written while it is held.
        assert not done.wait(0.3)
        payment.refresh_from_db()
        assert payment.description != kind
    assert done.wait(TIMEOUT)
    thread.join(TIMEOUT)

    payment.refresh_from_db()
    assert payment.description == kind
    assert not held_by_someone()


def test_reads_do_not_wait_for_the_lock() -> None:
    payment = PaymentFactory()

    with lock_held_elsewhere():
        thread, done = in_thread(lambda: Payment.objects.get(pk=payment.pk))
        assert done.wait(TIMEOUT)
    thread.join(TIMEOUT)
