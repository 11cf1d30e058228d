"""How many mails may be sent on request, per address and per client IP, in a window.

Counted in the database, so every process shares the count (API.md: default 3 per
address per 15 minutes). Fixed windows, one atomic upsert per hit: concurrent requests
cannot all read "2 sent" and all send.
"""

import math
from datetime import datetime, timedelta

from sqlalchemy import case, delete, literal
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import Field, SQLModel, col

from kernel.db import UTCDateTime, dialect_name, utc_now
from kernel.errors import ProblemError
from kernel.settings import Settings


class TooManyRequests(ProblemError):
    status, code, detail = 429, "too_many_requests", "Too many requests; try again later."


class SendCount(SQLModel, table=True):
    __tablename__ = "send_counts"

    # "address:<email>" or "ip:<address>"
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
        wait = await self._hit(session, f"ip:{ip}", self._per_ip)
        if wait:
            raise TooManyRequests(headers={"Retry-After": str(wait)})

    async def address_allows(self, session: AsyncSession, email: str) -> int:
        """Count a mail to `email`; 0 when it may go, else the seconds until it may."""
        return await self._hit(session, f"address:{email}", self._per_address)

    async def _hit(self, session: AsyncSession, key: str, limit: int) -> int:
        now = utc_now()
        sent = col(SendCount.sent)
        started = col(SendCount.window_started_at)
        expired = started <= literal(now - self._window, UTCDateTime())
        insert = postgresql_insert if dialect_name(session) == "postgresql" else sqlite_insert
        statement = (
            insert(SendCount)
            .values(key=key, sent=1, window_started_at=now)
            .on_conflict_do_update(
                index_elements=["key"],
                set_={
                    # Refused hits stop counting at limit + 1: the window is fixed.
                    "sent": case((expired, 1), (sent > limit, sent), else_=sent + 1),
                    "window_started_at": case(
                        (expired, literal(now, UTCDateTime())), else_=started
                    ),
                },
            )
            .returning(sent, started)
        )
        counted: int
        since: datetime
        counted, since = (await session.execute(statement)).one()
        if counted <= limit:
            return 0
        return max(1, math.ceil((since + self._window - now).total_seconds()))


async def purge_expired_send_counts(session: AsyncSession, settings: Settings) -> int:
    cutoff = utc_now() - timedelta(seconds=settings.mail_send_window_seconds)
    result = await session.execute(
        delete(SendCount).where(col(SendCount.window_started_at) <= cutoff)
    )
    return int(getattr(result, "rowcount", 0) or 0)
