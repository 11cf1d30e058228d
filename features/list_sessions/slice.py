"""GET /api/v1/users/me/sessions and GET /api/v1/users/{user_id}/sessions (API.md, "Sessions").

A session is one login: the device it came from, when it was last used, when it
expires. Live sessions only, newest first; `current` marks the caller's own.
"""

import uuid

from fastapi import APIRouter
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from kernel.db import SessionDep, utc_now
from kernel.deps import AdministeredUser, CurrentSession
from kernel.errors import Forbidden, UserNotFound, problem_responses
from kernel.sessions import Session
from kernel.users import Timestamp

router = APIRouter(tags=["sessions"])


async def live_sessions(db: AsyncSession, user_id: uuid.UUID) -> list[Session]:
    """Newest first."""
    rows = await db.scalars(
        select(Session)
        .where(col(Session.user_id) == user_id, col(Session.expires_at) > utc_now())
        .order_by(col(Session.created_at).desc(), col(Session.id).desc())
    )
    return list(rows.all())


class SessionView(BaseModel):
    """A session as its user (or an admin) sees it."""

    id: uuid.UUID
    created_at: Timestamp
    last_used_at: Timestamp
    expires_at: Timestamp
    user_agent: str | None
    ip: str | None
    current: bool

    @classmethod
    def of(cls, session: Session, *, current_id: uuid.UUID | None) -> "SessionView":
        return cls(
            id=session.id,
            created_at=session.created_at,
            last_used_at=session.last_used_at,
            expires_at=session.expires_at,
            user_agent=session.user_agent,
            ip=session.ip,
            current=session.id == current_id,
        )


class SessionList(BaseModel):
    items: list[SessionView]


@router.get("/users/me/sessions")
async def list_my_sessions_route(current: CurrentSession, db: SessionDep) -> SessionList:
    """List your live sessions (one per login), newest first.

    `current` marks the session of the calling token.
    """
    sessions = await live_sessions(db, current.user_id)
    return SessionList(items=[SessionView.of(each, current_id=current.id) for each in sessions])


@router.get("/users/{user_id}/sessions", responses=problem_responses(Forbidden, UserNotFound))
async def list_user_sessions_route(
    target: AdministeredUser, current: CurrentSession, db: SessionDep
) -> SessionList:
    """List a user's live sessions (administrators only).

    The same view as GET /users/me/sessions, for any user.
    """
    sessions = await live_sessions(db, target.id)
    return SessionList(items=[SessionView.of(each, current_id=current.id) for each in sessions])
