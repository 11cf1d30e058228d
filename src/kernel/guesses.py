"""Checking a password someone typed, counted against the account's guess budget.

Every password guess counts against the account's email, whatever route it comes
through (login, or the current_password of an update or a deactivation): after
LOGIN_MAX_FAILURES failures the next attempts get 429 for LOGIN_LOCKOUT_SECONDS. The
count lives in the database, so it holds across processes and restarts.

A check records its attempt in a short transaction of its own, committed before the
hash runs: the guess counts even if the request fails later. So it must be called with
the request's transaction ended, inside `kernel.db.outside_transaction(session)`.
"""

import math
from datetime import datetime, timedelta

from sqlalchemy import case, delete, literal
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import Field, SQLModel, col

from kernel.db import Database, UTCDateTime, deleted_count, dialect_name, utc_now
from kernel.errors import InvalidCurrentPassword, TooManyAttempts
from kernel.hashing import PasswordHashing
from kernel.settings import Settings
from kernel.users import User


class PasswordAttempt(SQLModel, table=True):
    """Failed password checks per (normalised) email in the current window."""

    __tablename__ = "password_attempts"

    email: str = Field(max_length=320, primary_key=True)
    failures: int
    window_started_at: datetime = Field(sa_type=UTCDateTime, index=True)


class LockedOut(TooManyAttempts):
    """429 too_many_attempts: the email's guess budget is spent for now.

    `first` is true for exactly one refused attempt per lockout (the atomic upsert
    decides which), so a caller recording refusals records one per lockout, however
    many attempts are refused.
    """

    def __init__(self, *, retry_after: int, first: bool) -> None:
        super().__init__(headers={"Retry-After": str(retry_after)})
        self.first = first


class PasswordGuesses:
    """Throttled password checks; one per app (app.state), shared by every route."""

    def __init__(self, database: Database, hashing: PasswordHashing, settings: Settings) -> None:
        self._database = database
        self._hashing = hashing
        self._max_failures = settings.login_max_failures
        self._window = timedelta(seconds=settings.login_lockout_seconds)

    async def check(self, *, email: str, stored_hash: str | None, password: str) -> bool:
        """Whether `password` matches, counted against `email`; 429 when locked out.

        `stored_hash=None` (no such account) does the same argon2 work and returns False,
        so an unknown email cannot be told apart by timing.
        """
        # The slot first: a check refused for lack of capacity (503) then costs the user
        # nothing, as it was never counted.
        async with self._hashing.slot() as hashing:
            async with self._database.session() as session:
                locked_for, first = await self._reserve_attempt(session, email)
            if locked_for:
                raise LockedOut(retry_after=locked_for, first=first)
            matches = await hashing.verify(stored_hash, password)
        if matches:
            async with self._database.session() as session:
                await session.execute(
                    delete(PasswordAttempt).where(col(PasswordAttempt.email) == email)
                )
        return matches

    async def confirm(self, user: User, password: str | None) -> None:
        """A user confirming a sensitive change: 403 invalid_current_password unless right."""
        if not password or not await self.check(
            email=user.email, stored_hash=user.password_hash, password=password
        ):
            raise InvalidCurrentPassword()

    async def _reserve_attempt(self, session: AsyncSession, email: str) -> tuple[int, bool]:
        """Count this check as a failure up front (success clears it); seconds locked (or
        0), and whether this is the lockout's first refused attempt.

        One atomic upsert, so a burst of concurrent guesses cannot all read "4 failures"
        and all go on to be checked. The window restarts when the limit is reached, so a
        lockout always lasts the full LOGIN_LOCKOUT_SECONDS.
        """
        now = utc_now()
        failures = col(PasswordAttempt.failures)
        started = col(PasswordAttempt.window_started_at)
        expired = started <= literal(now - self._window, UTCDateTime())
        reaches_limit = failures + 1 == self._max_failures
        insert = postgresql_insert if dialect_name(session) == "postgresql" else sqlite_insert
        statement = (
            insert(PasswordAttempt)
            .values(email=email, failures=1, window_started_at=now)
            .on_conflict_do_update(
                index_elements=["email"],
                set_={
                    # Once over the limit it stays at limit + 2: refused attempts are not
                    # checked, so they do not count. Limit + 1 marks the first refusal.
                    "failures": case(
                        (expired, 1),
                        (failures > self._max_failures + 1, failures),
                        else_=failures + 1,
                    ),
                    "window_started_at": case(
                        (expired | reaches_limit, literal(now, UTCDateTime())), else_=started
                    ),
                },
            )
            .returning(failures, started)
        )
        counted: int
        since: datetime
        counted, since = (await session.execute(statement)).one()
        if counted <= self._max_failures:
            return 0, False
        locked_for = max(1, math.ceil((since + self._window - now).total_seconds()))
        return locked_for, counted == self._max_failures + 1


async def forget_failures(session: AsyncSession, email: str) -> None:
    """A fresh guess budget: the owner proved the address by other means (a password reset)."""
    await session.execute(delete(PasswordAttempt).where(col(PasswordAttempt.email) == email))


async def purge_expired_attempts(session: AsyncSession, settings: Settings) -> int:
    """Drop counters whose window has passed (run by `userapi purge-expired`)."""
    cutoff = utc_now() - timedelta(seconds=settings.login_lockout_seconds)
    result = await session.execute(
        delete(PasswordAttempt).where(col(PasswordAttempt.window_started_at) <= cutoff)
    )
    return deleted_count(result)
