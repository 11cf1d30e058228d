"""Sessions: one per login, one row each, whatever the number of refreshes.

A session is what a refresh token stands for, and what every access token names (`sid`).
Revoking one is deleting its row: its refresh token and its access tokens then fail on
their next use, in every process.

Refresh tokens are `<session id>.<generation>.<tag>`, where the tag is HMAC-SHA256 of
the session id, its random salt and the generation, keyed from SECRET_KEY. The database
keeps no token at all (only the salt and the current generation), yet every token a
session ever had can be recognised: the current one refreshes; the one spent last
(generation - 1) may be presented again within REFRESH_REUSE_GRACE_SECONDS of its
spending (a lost response retried, two requests racing) and gets the current token; any
other earlier token is a copy, and the session is revoked. A forged tag is just an
unknown token: it cannot revoke anyone's session.
"""

import base64
import binascii
import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Literal, TypeGuard

from pydantic import BaseModel, ConfigDict
from pydantic import Field as PydanticField
from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import Field, SQLModel, col

from kernel.db import SECRET_COLUMN, UTCDateTime, deleted_count, utc_now
from kernel.email_tokens import revoke_email_tokens
from kernel.fields import SafeText
from kernel.settings import Settings
from kernel.tokens import AccessTokens
from kernel.users import User

USER_AGENT_MAX_LENGTH = 256


class Session(SQLModel, table=True):
    __tablename__ = "sessions"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    user_id: uuid.UUID = Field(foreign_key="users.id", index=True, ondelete="CASCADE")
    # Random per session: a SECRET_KEY leak alone does not let anyone mint its tokens.
    salt: str = Field(
        default_factory=lambda: secrets.token_hex(16),
        max_length=32,
        sa_column_kwargs=SECRET_COLUMN,
    )
    # How many times it was refreshed: the live refresh token is this generation's.
    generation: int = Field(default=0)
    created_at: datetime = Field(default_factory=utc_now, sa_type=UTCDateTime)
    last_used_at: datetime = Field(default_factory=utc_now, sa_type=UTCDateTime, index=True)
    # When the generation before this one was spent: the start of its grace window.
    rotated_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    expires_at: datetime = Field(sa_type=UTCDateTime, index=True)
    user_agent: str | None = Field(default=None, max_length=USER_AGENT_MAX_LENGTH)
    ip: str | None = Field(default=None, max_length=45)

    @property
    def is_live(self) -> bool:
        return self.expires_at > utc_now()


def token_speaks_for(user: User | None, session: Session | None) -> TypeGuard[User]:
    """The one rule for every token, access or refresh: it still speaks for its user.

    The user is active and the token's session is live: deactivation, a password
    change, logout and every other revocation delete sessions.
    """
    return (
        user is not None
        and user.is_active
        and session is not None
        and session.user_id == user.id
        and session.is_live
    )


# What clients send back: the value we issued (about 70 characters). Anything up to 4096
# characters is just an unknown token (401); the cap keeps absurd input away from the
# database.
RefreshTokenValue = Annotated[SafeText, PydanticField(min_length=1, max_length=4096)]


@dataclass(frozen=True)
class PresentedToken:
    session_id: uuid.UUID
    generation: int
    tag: bytes


class RefreshTokens:
    """Makes and recognises refresh tokens; the previous SECRET_KEY still recognises."""

    def __init__(self, settings: Settings) -> None:
        keys = [settings.signing_key, settings.secret_key_previous]
        self._keys = [
            hashlib.sha256(f"refresh token:{key}".encode()).digest() for key in keys if key
        ]

    def _tag(self, key: bytes, session: Session, generation: int) -> bytes:
        message = f"{session.id.hex}:{session.salt}:{generation}".encode()
        return hmac.new(key, message, hashlib.sha256).digest()

    def current(self, session: Session) -> str:
        """The session's live refresh token."""
        tag = self._tag(self._keys[0], session, session.generation)
        return f"{_b64(session.id.bytes)}.{session.generation}.{_b64(tag)}"

    def is_genuine(self, session: Session, presented: PresentedToken) -> bool:
        return any(
            hmac.compare_digest(self._tag(key, session, presented.generation), presented.tag)
            for key in self._keys
        )


def parse_refresh_token(token: str) -> PresentedToken | None:
    """The parts of a refresh token, or None for anything we cannot have issued."""
    try:
        session_part, generation_part, tag_part = token.split(".")
        if not generation_part.isascii() or not generation_part.isdigit():
            return None
        if len(generation_part) > 12:
            return None
        return PresentedToken(
            session_id=uuid.UUID(bytes=_unb64(session_part)),
            generation=int(generation_part),
            tag=_unb64(tag_part),
        )
    except (ValueError, binascii.Error):
        return None


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    if not text.isascii():
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenPair(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "access_token": "eyJhbGciOiJFZERTQSIsImtpZCI6Ii4uLiJ9.eyJzdWIiOiIuLi4ifQ.c2ln",
                    "token_type": "bearer",
                    "expires_in": 900,
                    "refresh_token": "u1.Qm9vdHN0cmFwcGVkIHNlc3Npb24gaWQ.cmVmcmVzaCB0YWc",
                }
            ]
        }
    )

    access_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 (a token kind, not a secret)
    expires_in: int
    refresh_token: str


# Token responses must never be stored by a cache or a browser.
NO_STORE_HEADERS = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def token_pair(
    session: Session, *, access_tokens: AccessTokens, refresh_tokens: RefreshTokens
) -> TokenPair:
    """A new access token for the session, and its live refresh token."""
    return TokenPair(
        access_token=access_tokens.issue(user_id=session.user_id, session_id=session.id),
        expires_in=access_tokens.ttl_seconds,
        refresh_token=refresh_tokens.current(session),
    )


async def end_sessions(
    db: AsyncSession, user_id: uuid.UUID, *, keep: uuid.UUID | None = None
) -> list[uuid.UUID]:
    """Revoke every session of the user (but `keep`): their tokens fail at once.
    Returns the ids of the sessions ended."""
    condition = col(Session.user_id) == user_id
    if keep is not None:
        condition = condition & (col(Session.id) != keep)
    ended = await db.execute(delete(Session).where(condition).returning(col(Session.id)))
    return list(ended.scalars())


async def deactivate_account(db: AsyncSession, user: User) -> None:
    """Soft delete: the row (and its email) stays; every session ends at once, and
    every link or code mailed to it dies (a reactivation does not revive them)."""
    user.is_active = False
    await end_sessions(db, user.id)
    await revoke_email_tokens(db, user.id)


async def purge_expired_sessions(db: AsyncSession) -> int:
    result = await db.execute(delete(Session).where(col(Session.expires_at) <= utc_now()))
    return deleted_count(result)
