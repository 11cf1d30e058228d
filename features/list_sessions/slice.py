"""GET /api/v1/users/me/sessions and GET /api/v1/users/{user_id}/sessions (API.md, "Sessions").

A session is one login: the device it came from, when it was last used, when it
expires. Live sessions only, newest first; `current` marks the caller's own.
"""

from fastapi import APIRouter
from pydantic import BaseModel

from kernel.db import SessionDep
from kernel.deps import AdministeredUser, CurrentSession
from kernel.errors import Forbidden, UserNotFound, problem_responses
from kernel.sessions import SessionView, live_sessions

router = APIRouter(tags=["sessions"])


class SessionList(BaseModel):
    items: list[SessionView]


@router.get("/users/me/sessions")
async def list_my_sessions_route(current: CurrentSession, db: SessionDep) -> SessionList:
    """List your live sessions (one per login), newest first."""
    sessions = await live_sessions(db, current.user_id)
    return SessionList(items=[SessionView.of(each, current_id=current.id) for each in sessions])


@router.get("/users/{user_id}/sessions", responses=problem_responses(Forbidden, UserNotFound))
async def list_user_sessions_route(
    target: AdministeredUser, current: CurrentSession, db: SessionDep
) -> SessionList:
    """List a user's live sessions (administrators only)."""
    sessions = await live_sessions(db, target.id)
    return SessionList(items=[SessionView.of(each, current_id=current.id) for each in sessions])
