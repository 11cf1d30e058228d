"""RATE_LIMIT_PER_IP: requests per client IP to the routes anyone may call with a
password, a token or an address (register, login, refresh, password reset, email
verification), shared by every process (API.md, "Edge limits").

Counted with the send counters' atomic upsert (`kernel.send_limits.count_hit`), in the
database: every process and restart sees one count, with no other service to run. Each
hit is a short transaction of its own, committed before the route runs, so a refused
login still counts and the limit answers before any argon2 work starts. The routes share
one budget per client: spraying passwords cannot multiply it by switching routes.
"""

from datetime import timedelta

from kernel.client_ip import limit_key
from kernel.db import Database
from kernel.send_limits import TooManyRequests, count_hit
from kernel.settings import Settings


class PerIPRateLimit:
    """One per app (app.state.rate_limit)."""

    def __init__(self, database: Database, settings: Settings) -> None:
        self._database = database
        self._limit, window_seconds = settings.rate_limit_per_ip
        self._window = timedelta(seconds=window_seconds)

    async def hit(self, ip: str | None) -> None:
        """Count a request from `ip`; 429 too_many_requests with Retry-After past the limit.

        An unknown IP (a peer that is not one: a Unix socket) is not limited: there is
        nobody to tell apart, and lumping everyone together would lock everyone out.
        """
        if ip is None:
            return
        async with self._database.session() as session:
            wait = await count_hit(
                session, f"rate:{limit_key(ip)}", limit=self._limit, window=self._window
            )
        if wait:
            raise TooManyRequests(headers={"Retry-After": str(wait)})
