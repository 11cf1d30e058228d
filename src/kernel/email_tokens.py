"""Mailed secrets: the link token and the 6-digit code of a password reset or a verification.

Each mail carries both: a 256-bit token for a link, and a code for apps that cannot
open links. Only hashes are stored (the code's keyed with SECRET_KEY: a million codes
are too few to hide behind a plain hash). A user has at most one live secret per
purpose; a new one replaces it. One is spent by one conditional UPDATE, so of two
confirmations racing exactly one succeeds.

Code tries are counted per purpose and address, known or not (`code:<purpose>:<email>`
in the send counters), in a transaction of their own, before any comparison: a burst
of guesses cannot get more than MAX_CODE_ATTEMPTS compared, and a wrong code for an
unknown address costs the same single write as for a known one, so timing tells them
apart no better than the answer does. Past MAX_CODE_ATTEMPTS the secret is dead, its
link too. A new secret restarts the count; how often one may be mailed is bounded by
the send limits (kernel.send_limits), so guesses stay bounded per window too.
"""

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Literal, Self

from pydantic import Field as PydanticField
from pydantic import model_validator
from sqlalchemy import ColumnElement, delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import Field, SQLModel, col

from kernel.db import (
    SECRET_COLUMN,
    Database,
    UTCDateTime,
    deleted_count,
    outside_transaction,
    utc_now,
)
from kernel.fields import Email, SafeText, StrictInput
from kernel.send_limits import count_hit, forget_hits, hits
from kernel.settings import Settings
from kernel.users import User, find_user, lock_user

Purpose = Literal["password_reset", "email_verification"]
MAX_CODE_ATTEMPTS = 5  # tries per mailed code
TOKEN_MAX_LENGTH = 100  # what we issue is 43 characters


class EmailToken(SQLModel, table=True):
    __tablename__ = "email_tokens"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    purpose: str = Field(max_length=32)
    user_id: uuid.UUID = Field(foreign_key="users.id", index=True, ondelete="CASCADE")
    # The address it was mailed to: it proves nothing once the account's email changes.
    email: str = Field(max_length=320, index=True)
    token_hash: str = Field(max_length=64, unique=True, sa_column_kwargs=SECRET_COLUMN)
    code_hash: str = Field(max_length=64, sa_column_kwargs=SECRET_COLUMN)
    created_at: datetime = Field(default_factory=utc_now, sa_type=UTCDateTime)
    expires_at: datetime = Field(sa_type=UTCDateTime, index=True)
    used_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


MailedToken = Annotated[
    SafeText,
    PydanticField(
        min_length=1, max_length=TOKEN_MAX_LENGTH, description="The token from the mail's link."
    ),
]
MailedCode = Annotated[
    str,
    PydanticField(
        pattern=r"^[0-9]{6}$",
        examples=["042917"],
        description="The 6-digit code from the mail; send it with `email`.",
    ),
]


class MailedProof(StrictInput):
    """Either `token` (from the mail's link), or `email` and `code` (typed from the mail)."""

    token: MailedToken | None = None
    email: Email | None = None
    code: MailedCode | None = None

    @model_validator(mode="after")
    def _one_proof(self) -> Self:
        by_code = self.email is not None and self.code is not None
        if (self.token is not None) == by_code or (self.email is None) != (self.code is None):
            raise ValueError("send either token, or email and code")
        return self


