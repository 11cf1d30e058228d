"""How many mails may be sent on request, per address and per client IP, in a window.

Counted in the database, so every process shares the count (API.md: default 3 per
address per 15 minutes). Each kind of mail counts apart (`MailKind`): a stranger asking
for resets to your address cannot also stop the verification you ask for. Fixed
windows, one atomic upsert per hit: concurrent requests cannot all read "2 sent" and
all send. `count_hit` is the counter itself, also used for mailed-code tries and for
RATE_LIMIT_PER_IP (kernel.rate_limits).
"""

import math
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy import case, delete, literal, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import Field, SQLModel, col

from kernel.client_ip import limit_key
from kernel.db import UTCDateTime, deleted_count, dialect_name, utc_now
from kernel.errors import ProblemError
from kernel.settings import Settings


class TooManyRequests(ProblemError):
    status, code, detail = 429, "too_many_requests", "Too many requests; try again later."


# The mails someone can ask for, each limited per address on its own.
MailKind = Literal["password_reset", "email_verification"]


class SendCount(SQLModel, table=True):
    __tablename__ = "send_counts"

    # "<mail kind>:<email>", "ip:<address or IPv6 /64>", "code:<purpose>:<email>" or, for
    # RATE_LIMIT_PER_IP (kernel.rate_limits), "rate:<address or IPv6 /64>"
    key: str = Field(max_length=400, primary_key=True)
    sent: int
    window_started_at: datetime = Field(sa_type=UTCDateTime, index=True)


class SendLimits:
    def __init__(self, settings: Settings) -> None:
        self._window = timedelta(seconds=settings.mail_send_window_seconds)
        self._per_address = settings.mail_send_limit
        self._per_ip = settings.mail_send_limit_per_ip

    async def check_ip(self, session: AsyncSession, ip: str | None) -> None:
        """429 too_many_requests, with Retry-After, past the per-IP limit."""
        if ip is None:
            return
        # Per address, or per IPv6 /64: the same client as RATE_LIMIT_PER_IP counts.
        wait = await self._hit(session, f"ip:{limit_key(ip)}", self._per_ip)
        if wait:
            raise TooManyRequests(headers={"Retry-After": str(wait)})

    async def address_allows(self, session: AsyncSession, kind: MailKind, email: str) -> int:
        """Count a mail of this kind to `email`; 0 when it may go, else seconds to wait."""
        return await self._hit(session, f"{kind}:{email}", self._per_address)

    async def _hit(self, session: AsyncSession, key: str, limit: int) -> int:
        return await count_hit(session, key, limit=limit, window=self._window)


async def count_hit(session: AsyncSession, key: str, *, limit: int, window: timedelta) -> int:
    """Count one hit on `key`; 0 while within `limit` per `window`, else seconds to wait."""
    now = utc_now()
    sent = col(SendCount.sent)
    started = col(SendCount.window_started_at)
    expired = started <= literal(now - window, UTCDateTime())
    insert = postgresql_insert if dialect_name(session) == "postgresql" else sqlite_insert
    statement = (
        insert(SendCount)
        .values(key=key, sent=1, window_started_at=now)
        .on_conflict_do_update(
            index_elements=["key"],
            set_={
                # Refused hits stop counting at limit + 1: the window is fixed.
                "sent": case((expired, 1), (sent > limit, sent), else_=sent + 1),
                "window_started_at": case((expired, literal(now, UTCDateTime())), else_=started),
            },
        )
        .returning(sent, started)
    )
    counted: int
    since: datetime
    counted, since = (await session.execute(statement)).one()
    if counted <= limit:
        return 0
    return max(1, math.ceil((since + window - now).total_seconds()))


async def hits(session: AsyncSession, key: str, *, window: timedelta) -> int:
    """How many hits `key` has in its current window (0 once it has passed)."""
    counted = await session.scalar(
        select(col(SendCount.sent)).where(
            col(SendCount.key) == key, col(SendCount.window_started_at) > utc_now() - window
        )
    )
    return counted or 0


async def forget_hits(session: AsyncSession, key: str) -> None:
    await session.execute(delete(SendCount).where(col(SendCount.key) == key))


async def forget_address(session: AsyncSession, email: str) -> None:
    """Erasure: every counter keyed by this address (mails asked for, mailed-code tries)."""
    await session.execute(
        delete(SendCount).where(col(SendCount.key).endswith(f":{email}", autoescape=True))
    )


async def purge_expired_send_counts(session: AsyncSession, settings: Settings) -> int:
    # The longest window any counter uses: code tries count over a code's lifetime.
    longest = max(
        settings.mail_send_window_seconds,
        settings.rate_limit_per_ip.window_seconds,
        settings.password_reset_ttl_seconds,
        settings.email_verification_ttl_seconds,
    )
    cutoff = utc_now() - timedelta(seconds=longest)
    result = await session.execute(
        delete(SendCount).where(col(SendCount.window_started_at) <= cutoff)
    )
    return deleted_count(result)
