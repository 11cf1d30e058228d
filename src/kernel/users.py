"""The shared User table, its two read models, and the rules every slice applies to users."""

import hashlib
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Self

from fastapi import Response
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    JsonValue,
    PlainSerializer,
    WithJsonSchema,
)
from pydantic import Field as PydanticField
from sqlalchemy import Column, ColumnElement, Index, Table, event, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import declared_attr
from sqlmodel import Field, SQLModel, col

from kernel.db import (
    SECRET_COLUMN,
    UTCDateTime,
    dialect_name,
    metadata,
    outside_transaction,
    run_rechecks,
    utc_now,
)
from kernel.errors import EmailTaken, LastAdmin, UserNotFound
from kernel.fields import (
    SINGLE_LINE_PATTERN,
    AvatarUrl,
    Bio,
    Documented,
    Email,
    Name,
    StrictInput,
    single_line,
    storable,
)
from kernel.hashing import PasswordHashing
from kernel.passwords import Password, check_new_password


def _rfc3339(moment: datetime) -> str:
    """RFC 3339, UTC, always with microseconds: "2026-11-26T16:39:00.123456Z"."""
    # isoformat, not strftime: a third of the time, twice in every user a response shows.
    return moment.astimezone(UTC).isoformat(timespec="microseconds").removesuffix("+00:00") + "Z"


Timestamp = Annotated[
    datetime,
    PlainSerializer(_rfc3339, return_type=str),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]
# Between the fields of the search key: a control character, which no email or name may
# hold (kernel.fields) and no search may either (SearchText), so a match is always
# within one field, never across the end of one and the start of the next.
SEARCH_SEPARATOR = "\n"
SEARCH_MAX_LENGTH = 100
# What a search of the users (`q`) may be: one line, as the fields it looks in.
SearchText = Annotated[
    str,
    PydanticField(max_length=SEARCH_MAX_LENGTH),
    Documented(pattern=SINGLE_LINE_PATTERN),
    AfterValidator(storable),
    AfterValidator(single_line),
]


class User(SQLModel, table=True):
    __tablename__ = "users"
    __table_args__ = (
        Index("ix_users_created_at_id", "created_at", "id"),
        # Serves `q` (a LIKE '%...%' on search_key) on PostgreSQL; created by migration
        # 0007 there only: SQLite has no index of this kind (kernel.migrations).
        Index(
            "ix_users_search_key",
            "search_key",
            postgresql_using="gin",
            postgresql_ops={"search_key": "gin_trgm_ops"},
        ),
    )

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    # Stored already trimmed and case-folded, so a plain unique constraint is case-insensitive.
    email: str = Field(max_length=320, unique=True)
    password_hash: str = Field(max_length=255, sa_column_kwargs=SECRET_COLUMN)
    first_name: str = Field(max_length=100)
    last_name: str = Field(max_length=100)
    bio: str | None = Field(default=None, max_length=1000)
    avatar_url: str | None = Field(default=None, max_length=500)
    is_active: bool = Field(default=True)
    is_superuser: bool = Field(default=False)
    # Proven by a mailed token or code; an email change clears it.
    email_verified: bool = Field(default=False)
    # Optimistic-lock counter (SQLAlchemy version_id_col): the source of the ETag.
    version: int = Field(default=1)
    created_at: datetime = Field(default_factory=utc_now, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utc_now, sa_type=UTCDateTime)
    # Email and names, case-folded in Python: searching it gives the same answers on
    # SQLite (whose lower() is ASCII-only) and on PostgreSQL whatever its locale.
    search_key: str = Field(default="", max_length=2000)
    # Set by erasure: the row stays as a tombstone (its id, never reused, still names
    # the account in the security events), emptied of everything personal.
    erased_at: datetime | None = Field(default=None, sa_type=UTCDateTime)

    @declared_attr.directive
    def __mapper_args__(cls) -> dict[str, Any]:  # noqa: N805
        # Every ORM update runs "... WHERE version = <seen>": a concurrent change makes it
        # match no row and raise StaleDataError, rendered as 412 precondition_failed.
        return {"version_id_col": cls.__table__.c.version}  # type: ignore[attr-defined]

    @property
    def is_active_admin(self) -> bool:
        return self.is_active and self.is_superuser

    def touch(self) -> None:
        self.updated_at = utc_now()


