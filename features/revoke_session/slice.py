"""DELETE /api/v1/users/me/sessions/{session_id} and, for admins,
DELETE /api/v1/users/{user_id}/sessions/{session_id} (API.md, "Sessions").

Ending a session makes its refresh token and its access tokens fail on their next use,
in every process. A session that is unknown, or not the user's, is 404 either way, so
nobody learns whether another user's session id exists.
"""

import uuid

from fastapi import APIRouter, Response
from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from kernel.db import SessionDep
from kernel.deps import AdministeredUser, AdminUser, ClientIP, CurrentUser, UserAgent
from kernel.errors import Forbidden, ProblemError, UserNotFound, problem_responses
from kernel.events import EventType, record_event
from kernel.sessions import Session
from kernel.users import User

router = APIRouter(tags=["sessions"])


class SessionNotFound(ProblemError):
    status, code, detail = 404, "session_not_found", "No such session."


async def revoke_session(
    db: AsyncSession,
    *,
    actor: User,
    user_id: uuid.UUID,
    session_id: uuid.UUID,
    ip: str | None,
    user_agent: str | None,
) -> None:
    ended = await db.execute(
        delete(Session).where(col(Session.id) == session_id, col(Session.user_id) == user_id)
    )
    if not getattr(ended, "rowcount", 0):
        raise SessionNotFound()
    record_event(
        db,
        EventType.session_revoked,
        user_id=user_id,
        actor_id=actor.id,
        ip=ip,
        user_agent=user_agent,
        details={"session_id": str(session_id)},
    )


@router.delete(
    "/users/me/sessions/{session_id}",
    status_code=204,
    response_class=Response,
    responses=problem_responses(SessionNotFound),
)
async def revoke_my_session_route(
    session_id: uuid.UUID, user: CurrentUser, db: SessionDep, ip: ClientIP, user_agent: UserAgent
) -> None:
    """End one of your sessions (log that device out).

    Its refresh token and access tokens fail from the next request on, in every process.
    """
    await revoke_session(
        db, actor=user, user_id=user.id, session_id=session_id, ip=ip, user_agent=user_agent
    )


@router.delete(
    "/users/{user_id}/sessions/{session_id}",
    status_code=204,
    response_class=Response,
    responses=problem_responses(Forbidden, UserNotFound, SessionNotFound),
)
async def revoke_user_session_route(
    session_id: uuid.UUID,
    target: AdministeredUser,
    admin: AdminUser,
    db: SessionDep,
    ip: ClientIP,
    user_agent: UserAgent,
) -> None:
    """End one of a user's sessions (administrators only).

    The same as DELETE /users/me/sessions/{session_id}, for any user.
    """
    await revoke_session(
        db, actor=admin, user_id=target.id, session_id=session_id, ip=ip, user_agent=user_agent
    )
