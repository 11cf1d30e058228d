"""POST /api/v1/users/me/sessions/revoke-others: log out everywhere else (API.md).

Every session of the caller but the one of the calling access token ends: those
refresh tokens and access tokens fail on their next use, in every process. Each ended
session gets its `session_revoked` event.
"""

from fastapi import APIRouter, Response

from kernel.db import SessionDep
from kernel.deps import ClientIP, CurrentSession, UserAgent
from kernel.events import EventType, record_event
from kernel.sessions import end_sessions

router = APIRouter(tags=["sessions"])


@router.post("/users/me/sessions/revoke-others", status_code=204, response_class=Response)
async def revoke_other_sessions_route(
    current: CurrentSession, db: SessionDep, ip: ClientIP, user_agent: UserAgent
) -> None:
    """End every session of yours but this one.

    Every other device is logged out on its next request.
    """
    # One event per session ended (at most MAX_SESSIONS_PER_USER), each naming it.
    for ended in await end_sessions(db, current.user_id, keep=current.id):
        record_event(
            db,
            EventType.session_revoked,
            user_id=current.user_id,
            actor_id=current.user_id,
            ip=ip,
            user_agent=user_agent,
            details={"session_id": str(ended)},
        )
