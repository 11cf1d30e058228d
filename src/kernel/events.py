"""The security audit trail: an append-only table of what happened to which account.

`record_event(db, ...)` adds an event in the caller's transaction, like `queue_mail`:
a rolled-back change leaves no event, a committed one always has its event. An error
that answers the client but must keep its event (a failed login) says so on its class
(`keeps_changes = True`), so the event commits before the error is sent.

Events are never changed. Only `userapi purge-expired` deletes them, once they are older
than AUDIT_RETENTION_DAYS, and erasure removes their personal fields (`scrub_events`).
On PostgreSQL a trigger (migrations 0005, 0006) refuses any other UPDATE or DELETE,
whatever the application sends: an update may only take information away.

What an event stores: its type, when, who did it (`actor_id`: the user, an admin, or
none for the system or an unauthenticated caller), whom it is about (`user_id`), the
client's IP and user agent, and small `details` (a session id, a reason, the email
typed at a login to no account). Never a password, token, code or hash: `record_event`
refuses such detail names.
"""

import re
import uuid
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from pydantic import BaseModel
from sqlalchemy import JSON, Index, Text, delete, func, literal, or_, select, update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import Field, SQLModel, col

from kernel.db import UTCDateTime, deleted_count, dialect_name, utc_now
from kernel.settings import Settings

USER_AGENT_MAX_LENGTH = 256
# The transaction-local PostgreSQL setting the purge sets; the trigger allows deleting
# only events older than that many days (migration 0005).
RETENTION_SETTING = "userapi.audit_retention_days"


class EventType(StrEnum):
    """Every kind of event (API.md, "Account lifecycle and audit trail")."""

    registered = "registered"
    login_succeeded = "login_succeeded"
    login_failed = "login_failed"
    login_throttled = "login_throttled"
    refresh_reused = "refresh_reused"
    logged_out = "logged_out"
    session_revoked = "session_revoked"
    password_changed = "password_changed"  # noqa: S105 (a name, not a password)
    password_reset_requested = "password_reset_requested"  # noqa: S105 (a name, not a password)
    password_reset = "password_reset"  # noqa: S105 (a name, not a password)
    email_changed = "email_changed"
    email_verified = "email_verified"
    deactivated = "deactivated"
    reactivated = "reactivated"
    deleted = "deleted"
    promoted = "promoted"
    demoted = "demoted"


Details = dict[str, str | int]
# Detail names that could carry a secret: refused, so no caller stores one by accident.
_SECRET_NAME = re.compile(r"password|token|code|hash|secret", re.IGNORECASE)
# Every detail name an event may carry, and whether it is personal data, which erasure
# removes. A name not listed here is refused: a new one must say which it is.
DETAIL_NAMES: dict[str, bool] = {
    "session_id": False,
    "reason": False,
    "email": True,  # the address typed at a login to no account
}
_MAX_DETAIL_LENGTH = 320


class SecurityEvent(SQLModel, table=True):
    __tablename__ = "security_events"
    __table_args__ = (
        # One index range per page, newest first: the user's own view, the admin view,
        # and the admin view filtered by type.
        Index("ix_security_events_user_id_at_id", "user_id", "at", "id"),
        Index("ix_security_events_at_id", "at", "id"),
        Index("ix_security_events_type_at_id", "type", "at", "id"),
    )

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    type: str = Field(max_length=32)
    at: datetime = Field(sa_type=UTCDateTime)
    # Who did it: the user themself, an admin, or None (the system, or nobody signed in).
    actor_id: uuid.UUID | None = Field(default=None, foreign_key="users.id")
    # Whom it is about; None for a login to an email no account has.
    user_id: uuid.UUID | None = Field(default=None, foreign_key="users.id")
    ip: str | None = Field(default=None, max_length=45)
    user_agent: str | None = Field(default=None, max_length=USER_AGENT_MAX_LENGTH)
    details: dict[str, Any] = Field(
        default_factory=dict, sa_type=JSON().with_variant(JSONB(), "postgresql")
    )


class Event(BaseModel):
    """An event as API.md shows it."""

    id: uuid.UUID
    type: EventType
    at: datetime
    actor_id: uuid.UUID | None
    user_id: uuid.UUID | None
    ip: str | None
    user_agent: str | None
    details: Details

    @classmethod
    def of(cls, event: SecurityEvent) -> "Event":
        return cls(
            id=event.id,
            type=EventType(event.type),
            at=event.at,
            actor_id=event.actor_id,
            user_id=event.user_id,
            ip=event.ip,
            user_agent=event.user_agent,
            details=event.details,
        )


def record_event(
    db: AsyncSession,
    kind: EventType,
    *,
    user_id: uuid.UUID | None,
    actor_id: uuid.UUID | None,
    ip: str | None = None,
    user_agent: str | None = None,
    details: Details | None = None,
) -> SecurityEvent:
    """Add an event to the caller's transaction: it commits with the change, or not at all."""
    details = dict(details or {})
    for name, value in details.items():
        if _SECRET_NAME.search(name):
            raise ValueError(f"an event detail may not be named {name!r}: it could be a secret")
        if name not in DETAIL_NAMES:
            raise ValueError(f"event detail {name!r} is not in DETAIL_NAMES")
        if isinstance(value, str) and len(value) > _MAX_DETAIL_LENGTH:
            raise ValueError(f"event detail {name!r} is too long")
    event = SecurityEvent(
        type=kind.value,
        at=utc_now(),
        actor_id=actor_id,
        user_id=user_id,
        ip=ip,
        user_agent=(user_agent or None) and user_agent[:USER_AGENT_MAX_LENGTH],
        details=details,
    )
    db.add(event)
    return event


async def purge_old_events(db: AsyncSession, settings: Settings) -> int:
    """Drop events older than AUDIT_RETENTION_DAYS (run by `userapi purge-expired`)."""
    days = settings.audit_retention_days
    older = col(SecurityEvent.at) < utc_now() - timedelta(days=days)
    if dialect_name(db) == "postgresql":
        # The trigger allows this delete only for rows older than this many days, by
        # the database's own clock: so the cutoff is taken from that clock as well.
        await db.execute(select(func.set_config(RETENTION_SETTING, str(days), True)))
        older = col(SecurityEvent.at) < func.now() - func.make_interval(0, 0, 0, days)
    result = await db.execute(delete(SecurityEvent).where(older))
    return deleted_count(result)


async def scrub_events(db: AsyncSession, user_id: uuid.UUID, email: str) -> None:
    """Erasure: the events by or about the user, and the failed logins that typed their
    address, keep their type, time and ids but lose the IP, user agent and personal
    details. One statement, however many events there are."""
    typed_their_email = SecurityEvent.details["email"].as_string() == email
    about_them = or_(
        col(SecurityEvent.user_id) == user_id,
        col(SecurityEvent.actor_id) == user_id,
        typed_their_email,
    )
    personal = [name for name, is_personal in DETAIL_NAMES.items() if is_personal]
    scrubbed: Any = col(SecurityEvent.details)
    for name in personal:
        if dialect_name(db) == "postgresql":
            scrubbed = scrubbed.op("-")(literal(name, Text))  # JSONB minus a key
        else:
            scrubbed = func.json_remove(scrubbed, f"$.{name}")
    await db.execute(
        update(SecurityEvent)
        .where(about_them)
        .values(ip=None, user_agent=None, details=scrubbed)
        .execution_options(synchronize_session=False)
    )