# An erased account's email: unique, personal to no one, and refused as an address by
# every email field (`.invalid` is reserved, RFC 2606), so nobody can register or type it.
ERASED_EMAIL_DOMAIN = "erased.invalid"


async def find_user(session: AsyncSession, user_id: uuid.UUID) -> User | None:
    """The account with this id, or None for an unknown or erased one: the one rule
    that makes an erased id 404 everywhere."""
    user = await session.get(User, user_id)
    return None if user is None or user.erased_at is not None else user


async def find_user_by_email(session: AsyncSession, email: str) -> User | None:
    """The account registered as this (normalised) email, if any."""
    return await session.scalar(
        select(User).where(col(User.email) == email, col(User.erased_at).is_(None))
    )


def not_erased() -> ColumnElement[bool]:
    """The condition for queries over many users (the list): erased ones are not there."""
    return col(User.erased_at).is_(None)


def tables_naming_users() -> list[tuple[Table, list[Column[Any]]]]:
    """Each table holding users' data, with its columns that name the user: `users`
    itself, and every table with a foreign key to it. Derived from the metadata, so the
    export and erasure cover a table a new slice adds without being told."""
    found: list[tuple[Table, list[Column[Any]]]] = []
    for table in metadata.sorted_tables:
        if table.name == User.__tablename__:
            found.append((table, [table.c.id]))
            continue
        naming = [fk.parent for fk in table.foreign_keys if fk.column.table.name == "users"]
        if naming:
            found.append((table, naming))
    return found


def empty_of_personal_data(user: User, now: datetime) -> None:
    """Erasure's tombstone: every personal field goes; the id and timestamps stay."""
    user.email = f"{user.id.hex}@{ERASED_EMAIL_DOMAIN}"
    user.password_hash = ""  # no hash matches it; erased accounts are never looked up
    user.first_name = ""
    user.last_name = ""
    user.bio = None
    user.avatar_url = None
    user.is_active = False
    user.is_superuser = False
    user.email_verified = False
    user.erased_at = now
    user.updated_at = now


def _search_key(user: User) -> str:
    if user.erased_at is not None:
        return ""
    return SEARCH_SEPARATOR.join((user.email, user.first_name, user.last_name)).casefold()


@event.listens_for(User, "before_insert")
def _on_insert(_: Any, __: Any, user: User) -> None:
    # API.md: updated_at is set on creation, to the same instant as created_at.
    user.updated_at = user.created_at
    user.search_key = _search_key(user)


@event.listens_for(User, "before_update")
def _on_update(_: Any, __: Any, user: User) -> None:
    user.search_key = _search_key(user)


_EXAMPLE_PUBLIC: dict[str, JsonValue] = {
    "id": "0b6f5e1c-3d2a-4c8e-9f71-2a4b6c8d0e1f",
    "first_name": "Ada",
    "last_name": "Lovelace",
    "full_name": "Ada Lovelace",
    "bio": "First programmer",
    "avatar_url": "https://pictures.example.org/ada.png",
}
_EXAMPLE_PRIVATE = _EXAMPLE_PUBLIC | {
    "email": "ada@example.com",
    "email_verified": True,
    "is_active": True,
    "is_superuser": False,
    "created_at": "2026-12-01T16:39:00.123456Z",
    "updated_at": "2026-12-01T16:39:00.123456Z",
}


class PublicUser(BaseModel):
    """What other signed-in users may see."""

    model_config = ConfigDict(json_schema_extra={"examples": [_EXAMPLE_PUBLIC]})

    id: uuid.UUID
    first_name: str
    last_name: str
    full_name: str
    bio: str | None
    avatar_url: str | None

    @classmethod
    def of(cls, user: User) -> Self:
        return cls.model_validate(_fields(user, cls))


class PrivateUser(PublicUser):
    """What the user themself and admins see."""

    model_config = ConfigDict(json_schema_extra={"examples": [_EXAMPLE_PRIVATE]})

    email: Annotated[str, Documented(format="email")]
    email_verified: bool
    is_active: bool
    is_superuser: bool
    created_at: Timestamp
    updated_at: Timestamp