@dataclass(frozen=True)
class MailedSecret:
    """What goes into the mail: never stored."""

    token: str
    code: str


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class EmailTokens:
    """Issues and checks mailed secrets; one per app (app.state)."""

    def __init__(self, database: Database, settings: Settings) -> None:
        self._database = database
        self._code_key = hashlib.sha256(f"mailed code:{settings.signing_key}".encode()).digest()
        self._ttl = {
            "password_reset": timedelta(seconds=settings.password_reset_ttl_seconds),
            "email_verification": timedelta(seconds=settings.email_verification_ttl_seconds),
        }

    def _code_hash(self, token_id: uuid.UUID, code: str) -> str:
        return hmac.new(self._code_key, f"{token_id}:{code}".encode(), hashlib.sha256).hexdigest()

    async def issue(self, session: AsyncSession, user: User, purpose: Purpose) -> MailedSecret:
        """A new secret for the user's current address; the earlier one of this purpose dies."""
        await revoke_email_tokens(session, user.id, purpose)
        await forget_hits(session, _tries_key(purpose, user.email))  # a new code, new tries
        secret = MailedSecret(
            token=secrets.token_urlsafe(32), code=f"{secrets.randbelow(10**6):06d}"
        )
        row = EmailToken(
            purpose=purpose,
            user_id=user.id,
            email=user.email,
            token_hash=_token_hash(secret.token),
            code_hash="",
            expires_at=utc_now() + self._ttl[purpose],
        )
        row.code_hash = self._code_hash(row.id, secret.code)
        session.add(row)
        return secret

    async def find(
        self, session: AsyncSession, purpose: Purpose, proof: MailedProof
    ) -> EmailToken | None:
        """The live secret the proof shows; call it before the request writes anything."""
        if proof.token is not None:
            return await self.find_by_token(session, purpose, proof.token)
        if proof.email is None or proof.code is None:
            return None
        async with outside_transaction(session):  # a wrong code counts in its own transaction
            return await self.find_by_code(purpose, proof.email, proof.code)

    async def find_by_token(
        self, session: AsyncSession, purpose: Purpose, token: str
    ) -> EmailToken | None:
        """The live secret this token belongs to (read only: `spend` decides)."""
        if len(token) > TOKEN_MAX_LENGTH:
            return None
        row = await session.scalar(
            select(EmailToken).where(
                col(EmailToken.token_hash) == _token_hash(token), *_live(purpose)
            )
        )
        if row is None:
            return None
        tries = await hits(session, _tries_key(purpose, row.email), window=self._ttl[purpose])
        return row if tries <= MAX_CODE_ATTEMPTS else None  # dead after too many wrong codes

    async def find_by_code(self, purpose: Purpose, email: str, code: str) -> EmailToken | None:
        """The live secret mailed to `email` if `code` is its code; every try counts.

        Call it with no request transaction holding writes (it opens its own).
        """
        async with self._database.session() as session:
            # The window outlives the code (it starts at the first try, after the mail).
            refused = await count_hit(
                session,
                _tries_key(purpose, email),
                limit=MAX_CODE_ATTEMPTS,
                window=self._ttl[purpose],
            )
            row = await session.scalar(
                select(EmailToken)
                .where(col(EmailToken.email) == email, *_live(purpose))
                .order_by(col(EmailToken.created_at).desc())
                .limit(1)
            )
        if refused or row is None:
            return None
        matches = hmac.compare_digest(self._code_hash(row.id, code), row.code_hash)
        return row if matches else None

    async def redeem(self, session: AsyncSession, row: EmailToken) -> User | None:
        """Spend the secret for its user, locked, in the caller's transaction: the user,
        or None when it no longer speaks for them (spent meanwhile, the account
        deactivated, or its email changed since the mail)."""
        user = await find_user(session, row.user_id)
        if user is None:
            return None
        await lock_user(session, user)
        # Spent first: of two confirmations racing, exactly one gets past this line.
        if not await self.spend(session, row) or not user.is_active or user.email != row.email:
            return None
        return user

    async def spend(self, session: AsyncSession, row: EmailToken) -> bool:
        """Use the secret up, in the caller's transaction; False if it was spent meanwhile."""
        spent = await session.scalar(
            update(EmailToken)
            .where(col(EmailToken.id) == row.id, col(EmailToken.used_at).is_(None))
            .values(used_at=utc_now())
            .returning(col(EmailToken.id))
        )
        return spent is not None


def _tries_key(purpose: Purpose, email: str) -> str:
    return f"code:{purpose}:{email}"


def _live(purpose: Purpose) -> tuple[ColumnElement[bool], ...]:
    return (
        col(EmailToken.purpose) == purpose,
        col(EmailToken.used_at).is_(None),
        col(EmailToken.expires_at) > utc_now(),
    )


async def revoke_email_tokens(
    session: AsyncSession, user_id: uuid.UUID, purpose: Purpose | None = None
) -> None:
    """Kill the user's pending secrets (of one purpose, or all: an email change)."""
    condition = col(EmailToken.user_id) == user_id
    if purpose is not None:
        condition = condition & (col(EmailToken.purpose) == purpose)
    await session.execute(delete(EmailToken).where(condition))


async def purge_spent_email_tokens(session: AsyncSession) -> int:
    """Expired and used secrets (run by `userapi purge-expired`)."""
    result = await session.execute(
        delete(EmailToken).where(
            (col(EmailToken.expires_at) <= utc_now()) | col(EmailToken.used_at).is_not(None)
        )
    )
    return deleted_count(result)
