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
from kernel.deps import AdministeredUser, CurrentUser
from kernel.errors import Forbidden, ProblemError, UserNotFound, problem_responses
from kernel.sessions import Session

router = APIRouter(tags=["sessions"])


class SessionNotFound(ProblemError):
    status, code, detail = 404, "session_not_found", "No such session."


async def revoke_session(db: AsyncSession, *, user_id: uuid.UUID, session_id: uuid.UUID) -> None:
    ended = await db.execute(
        delete(Session).where(col(Session.id) == session_id, col(Session.user_id) == user_id)
    )
    if not getattr(ended, "rowcount", 0):
        raise SessionNotFound()


@router.delete(
    "/users/me/sessions/{session_id}",
    status_code=204,
    response_class=Response,
    responses=problem_responses(SessionNotFound),
)
async def revoke_my_session_route(session_id: uuid.UUID, user: CurrentUser, db: SessionDep) -> None:
    """End one of your sessions (log that device out)."""
    await revoke_session(db, user_id=user.id, session_id=session_id)


@router.delete(
    "/users/{user_id}/sessions/{session_id}",
    status_code=204,
    response_class=Response,
    responses=problem_responses(Forbidden, UserNotFound, SessionNotFound),
)
async def revoke_user_session_route(
    session_id: uuid.UUID, target: AdministeredUser, db: SessionDep
) -> None:
    """End one of a user's sessions (administrators only)."""
    await revoke_session(db, user_id=target.id, session_id=session_id)
