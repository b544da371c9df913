"""Wake idle workers when a job is enqueued, instead of letting them poll.

The job row stays the truth and is still written in the enqueuing
transaction; the wake-up is only a hint, published on Redis once that
transaction commits. A worker that misses one (Redis away, not yet
subscribed) finds the job at its next poll, ``--interval`` later.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import redis
from django.conf import settings
from django.db import router, transaction
from django_tasks_db.models import DBTaskResult

logger = logging.getLogger(__name__)

_client: redis.Redis | None = None
_client_lock = threading.Lock()


def _redis() -> redis.Redis:
    global _client
    with _client_lock:
        if _client is None:
            # Short timeouts: this runs after a request's commit, and a Redis
            # that does not answer must not hold the response up for long.
            _client = redis.Redis.from_url(
                settings.REDIS_URL, socket_connect_timeout=0.5, socket_timeout=0.5
            )
        return _client


def wake_workers() -> bool:
    """Tell idle workers a job is ready; return whether Redis took it. Never raise."""
    try:
        _redis().publish(settings.TASKS_WAKEUP_CHANNEL, b"")
    except (redis.RedisError, OSError) as exc:
        logger.debug("worker wake-up not published: %r", exc)
        return False
    return True


def on_task_enqueued(sender: Any, task_result: Any, **kwargs: Any) -> None:
    """Wake the workers once the job's transaction commits (task_enqueued).

    Deferred jobs too: an idle worker then looks again at when the next
    deferred job is due and waits until then, not a whole interval.
    """
    transaction.on_commit(wake_workers, using=router.db_for_write(DBTaskResult))


class WakeupListener:
    """The worker's side: wait for a wake-up, at most ``timeout`` seconds.

    The subscription is kept between waits, so a wake-up published while the
    worker was busy is waiting for it; several are one.
    """

    def __init__(self) -> None:
        self._pubsub: redis.client.PubSub | None = None
        self._away = False

    def subscribe(self) -> None:
        try:
            self._ensure_subscribed()
        except (redis.RedisError, OSError) as exc:
            self._lost(exc)

    def wait(self, timeout: float) -> None:
        try:
            pubsub = self._ensure_subscribed()
            if pubsub.get_message(timeout=timeout) is not None:
                while pubsub.get_message(timeout=0) is not None:
                    pass
        except (redis.RedisError, OSError) as exc:
            self._lost(exc)
            time.sleep(timeout)

    def close(self) -> None:
        if self._pubsub is not None:
            self._pubsub.close()
            self._pubsub = None

    def _ensure_subscribed(self) -> redis.client.PubSub:
        if self._pubsub is None:
            client = redis.Redis.from_url(
                settings.REDIS_URL, socket_connect_timeout=1, socket_timeout=5
            )
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            pubsub.subscribe(settings.TASKS_WAKEUP_CHANNEL)
            self._pubsub = pubsub
            if self._away:
                logger.info("worker wake-ups back; polling only as a fallback")
                self._away = False
        return self._pubsub

    def _lost(self, exc: BaseException) -> None:
        self.close()
        if not self._away:
            logger.warning(
                "worker wake-ups unavailable, polling every --interval: %r", exc
            )
            self._away = True
