"""POST /api/v1/auth/refresh: spend a refresh token for a new pair (API.md, "refresh").

Each token is single-use. Presenting one that was already spent means it was copied:
the whole family (every token descended from that login) is revoked.
"""

from fastapi import APIRouter, Response
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from kernel.db import SessionDep, utc_now
from kernel.deps import AccessTokensDep, SettingsDep
from kernel.errors import InvalidToken, problem_responses
from kernel.fields import StrictInput
from kernel.settings import Settings
from kernel.tokens import (
    NO_STORE_HEADERS,
    AccessTokens,
    RefreshToken,
    RefreshTokenValue,
    TokenPair,
    hash_refresh_token,
    issue_token_pair,
    lock_family,
    revoke_family,
)
from kernel.users import User, token_speaks_for

router = APIRouter(tags=["auth"])


class RefreshRequest(StrictInput):
    refresh_token: RefreshTokenValue


class ReusedRefreshToken(InvalidToken):
    """A spent token presented again: it was copied. The family's revocation is kept."""

    keeps_changes = True


async def refresh(
    session: AsyncSession, *, access_tokens: AccessTokens, settings: Settings, token: str
) -> TokenPair:
    presented = await session.scalar(
        select(RefreshToken).where(col(RefreshToken.token_hash) == hash_refresh_token(token))
    )
    if presented is None:
        raise InvalidToken()
    # One login's tokens are refreshed, reused or revoked one request at a time; then
    # re-read the token, as a refresh that held the lock before us may have spent it.
    await lock_family(session, presented.family_id)
    presented = await session.scalar(
        select(RefreshToken)
        .where(col(RefreshToken.id) == presented.id)
        .execution_options(populate_existing=True)
    )
    if presented is None:
        raise InvalidToken()  # purged meanwhile (it had expired)
    if presented.spent_at is not None:
        await revoke_family(session, presented.family_id)
        raise ReusedRefreshToken()
    now = utc_now()
    # Spend it with a conditional UPDATE: even without the lock, of two concurrent
    # refreshes of one token only one can match.
    spent = await session.scalar(
        update(RefreshToken)
        .where(
            col(RefreshToken.id) == presented.id,
            col(RefreshToken.spent_at).is_(None),
            col(RefreshToken.revoked_at).is_(None),
            col(RefreshToken.expires_at) > now,
        )
        .values(spent_at=now)
        .returning(RefreshToken)
    )
    if spent is None:
        raise InvalidToken()  # expired or revoked
    user = await session.get(User, spent.user_id)
    if not token_speaks_for(user, spent.token_version):
        raise InvalidToken()
    return await issue_token_pair(
        session,
        access_tokens=access_tokens,
        settings=settings,
        user=user,
        family_id=spent.family_id,
    )


@router.post("/auth/refresh", responses=problem_responses(InvalidToken))
async def refresh_route(
    body: RefreshRequest,
    response: Response,
    session: SessionDep,
    access_tokens: AccessTokensDep,
    settings: SettingsDep,
) -> TokenPair:
    """Exchange a refresh token for a new token pair; the presented token is spent."""
    response.headers.update(NO_STORE_HEADERS)
    return await refresh(
        session, access_tokens=access_tokens, settings=settings, token=body.refresh_token
    )
