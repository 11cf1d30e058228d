"""Access tokens (signed JWTs) and refresh tokens (opaque, stored only as hashes)."""

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

import jwt
from pydantic import BaseModel
from pydantic import Field as PydanticField
from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import Field, SQLModel, col

from kernel.db import UTCDateTime, dialect_name, utc_now
from kernel.errors import InvalidToken
from kernel.fields import SafeText
from kernel.settings import Settings
from kernel.signing_keys import CLOCK_SKEW_SECONDS, Keyring
from kernel.users import User

REQUIRED_CLAIMS = ["exp", "iat", "nbf", "iss", "aud", "sub", "jti"]


@dataclass(frozen=True)
class AccessClaims:
    user_id: uuid.UUID
    token_version: int


class AccessTokens:
    """Issue and strictly verify access JWTs; an old key still verifies until removed.

    The keys come from the keyring (kernel.signing_keys): every token names its key
    (kid), and verification allows only that key's own algorithm.
    """

    def __init__(self, settings: Settings, keyring: Keyring | None = None) -> None:
        self.keyring = keyring or Keyring(settings)
        self._issuer = settings.jwt_issuer
        self._audience = settings.jwt_audience
        self.ttl_seconds = settings.access_token_ttl_seconds

    def issue(self, user: User) -> str:
        now = utc_now()
        claims: dict[str, Any] = {
            "iss": self._issuer,
            "aud": self._audience,
            "sub": str(user.id),
            "iat": now,
            "nbf": now,
            "exp": now + timedelta(seconds=self.ttl_seconds),
            "jti": uuid.uuid4().hex,
            "typ": "access",
            "ver": user.token_version,
        }
        key = self.keyring.signing_key()
        return jwt.encode(claims, key.signing, algorithm=key.algorithm, headers={"kid": key.kid})

    def verify(self, token: str) -> AccessClaims:
        try:
            key = self.keyring.verifying_key(str(jwt.get_unverified_header(token).get("kid")))
            if key is None:
                raise InvalidToken()
            # Pinned to the named key's algorithm: "none", or HS256 keyed with a public
            # key, or any other algorithm than the key's own is refused.
            claims = jwt.decode(
                token,
                key.verifying,
                algorithms=[key.algorithm],
                audience=self._audience,
                issuer=self._issuer,
                leeway=CLOCK_SKEW_SECONDS,
                options={"require": REQUIRED_CLAIMS},
            )
            if claims.get("typ") != "access" or type(claims.get("ver")) is not int:
                raise InvalidToken()
            return AccessClaims(user_id=uuid.UUID(claims["sub"]), token_version=claims["ver"])
        except (jwt.PyJWTError, KeyError, ValueError, TypeError):
            raise InvalidToken() from None


class RefreshToken(SQLModel, table=True):
    """One link of a login's chain: each refresh spends one and issues the next."""

    __tablename__ = "refresh_tokens"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    token_hash: str = Field(max_length=64, unique=True)
    family_id: uuid.UUID = Field(index=True)
    user_id: uuid.UUID = Field(foreign_key="users.id", index=True, ondelete="CASCADE")
    token_version: int
    created_at: datetime = Field(default_factory=utc_now, sa_type=UTCDateTime)
    expires_at: datetime = Field(sa_type=UTCDateTime, index=True)
    spent_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


def hash_refresh_token(token: str) -> str:
    # 256 random bits need no slow hash: a fast digest is enough to make a leaked table useless.
    return hashlib.sha256(token.encode()).hexdigest()


# What clients send back: the opaque value we issued (43 characters). Anything up to
# 4096 characters is just an unknown token (401); the cap keeps
# absurd input away from the hash and the database.
RefreshTokenValue = Annotated[SafeText, PydanticField(min_length=1, max_length=4096)]


class TokenPair(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 (a token kind, not a secret)
    expires_in: int
    refresh_token: str


async def issue_token_pair(
    session: AsyncSession,
    *,
    access_tokens: AccessTokens,
    settings: Settings,
    user: User,
    family_id: uuid.UUID | None = None,
) -> TokenPair:
    """A new access token and the next refresh token of the family (a new family on login)."""
    refresh = secrets.token_urlsafe(32)
    if family_id is None:
        # A new login is a natural moment to drop this user's dead tokens, so the table
        # does not grow with every login; `userapi purge-expired` sweeps the rest.
        await session.execute(
            delete(RefreshToken).where(
                col(RefreshToken.user_id) == user.id, col(RefreshToken.expires_at) <= utc_now()
            )
        )
    session.add(
        RefreshToken(
            token_hash=hash_refresh_token(refresh),
            family_id=family_id or uuid.uuid4(),
            user_id=user.id,
            token_version=user.token_version,
            expires_at=utc_now() + timedelta(seconds=settings.refresh_token_ttl_seconds),
        )
    )
    await session.flush()
    return TokenPair(
        access_token=access_tokens.issue(user),
        expires_in=access_tokens.ttl_seconds,
        refresh_token=refresh,
    )


async def purge_expired_refresh_tokens(session: AsyncSession) -> int:
    result = await session.execute(
        delete(RefreshToken).where(col(RefreshToken.expires_at) <= utc_now())
    )
    return int(getattr(result, "rowcount", 0) or 0)


async def lock_family(session: AsyncSession, family_id: uuid.UUID) -> None:
    """Serialise work on one login's tokens until the transaction ends.

    Without it, on PostgreSQL, a logout racing a refresh revokes the spent token but
    not the one the refresh is minting. (SQLite's writers are serialised already.)
    """
    if dialect_name(session) == "postgresql":
        await session.execute(
            select(func.pg_advisory_xact_lock(func.hashtextextended(str(family_id), 0)))
        )


async def revoke_family(session: AsyncSession, family_id: uuid.UUID) -> None:
    await lock_family(session, family_id)
    await session.execute(
        update(RefreshToken)
        .where(col(RefreshToken.family_id) == family_id, col(RefreshToken.revoked_at).is_(None))
        .values(revoked_at=utc_now())
    )


# Token responses must never be stored by a cache or a browser.
NO_STORE_HEADERS = {"Cache-Control": "no-store", "Pragma": "no-cache"}
