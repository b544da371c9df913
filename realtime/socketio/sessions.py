"""Engine.IO sessions shared by every web process: ids, state and mailbox in Redis.

A session id is random bytes plus an HMAC tag under SECRET_KEY (Django's
Signer), so any process refuses a forged or mistyped id without a lookup.
What a live session needs is in Redis under the channel layer's prefix:

- ``<prefix>:sio:<sid>``: a hash (the owner's channel, whether upgraded);
- ``<prefix>:sio:<sid>:box``: the mailbox, a list of encoded packets for the
  client, read by whichever process holds the pending GET; drained once into
  the WebSocket on the upgrade, after which packets go to the upgraded
  consumer's channel and none hold a connection waiting here;
- ``<prefix>:sio:<sid>:get`` / ``:post``: one request of each kind in flight.

The mailbox is a Redis list, not a channel-layer channel: the default layer
is pub/sub, which drops what is published while no GET listens (between two
polls), and the core layer's receive pops one message per round trip where a
poll takes everything queued at once (BLPOP, then LPOP with a count). Every
key has a TTL the owner renews with each ping, so a session whose owner
died leaves nothing behind once the TTL runs out; a closed one is deleted.
"""

from __future__ import annotations

import asyncio
import secrets
import weakref

import redis.asyncio as aioredis
from django.conf import settings
from django.core.signing import BadSignature, Signer
from redis.maint_notifications import MaintNotificationsConfig

from realtime.socketio import packets

SALT = "realtime.socketio.sid"
GET, POST = "get", "post"
#: Seconds a closed session's mailbox waits for a reader to take its "1".
CLOSE_GRACE = 5.0
#: Packets a mailbox may hold before the session is closed as not reading.
MAILBOX_CAPACITY = 1000
#: Seconds a command waits for a free connection of the sessions' pool.
POOL_TIMEOUT = 5.0
# HSETNX alone would make the hash again, with no TTL, for a session that
# ended (closed, or expired) before its upgrade: a key left for ever.
_MARK_UPGRADED = """
if redis.call('EXISTS', KEYS[1]) == 0 then
    return 0
end
return redis.call('HSETNX', KEYS[1], 'upgraded', '1')
"""


def _signer() -> Signer:
    return Signer(salt=SALT, sep=".")


def new_sid() -> str:
    """Return a fresh session id: 128 random bits and their HMAC tag."""
    return _signer().sign(secrets.token_urlsafe(16))


def valid_sid(sid: str) -> bool:
    """Tell whether ``sid`` was made by new_sid() under this SECRET_KEY."""
    if not isinstance(sid, str) or len(sid) > 100:
        return False
    try:
        _signer().unsign(sid)
    except BadSignature:
        return False
    return True


def session_ttl() -> float:
    """Seconds a session lives without its owner renewing it."""
    return settings.SOCKETIO_PING_INTERVAL + settings.SOCKETIO_PING_TIMEOUT + 5


def _longest_wait() -> float:
    # A GET waits at most this long: the owner pings every interval, so a
    # longer silence means the owner is gone.
    return settings.SOCKETIO_PING_INTERVAL + settings.SOCKETIO_PING_TIMEOUT


_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aioredis.Redis] = (
    weakref.WeakKeyDictionary()
)


def redis_client() -> aioredis.Redis:
    """Return this event loop's Redis client for sessions.

    Its read timeout is longer than the longest blocking pop: redis-py 8's
    default (5 s) would fail every poll that waits longer for a packet.
    """
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None:
        # A blocking pool: a burst (every owner's renewal at once on a busy
        # loop) waits a moment for a connection where redis-py's default
        # pool fails the command at once ("Too many connections").
        pool = aioredis.BlockingConnectionPool.from_url(
            settings.REDIS_URL,
            decode_responses=True,
            socket_timeout=_longest_wait() + 10,
            socket_connect_timeout=5,
            max_connections=settings.SOCKETIO_MAX_REDIS_CONNECTIONS,
            timeout=POOL_TIMEOUT,
            maint_notifications_config=MaintNotificationsConfig(enabled=False),
        )
        client = aioredis.Redis(connection_pool=pool)
        _clients[loop] = client
    return client


