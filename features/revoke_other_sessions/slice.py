"""POST /api/v1/users/me/sessions/revoke-others: log out everywhere else (API.md).

Every session of the caller but the one of the calling access token ends: those
refresh tokens and access tokens fail on their next use, in every process.
"""

from fastapi import APIRouter, Response

from kernel.db import SessionDep
from kernel.deps import CurrentSession
from kernel.sessions import end_sessions

router = APIRouter(tags=["sessions"])


@router.post("/users/me/sessions/revoke-others", status_code=204, response_class=Response)
async def revoke_other_sessions_route(current: CurrentSession, db: SessionDep) -> None:
    """End every session of yours but this one."""
    await end_sessions(db, current.user_id, keep=current.id)
