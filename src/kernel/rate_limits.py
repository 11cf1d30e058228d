"""RATE_LIMIT_PER_IP: requests per client IP to the routes anyone may call with a
password, a token or an address (register, login, refresh, password reset, email
verification), shared by every process (API.md, "Edge limits").

Fixed windows. By default counted with the send counters' atomic upsert
(`kernel.send_limits.count_hit`) in the database: every process and restart sees one
count, with no other service to run. With REDIS_URL set, counted in Redis instead (one
MULTI of SET NX EX, INCR and TTL), which takes that write off the database. Either way
each hit is counted before the route runs, so a refused login still counts and the limit
answers before any argon2 work starts. The routes share one budget per client: spraying
passwords cannot multiply it by switching routes.
"""

import logging
import time
from datetime import timedelta
from typing import Protocol

from kernel.client_ip import limit_key
from kernel.db import Database
from kernel.send_limits import TooManyRequests, count_hit
from kernel.settings import Settings

REDIS_TIMEOUT_SECONDS = 2.0
REDIS_KEY_PREFIX = "userapi:rate:"
# An unreachable Redis is logged once per this many seconds, not once per request.
OUTAGE_LOG_INTERVAL_SECONDS = 60.0
log = logging.getLogger("userapi.rate_limits")


class HitCounter(Protocol):
    async def hit(self, key: str, *, limit: int, window_seconds: int) -> int:
        """Count one hit on `key`: 0 while within `limit` per window, else seconds to wait."""
        ...

    async def close(self) -> None: ...


class DatabaseHitCounter:
    def __init__(self, database: Database) -> None:
        self._database = database

    async def hit(self, key: str, *, limit: int, window_seconds: int) -> int:
        # A transaction of its own, committed at once: the hit stays counted whatever the
        # request does next, and no request transaction is held open or written into.
        async with self._database.session() as session:
            window = timedelta(seconds=window_seconds)
            return await count_hit(session, f"rate:{key}", limit=limit, window=window)

    async def close(self) -> None:
        return None  # the app closes the database itself


class RedisHitCounter:
    """The same fixed window in Redis. An unreachable Redis lets requests through (and is
    logged): logins must not all fail with it, and each email's own guess budget and the
    fair hashing slots still hold."""

    def __init__(self, url: str) -> None:
        # Imported here, not with the module: only a process with REDIS_URL set pays for
        # the client (40 ms of start-up CPU in every worker and `userapi` command).
        from redis.asyncio import Redis
        from redis.exceptions import RedisError

        self._redis: Redis = Redis.from_url(
            url,
            socket_timeout=REDIS_TIMEOUT_SECONDS,
            socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
        )
        self._unreachable = (RedisError, OSError)
        self._outage_logged_at = -OUTAGE_LOG_INTERVAL_SECONDS

    async def hit(self, key: str, *, limit: int, window_seconds: int) -> int:
        name = REDIS_KEY_PREFIX + key
        try:
            async with self._redis.pipeline(transaction=True) as pipeline:
                # The first hit of a window creates the key with its expiry; INCR keeps it.
                pipeline.set(name, 0, ex=window_seconds, nx=True)
                pipeline.incr(name)
                pipeline.ttl(name)
                _, counted, ttl = await pipeline.execute()
        except self._unreachable as error:
            self._log_outage(error)
            return 0
        if counted <= limit:
            return 0
        return max(1, int(ttl))

    def _log_outage(self, error: Exception) -> None:
        now = time.monotonic()
        if now - self._outage_logged_at >= OUTAGE_LOG_INTERVAL_SECONDS:
            self._outage_logged_at = now
            log.warning(
                "redis unreachable, RATE_LIMIT_PER_IP not applied: %s", type(error).__name__
            )

    async def close(self) -> None:
        await self._redis.aclose()


class PerIPRateLimit:
    """One per app (app.state.rate_limit)."""

    def __init__(self, database: Database, settings: Settings) -> None:
        self._limit, self._window_seconds = settings.rate_limit_per_ip
        self.counter: HitCounter = (
            RedisHitCounter(settings.redis_url)
            if settings.redis_url
            else DatabaseHitCounter(database)
        )

    async def hit(self, ip: str | None) -> None:
        """Count a request from `ip`; 429 too_many_requests with Retry-After past the limit.

        An unknown IP (a peer that is not one: a Unix socket) is not limited: there is
        nobody to tell apart, and lumping everyone together would lock everyone out.
        """
        if ip is None:
            return
        wait = await self.counter.hit(
            limit_key(ip), limit=self._limit, window_seconds=self._window_seconds
        )
        if wait:
            raise TooManyRequests(headers={"Retry-After": str(wait)})

    async def close(self) -> None:
        await self.counter.close()
