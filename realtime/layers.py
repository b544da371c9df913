"""The channel layer: channels-redis pub/sub, made to report a lost subscription.

Pub/sub delivers to sockets with one Redis command per message where the
core layer needs a queue and several round trips (seven times the frames per
second in BENCHMARKS.md), but it buffers nothing: a message published while
a web process's subscription connection is down reaches nobody. channels-redis
4.3 logs that loss and reconnects quietly, so a socket would stay open having
missed frames it can never learn about. Here every socket of the process is
told instead (a ``layer.lost`` message), and the consumer closes it with 1011,
as it does on the core layer: the client reconnects and subscribes, and the
snapshot it gets on subscribe is the truth from the database.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

import redis
from channels_redis.pubsub import (
    RedisPubSubChannelLayer as _RedisPubSubChannelLayer,
)
from channels_redis.pubsub import RedisSingleShardConnection
from channels_redis.utils import _consistent_hash, decode_hosts
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

#: The message every local channel gets when the subscription connection drops.
LOST_MESSAGE_TYPE = "layer.lost"

# A push from sync code (the worker's, one per status change) gives up
# after this long to connect or to be answered, per host, seconds: a
# PUBLISH is answered in well under a millisecond, and a Redis that drops
# packets held each push for the host's timeouts (5 s to connect, 15 s to
# read), a batch of 50 payments for minutes.
SYNC_PUSH_TIMEOUT = 1.0
# After a failed sync push the layer's next ones (to every host: one dead
# shard pauses them all) fail at once for this long, not a timeout each: the
# outbox pushes them again (PAYMENTS_REDELIVER_AFTER) once one gets through.
SYNC_PUSH_BACKOFF = 2.0


class PushBackingOffError(RedisError):
    """A sync push not tried: one failed less than SYNC_PUSH_BACKOFF ago."""


class _LossReportingPubSub(PubSub):
    """redis-py's PubSub, telling the shard's sockets when a read fails.

    channels-redis 4.3's receive loop (``_do_receiving``) catches every error
    itself, logs a traceback a second and carries on as if nothing was
    missed: django/channels_redis#256 ("PubSub Architecture", open), and the
    layer's ``on_disconnect`` option is accepted but no longer called since
    the move to redis-py. The read is the one place a loss shows, so it is
    hooked here and upstream's loop is kept. redis-py reconnects and
    subscribes again on the next read.
    """

    def __init__(self, shard: _LossReportingShard, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.shard = shard

    async def get_message(self, *args: Any, **kwargs: Any) -> dict | None:
        try:
            return await super().get_message(*args, **kwargs)
        except TimeoutError:
            raise  # upstream's loop re-raises it; keep its behaviour
        except Exception as exc:
            told = self.shard.report_loss()
            logger.warning(
                "channel layer subscription lost, %d sockets told: %r", told, exc
            )
            await asyncio.sleep(1)  # upstream's back-off after an error
            return None


class _LossReportingShard(RedisSingleShardConnection):
    """channels-redis's shard, reading through ``_LossReportingPubSub``."""

    def _ensure_redis(self) -> None:
        if self._redis is None:
            super()._ensure_redis()
            self._pubsub = _LossReportingPubSub(
                self, connection_pool=self._redis.connection_pool
            )

    async def subscribe(self, channel: str) -> None:
        try:
            await super().subscribe(channel)
        except (RedisError, OSError):
            # channels-redis makes a channel's queue before subscribing it; a
            # socket refused for want of Redis must not leave it behind (nor
            # be told of losses forever after).
            self.channel_layer.channels.pop(channel, None)
            raise

    async def unsubscribe(self, channel: str) -> None:
        try:
            await super().unsubscribe(channel)
        except (RedisError, OSError):
            # Redis is away (sockets are closing because of it). Forget the
            # channel, or redis-py would subscribe it again on reconnecting
            # and the process would hold a subscription per closed socket.
            self._subscribed_to.discard(channel)
            if self._pubsub is not None:
                self._pubsub.channels.pop(channel.encode(), None)
                self._pubsub.channels.pop(channel, None)

    def report_loss(self) -> int:
        loop_layer: Any = self.channel_layer
        lost = loop_layer.channel_layer.serialize({"type": LOST_MESSAGE_TYPE})
        queues = list(loop_layer.channels.values())
        for queue in queues:
            queue.put_nowait(lost)
        return len(queues)


class RedisPubSubChannelLayer(_RedisPubSubChannelLayer):
    """``RedisPubSubChannelLayer`` whose sockets hear when it lost Redis.

    It also sends to groups from sync code (``group_send_many_sync``): the
    worker pushes every status change from a sync task, and handing each push
    to an event loop in another thread cost more than the push itself.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sync_clients: list[redis.Redis] | None = None
        self._sync_lock = threading.Lock()
        self._sync_failed_at = float("-inf")  # monotonic time of the last failure
        # Hosts given as URLs; Sentinel hosts use the async path only.
        self.can_send_sync = all(
            "address" in host for host in decode_hosts(kwargs.get("hosts"))
        )

    def group_send_many_sync(self, groups: Iterable[str], message: dict) -> None:
        """Do ``group_send(group, message)`` for every group, without a loop.

        The same channel names, shards and serialisation as the async layer,
        and one round trip per Redis host for all the groups together.
        """
        failed_ago = time.monotonic() - self._sync_failed_at
        if failed_ago < SYNC_PUSH_BACKOFF:
            raise PushBackingOffError(
                f"not tried: a push failed {failed_ago:.1f} s ago "
                f"(next try {SYNC_PUSH_BACKOFF - failed_ago:.1f} s from now)"
            )
        try:
            self._publish_sync(groups, message)
        except (RedisError, OSError):
            self._sync_failed_at = time.monotonic()
            raise

    def _publish_sync(self, groups: Iterable[str], message: dict) -> None:
        data = self.serialize(message)
        clients = self._sync_redis()
        pipelines: dict[int, Any] = {}
        for group in groups:
            # RedisPubSubLoopLayer._get_group_channel_name's naming.
            channel = f"{self._kwargs.get('prefix', 'asgi')}__group__{group}"
            shard = _consistent_hash(channel, len(clients))
            if shard not in pipelines:
                pipelines[shard] = clients[shard].pipeline(transaction=False)
            pipelines[shard].publish(channel, data)
        for pipeline in pipelines.values():
            pipeline.execute()

    def _sync_redis(self) -> list[redis.Redis]:
        with self._sync_lock:
            if self._sync_clients is None:
                clients = []
                for host in decode_hosts(self._kwargs.get("hosts")):
                    options = dict(host)
                    options["socket_timeout"] = SYNC_PUSH_TIMEOUT
                    options["socket_connect_timeout"] = SYNC_PUSH_TIMEOUT
                    clients.append(
                        redis.Redis.from_url(options.pop("address"), **options)
                    )
                self._sync_clients = clients
            return self._sync_clients

    def _get_layer(self) -> Any:
        layer = super()._get_layer()
        # Shards connect lazily, so swapping them before first use is safe.
        if not getattr(layer, "_reports_loss", False):
            layer._shards = [
                _LossReportingShard(shard.host, layer) for shard in layer._shards
            ]
            layer._reports_loss = True
        return layer
