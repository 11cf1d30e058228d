"""POST /api/v1/auth/logout: end the session of a refresh token (API.md, "logout").

Needs no access token (it may have expired) and ignores an Authorization header. The
session's refresh token and its access tokens fail at once. Idempotent: an unknown or
already revoked token also gets 204, so a client can always finish logging out.
"""

from fastapi import APIRouter, Response
from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from kernel.db import SessionDep
from kernel.deps import ClientIP, RefreshTokensDep, UserAgent
from kernel.events import EventType, record_event
from kernel.fields import StrictInput
from kernel.sessions import RefreshTokens, RefreshTokenValue, Session, parse_refresh_token

router = APIRouter(tags=["auth"])


class LogoutRequest(StrictInput):
    refresh_token: RefreshTokenValue


async def logout(
    db: AsyncSession,
    refresh_tokens: RefreshTokens,
    token: str,
    *,
    ip: str | None,
    user_agent: str | None,
) -> None:
    presented = parse_refresh_token(token)
    if presented is None:
        return
    session = await db.get(Session, presented.session_id)
    # Any genuine token of the session ends it, even a spent one: the client is leaving.
    if session is not None and refresh_tokens.is_genuine(session, presented):
        ended = await db.execute(delete(Session).where(col(Session.id) == session.id))
        if getattr(ended, "rowcount", 0):  # a racing logout of the same session: one event
            record_event(
                db,
                EventType.logged_out,
                user_id=session.user_id,
                actor_id=session.user_id,
                ip=ip,
                user_agent=user_agent,
                details={"session_id": str(session.id)},
            )


@router.post("/auth/logout", status_code=204, response_class=Response)
async def logout_route(
    body: LogoutRequest,
    db: SessionDep,
    refresh_tokens: RefreshTokensDep,
    ip: ClientIP,
    user_agent: UserAgent,
) -> None:
    """Log out: end this login's session (the user's other sessions stay).

    Needs no access token. Idempotent: an unknown or spent refresh token also gets 204.
    """
    await logout(db, refresh_tokens, body.refresh_token, ip=ip, user_agent=user_agent)
