"""POST /api/v1/auth/refresh: spend a refresh token for a new pair (API.md, "refresh").

Each token is single-use. Presenting one that was already spent means it was copied:
the whole family (every token descended from that login) is revoked.
"""

from fastapi import APIRouter, Response
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from kernel.db import SessionDep, utc_now
from kernel.errors import InvalidToken, problem_responses
from kernel.fields import StrictInput
from kernel.security import AccessTokensDep, SettingsDep
from kernel.settings import Settings
from kernel.tokens import (
    NO_STORE_HEADERS,
    AccessTokens,
    RefreshToken,
    RefreshTokenValue,
    TokenPair,
    hash_refresh_token,
    issue_token_pair,
    revoke_family,
)
from kernel.users import User

router = APIRouter(tags=["auth"])


class RefreshRequest(StrictInput):
    refresh_token: RefreshTokenValue


async def refresh(
    session: AsyncSession, access_tokens: AccessTokens, settings: Settings, token: str
) -> TokenPair:
    token_hash = hash_refresh_token(token)
    now = utc_now()
    # Spend it atomically: of two concurrent refreshes of one token, one UPDATE matches.
    spent = await session.scalar(
        update(RefreshToken)
        .where(
            col(RefreshToken.token_hash) == token_hash,
            col(RefreshToken.spent_at).is_(None),
            col(RefreshToken.revoked_at).is_(None),
            col(RefreshToken.expires_at) > now,
        )
        .values(spent_at=now)
        .returning(RefreshToken)
    )
    if spent is None:
        known = await session.scalar(
            select(RefreshToken).where(col(RefreshToken.token_hash) == token_hash)
        )
        if known is not None and known.spent_at is not None:
            await revoke_family(session, known.family_id)
            # The revocation must stand although this request fails.
            await session.commit()
        raise InvalidToken()
    user = await session.get(User, spent.user_id)
    if user is None or not user.is_active or user.token_version != spent.token_version:
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
    return await refresh(session, access_tokens, settings, body.refresh_token)