class SessionStore:
    """One session's keys in Redis."""

    def __init__(self, sid: str) -> None:
        prefix = settings.CHANNEL_LAYERS["default"]["CONFIG"].get("prefix", "asgi")
        self.sid = sid
        self.state_key = f"{prefix}:sio:{sid}"
        self.box_key = f"{self.state_key}:box"
        self.redis = redis_client()

    def lock_key(self, kind: str) -> str:
        return f"{self.state_key}:{kind}"

    async def create(self, *, owner: str) -> None:
        ttl = round(session_ttl())
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.state_key, mapping={"owner": owner})
            pipe.expire(self.state_key, ttl)
            await pipe.execute()

    async def state(self) -> dict[str, str] | None:
        """Return the session's state, None if it is unknown (never made, or over)."""
        return await self.redis.hgetall(self.state_key) or None

    async def renew(self) -> bool:
        """Extend the session's life; return False if it was closed."""
        ttl = round(session_ttl())
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.expire(self.state_key, ttl)
            pipe.expire(self.box_key, ttl)
            alive, _ = await pipe.execute()
        return bool(alive)

    async def mark_upgraded(self) -> bool:
        """Record the upgrade to WebSocket; False if upgraded already, or over."""
        return bool(await self.redis.eval(_MARK_UPGRADED, 1, self.state_key))

    async def acquire(self, kind: str) -> bool:
        """Take the session's one GET (or POST) slot; False if one is in flight."""
        ttl_ms = round((_longest_wait() + 5) * 1000)
        return bool(await self.redis.set(self.lock_key(kind), "1", nx=True, px=ttl_ms))

    async def release(self, kind: str) -> None:
        await self.redis.delete(self.lock_key(kind))

    async def release_poll(self) -> bool:
        """Answer a GET waiting on an empty mailbox with a noop; False once over."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.exists(self.state_key)
            pipe.exists(self.lock_key(GET))
            pipe.llen(self.box_key)
            alive, waiting, queued = await pipe.execute()
        if alive and waiting and not queued:
            await self.push(packets.NOOP)
        return bool(alive)

    async def push(self, *items: str) -> int:
        """Append encoded packets to the mailbox; return how many it holds."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.rpush(self.box_key, *items)
            pipe.expire(self.box_key, round(session_ttl()))
            length, _ = await pipe.execute()
        return length

    async def pop(self, timeout: float | None = None) -> list[str]:
        """Wait for mailbox packets; return all queued (empty after ``timeout``).

        A close packet ends the batch, and the mailbox goes with it.
        """
        wait = _longest_wait() if timeout is None else timeout
        first = await self.redis.blpop([self.box_key], timeout=wait)
        if first is None:
            return []
        batch = [first[1]]
        if batch[0] != packets.CLOSE:
            batch += await self.redis.lpop(self.box_key, 100) or []
        if packets.CLOSE in batch:
            del batch[batch.index(packets.CLOSE) + 1 :]
            await self.redis.delete(self.box_key)
        return batch

    async def take_all(self) -> list[str]:
        """Empty the mailbox; return what it held, in order."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.lrange(self.box_key, 0, -1)
            pipe.delete(self.box_key)
            queued, _ = await pipe.execute()
        return queued

    async def close(self, *, read: bool = True) -> None:
        """End the session: unknown from now on.

        ``read``: a GET may still read the mailbox, and is told by a close
        packet; else (upgraded) the mailbox goes too.
        """
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.state_key, self.lock_key(POST))
            if read:
                pipe.rpush(self.box_key, packets.CLOSE)
                pipe.expire(self.box_key, round(CLOSE_GRACE))
            else:
                pipe.delete(self.box_key, self.lock_key(GET))
            await pipe.execute()
