"""POST /api/v1/auth/refresh: a new token pair for a refresh token (API.md, "refresh").

Rotation: each refresh spends the session's live token and issues the next generation.
Presenting the token spent last, within REFRESH_REUSE_GRACE_SECONDS of its spending,
answers with the live token instead (a retried request whose response was lost, or two
requests of one app racing). Any other earlier token of the session means it was
copied: the session is revoked, for the thief and the owner alike.
"""

from datetime import timedelta

from fastapi import APIRouter, Response
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from kernel.db import SessionDep, utc_now
from kernel.deps import (
    AccessTokensDep,
    ClientIP,
    RateLimitedPerIP,
    RefreshTokensDep,
    SettingsDep,
    UserAgent,
)
from kernel.errors import InvalidToken, problem_responses
from kernel.events import EventType, record_event
from kernel.fields import StrictInput
from kernel.send_limits import TooManyRequests
from kernel.sessions import (
    NO_STORE_HEADERS,
    RefreshTokens,
    RefreshTokenValue,
    Session,
    TokenPair,
    parse_refresh_token,
    token_pair,
    token_speaks_for,
)
from kernel.tokens import AccessTokens
from kernel.users import User

router = APIRouter(tags=["auth"])


class RefreshRequest(StrictInput):
    refresh_token: RefreshTokenValue


class ReusedRefreshToken(InvalidToken):
    """An earlier token presented again: it was copied. The revocation (and its event)
    is kept."""

    keeps_changes = True


async def refresh(
    db: AsyncSession,
    *,
    access_tokens: AccessTokens,
    refresh_tokens: RefreshTokens,
    grace_seconds: int,
    token: str,
    ip: str | None,
    user_agent: str | None,
) -> TokenPair:
    presented = parse_refresh_token(token)
    if presented is None:
        raise InvalidToken()
    # Locked: one session's refreshes, reuses and revocations happen one at a time.
    session = await db.scalar(
        select(Session).where(col(Session.id) == presented.session_id).with_for_update()
    )
    if session is None or not refresh_tokens.is_genuine(session, presented):
        raise InvalidToken()  # unknown, revoked, or forged: nothing to revoke
    now = utc_now()
    retried = (
        presented.generation == session.generation - 1
        and session.rotated_at is not None
        and now - session.rotated_at <= timedelta(seconds=grace_seconds)
    )
    if presented.generation != session.generation and not retried:
        await db.execute(delete(Session).where(col(Session.id) == session.id))
        record_event(
            db,
            EventType.refresh_reused,
            user_id=session.user_id,
            actor_id=None,  # the owner or a thief: nobody can tell which
            ip=ip,
            user_agent=user_agent,
            details={"session_id": str(session.id)},
        )
        raise ReusedRefreshToken()
    if not token_speaks_for(await db.get(User, session.user_id), session):
        raise InvalidToken()  # expired, or the user was deactivated
    if not retried:
        session.generation += 1
        session.rotated_at = now
    session.last_used_at = now
    await db.flush()
    return token_pair(session, access_tokens=access_tokens, refresh_tokens=refresh_tokens)


@router.post(
    "/auth/refresh",
    dependencies=[RateLimitedPerIP],
    responses=problem_responses(InvalidToken, TooManyRequests),
)
async def refresh_route(
    body: RefreshRequest,
    response: Response,
    db: SessionDep,
    access_tokens: AccessTokensDep,
    refresh_tokens: RefreshTokensDep,
    settings: SettingsDep,
    ip: ClientIP,
    user_agent: UserAgent,
) -> TokenPair:
    """Exchange a refresh token for a new token pair; the presented token is spent.

    A retry of the token spent last within REFRESH_REUSE_GRACE_SECONDS is answered; any
    other reuse ends the session for everyone holding it.
    """
    response.headers.update(NO_STORE_HEADERS)
    return await refresh(
        db,
        access_tokens=access_tokens,
        refresh_tokens=refresh_tokens,
        grace_seconds=settings.refresh_reuse_grace_seconds,
        token=body.refresh_token,
        ip=ip,
        user_agent=user_agent,
    )