def _fields(user: User, model: type[BaseModel]) -> dict[str, Any]:
    values = {name: getattr(user, name) for name in model.model_fields if name != "full_name"}
    values["full_name"] = f"{user.first_name} {user.last_name}"
    return values


def etag(user: User) -> str:
    digest = hashlib.sha256(f"{user.id}:{user.version}".encode()).hexdigest()[:24]
    return f'"{digest}"'


def private_view_with_etag(user: User, response: Response) -> PrivateUser:
    """The private view, and its ETag set on the response for a later If-Match."""
    response.headers["ETag"] = etag(user)
    return PrivateUser.of(user)


async def lock_user(session: AsyncSession, user: User) -> None:
    """Reload the user's row and lock it until the transaction ends (PostgreSQL; SQLite's
    writers already hold the database lock), so concurrent changes queue, not clash.

    Then the caller is confirmed once more: a change decided under the lock must not act
    for a token revoked since the request began (on your own row, the lock now holds it).
    An account erased meanwhile is 404 user_not_found: nothing may write to a tombstone.
    """
    # refresh(), not get(populate_existing): a row whose version moved on since it was
    # first loaded is simply reloaded, rather than reported as a stale version.
    # FOR NO KEY UPDATE: it still lets the user's refresh tokens be inserted meanwhile
    # (their foreign key check takes only a key-share lock).
    await session.refresh(user, with_for_update={"key_share": True})
    await run_rechecks(session)
    if user.erased_at is not None:
        raise UserNotFound()


async def hold_user(session: AsyncSession, user: User | None) -> User | None:
    """Re-read an account found before slow work, before writing rows that name it (a
    session, an event, a mailed token): None if it has been erased since. The share lock
    (PostgreSQL) waits for an erasure in progress and keeps one from starting until this
    transaction ends, so nothing personal is written for an account being erased; other
    readers and logins do not wait for each other."""
    if user is None:
        return None
    await session.refresh(user, with_for_update={"read": True})
    return None if user.erased_at is not None else user


async def ensure_not_last_admin(session: AsyncSession, user: User) -> None:
    """Refuse to demote or deactivate the only remaining active admin.

    Every removal of an active admin passes here, one at a time, so the caller is
    confirmed again under the lock: one removed by a removal that held it just before
    is refused, not counted as an admin (a ring of admins each removing the next must
    end as some serial order of those requests would).
    """
    if not user.is_active_admin:
        return
    if dialect_name(session) == "postgresql":
        # Two admins demoting each other at once must not both succeed: serialise here.
        # (SQLite writers are already serialised by BEGIN IMMEDIATE, so lock_user's
        # confirmation of the caller was already under the lock.)
        await session.execute(select(func.pg_advisory_xact_lock(0x55534552)))
        # What committed while this request waited for the lock is visible now.
        await run_rechecks(session)
    others = await session.scalar(
        select(func.count())
        .select_from(User)
        .where(col(User.is_active), col(User.is_superuser), col(User.id) != user.id)
    )
    if not others:
        raise LastAdmin()


class Registration(StrictInput):
    """A new account's fields: the register body, and what `userapi create-admin` checks."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "email": "ada@example.com",
                    "password": "analytical engine 1843",
                    "first_name": "Ada",
                    "last_name": "Lovelace",
                    "bio": "First programmer",
                }
            ]
        }
    )

    email: Email
    password: Password
    first_name: Name
    last_name: Name
    bio: Bio | None = None
    avatar_url: AvatarUrl | None = None


async def create_user(
    session: AsyncSession,
    registration: Registration,
    *,
    hashing: PasswordHashing,
    min_password_length: int,
    is_superuser: bool = False,
    email_verified: bool = False,
) -> User:
    """A new account (register, `userapi create-admin`): 422 for a rejected password,
    409 email_taken when the address is registered already."""
    check_new_password(
        registration.password, email=registration.email, min_length=min_password_length
    )
    async with outside_transaction(session):
        password_hash = await hashing.hash(registration.password)
    user = User(
        **registration.model_dump(exclude={"password"}),
        password_hash=password_hash,
        is_superuser=is_superuser,
        email_verified=email_verified,
    )
    session.add(user)
    try:
        # The unique constraint decides, so two concurrent registrations cannot both win.
        await session.flush()
    except IntegrityError:
        raise EmailTaken() from None
    return user
