"""Checking and setting passwords: throttled per account, and never under a database lock.

Every password guess counts against the account's email, whatever route it comes
through (login, or a current_password on update and deactivate): after
LOGIN_MAX_FAILURES failures the next attempts get 429 for LOGIN_LOCKOUT_SECONDS. The
count lives in the database, so it holds across processes and restarts.

argon2 is slow on purpose, so every helper here first ends the request's transaction
(it has only read so far): on SQLite a writer's transaction holds the database-wide
write lock, and one slow hash must not stall every other writer.
"""

import math
from datetime import datetime, timedelta

from sqlalchemy import case, delete, literal
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import Field, SQLModel, col

from kernel.db import UTCDateTime, dialect_name, utc_now
from kernel.errors import InvalidCurrentPassword, TooManyAttempts
from kernel.passwords import PasswordHashing
from kernel.settings import Settings
from kernel.users import User


class PasswordAttempt(SQLModel, table=True):
    """Failed password checks per (normalised) email in the current window."""

    __tablename__ = "password_attempts"

    email: str = Field(max_length=320, primary_key=True)
    failures: int
    window_started_at: datetime = Field(sa_type=UTCDateTime, index=True)


async def release_locks(session: AsyncSession) -> None:
    """End the request's transaction before slow work, when it has only read so far.

    Loaded objects stay usable; whoever writes afterwards must re-check what it relies
    on under a row lock (see kernel.users.lock_user and Authorization.recheck).
    """
    if session.new or session.dirty or session.deleted:
        # Committing here would make half a request permanent: a bug in the caller.
        raise RuntimeError("release_locks() called with unflushed changes pending")
    await session.commit()


async def _reserve_attempt(session: AsyncSession, email: str, settings: Settings) -> int:
    """Count this check as a failure up front (success clears it); seconds locked, or 0.

    One atomic upsert, so a burst of concurrent guesses cannot all read "4 failures" and
    all go on to be checked. The window restarts when the limit is reached, so a lockout
    always lasts the full LOGIN_LOCKOUT_SECONDS.
    """
    now = utc_now()
    window = timedelta(seconds=settings.login_lockout_seconds)
    failures = col(PasswordAttempt.failures)
    started = col(PasswordAttempt.window_started_at)
    expired = started <= literal(now - window, UTCDateTime())
    reaches_limit = failures + 1 == settings.login_max_failures
    insert = postgresql_insert if dialect_name(session) == "postgresql" else sqlite_insert
    statement = (
        insert(PasswordAttempt)
        .values(email=email, failures=1, window_started_at=now)
        .on_conflict_do_update(
            index_elements=["email"],
            set_={
                # Once over the limit it stays at limit + 1: refused attempts are not
                # checked, so they do not count.
                "failures": case(
                    (expired, 1),
                    (failures > settings.login_max_failures, failures),
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
    if counted <= settings.login_max_failures:
        return 0
    return max(1, math.ceil((since + window - now).total_seconds()))


async def check_password(
    session: AsyncSession,
    *,
    passwords: PasswordHashing,
    settings: Settings,
    email: str,
    stored_hash: str | None,
    password: str,
) -> bool:
    """Whether `password` matches, counted against `email`; raises 429 when locked out.

    `stored_hash=None` (no such account) does the same argon2 work and returns False,
    so an unknown email cannot be told apart by timing.
    """
    await release_locks(session)
    # The slot first: a check refused for lack of capacity (503) then costs the user
    # nothing, as it was never counted.
    async with passwords.slot() as hashing:
        locked_for = await _reserve_attempt(session, email, settings)
        await session.commit()  # the attempt counts even if this request fails
        if locked_for:
            raise TooManyAttempts(headers={"Retry-After": str(locked_for)})
        matches = await hashing.verify(stored_hash, password)
    if matches:
        await session.execute(delete(PasswordAttempt).where(col(PasswordAttempt.email) == email))
        await session.commit()
    return matches


async def require_current_password(
    session: AsyncSession,
    *,
    passwords: PasswordHashing,
    settings: Settings,
    user: User,
    password: str | None,
) -> None:
    """A user confirming a sensitive change: 403 invalid_current_password unless right."""
    if not password or not await check_password(
        session,
        passwords=passwords,
        settings=settings,
        email=user.email,
        stored_hash=user.password_hash,
        password=password,
    ):
        raise InvalidCurrentPassword()


async def hash_new_password(
    session: AsyncSession, passwords: PasswordHashing, password: str
) -> str:
    await release_locks(session)
    return await passwords.hash(password)


async def purge_expired_attempts(session: AsyncSession, settings: Settings) -> int:
    """Drop counters whose window has passed (run by `userapi purge-expired`)."""
    cutoff = utc_now() - timedelta(seconds=settings.login_lockout_seconds)
    result = await session.execute(
        delete(PasswordAttempt).where(col(PasswordAttempt.window_started_at) <= cutoff)
    )
    return int(getattr(result, "rowcount", 0) or 0)
