"""Worker wake-ups: published after the enqueue commits, waited on by workers."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
import redis
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from payments import services, tasks
from payments.worker import wakeup
from payments.worker.wakeup import WakeupListener
from tests.helpers import make_worker
from tests.live import REPO_ROOT, process_env

pytestmark = pytest.mark.django_db(transaction=True)

TIMEOUT = 5.0


@pytest.fixture(autouse=True)
def own_channel(settings) -> str:
    settings.TASKS_WAKEUP_CHANNEL = f"test-wakeup-{uuid.uuid4().hex[:12]}"
    return settings.TASKS_WAKEUP_CHANNEL


@pytest.fixture
def listener(own_channel: str) -> Iterator[redis.client.PubSub]:
    """A subscriber to the wake-up channel, as a worker would be."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(own_channel)
    yield pubsub
    pubsub.close()
    client.close()


def next_message(pubsub: redis.client.PubSub, timeout: float) -> dict | None:
    """The next published message within ``timeout`` seconds, or None.

    get_message returns None early when what it read was the subscribe
    confirmation, so wait again for whatever is left of the timeout.
    """
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        message = pubsub.get_message(timeout=left)
        if message is not None:
            return message
    return None


def test_enqueue_wakes_workers_only_once_committed(listener, own_channel) -> None:
    with transaction.atomic():
        services.payment_create(
            amount=1000, currency="usd", payment_method="pm_card_visa"
        )
        # Uncommitted, the job is invisible to workers: no wake-up yet. A
        # marker published now would queue behind one already sent.
        wakeup._redis().publish(own_channel, b"marker")
        assert next_message(listener, TIMEOUT)["data"] == b"marker"

    assert next_message(listener, TIMEOUT) is not None


def test_rolled_back_enqueue_wakes_nobody(listener, own_channel) -> None:
    with pytest.raises(RuntimeError), transaction.atomic():
        services.payment_create(
            amount=1000, currency="usd", payment_method="pm_card_visa"
        )
        raise RuntimeError("rolled back")

    wakeup._redis().publish(own_channel, b"marker")
    assert next_message(listener, TIMEOUT)["data"] == b"marker"


def test_deferred_job_wakes_workers_to_time_their_wait(listener) -> None:
    later = timezone.now() + timedelta(minutes=5)
    tasks.refresh_payment.using(run_after=later).enqueue(payment_id=str(uuid.uuid4()))

    # Idle workers then wait until it is due instead of a whole interval.
    assert next_message(listener, TIMEOUT) is not None


def test_jobs_put_back_by_a_stopping_worker_wake_the_others(listener) -> None:
    services.payment_create(amount=1000, currency="usd", payment_method="pm_card_visa")
    assert next_message(listener, TIMEOUT) is not None  # the enqueue's own
    worker = make_worker()
    claimed = worker._claim_batch()
    worker.running = False  # SIGTERM during the claim

    worker._run_claimed(claimed)

    assert next_message(listener, TIMEOUT) is not None


def test_listener_returns_on_a_wake_up_before_its_timeout() -> None:
    waiter = WakeupListener()
    waiter.subscribe()
    woke = threading.Event()

    def wait() -> None:
        waiter.wait(60)
        woke.set()

    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    try:
        assert wakeup.wake_workers() is True
        assert woke.wait(TIMEOUT), "still waiting after a wake-up"
    finally:
        waiter.close()


def test_listener_without_redis_falls_back_to_polling(settings, caplog) -> None:
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    waiter = WakeupListener()

    with caplog.at_level(logging.WARNING, logger="payments.worker.wakeup"):
        waiter.subscribe()
        waiter.wait(0.01)
        waiter.wait(0.01)

    warnings = [r for r in caplog.records if "polling every --interval" in r.message]
    assert len(warnings) == 1, caplog.records
    assert not any(r.exc_info for r in caplog.records)


def test_wake_up_without_redis_is_not_an_error(monkeypatch) -> None:
    monkeypatch.setattr(
        wakeup, "_client", redis.Redis.from_url("redis://127.0.0.1:1/0")
    )

    # Logged at debug; the request that enqueued the job is not failed for it.
    assert wakeup.wake_workers() is False


def test_wake_up_channel_carries_the_deployments_redis_prefix() -> None:
    """Two deployments on one Redis (CHANNELS_PREFIX) never wake each other."""
    show = (
        "import django; django.setup(); from django.conf import settings; "
        "print(settings.TASKS_WAKEUP_CHANNEL)"
    )
    channels = {}
    for prefix in ("shop-a", "shop-b"):
        env = process_env(DJANGO_SETTINGS_MODULE="config.settings.local")
        env.pop("TASKS_WAKEUP_CHANNEL", None)
        env["CHANNELS_PREFIX"] = prefix
        result = subprocess.run(
            [sys.executable, "-c", show],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        channels[prefix] = result.stdout.strip()

    assert channels == {
        "shop-a": "shop-a:tasks-enqueued",
        "shop-b": "shop-b:tasks-enqueued",
    }
