"""POST /api/v1/users/me/deactivate and POST /api/v1/users/{user_id}/deactivate (API.md).

A soft delete: the row stays (the email stays taken), `is_active` becomes false and
every session of the user ends, so all their access and refresh tokens fail at once.
Yourself: confirm with your current password (throttled like logins). Admins: anyone,
no body needed.
"""

from fastapi import APIRouter, Body
from sqlalchemy.ext.asyncio import AsyncSession

from kernel.db import SessionDep, outside_transaction
from kernel.deps import ClientIP, CurrentUser, GuessesDep, TargetUser, UserAgent
from kernel.errors import (
    Forbidden,
    InvalidCurrentPassword,
    InvalidInput,
    LastAdmin,
    ServerBusy,
    TooManyAttempts,
    UserNotFound,
    problem_responses,
)
from kernel.events import EventType, record_event
from kernel.fields import StrictInput
from kernel.guesses import PasswordGuesses
from kernel.passwords import CurrentPassword
from kernel.sessions import deactivate_account
from kernel.users import PrivateUser, User, ensure_not_last_admin, lock_user

router = APIRouter(tags=["users"])


class Deactivation(StrictInput):
    current_password: CurrentPassword


async def deactivate(
    session: AsyncSession,
    *,
    guesses: PasswordGuesses,
    actor: User,
    target: User,
    body: Deactivation | None,
    ip: str | None,
    user_agent: str | None,
) -> User:
    if target.id == actor.id:
        if body is None:
            # The same answer as /users/me/deactivate gives a missing body.
            raise InvalidInput.at(("body", "current_password"), "Field required", "missing")
        async with outside_transaction(session):
            await guesses.confirm(actor, body.current_password)
    await lock_user(session, target)
    if not target.is_active:
        return target  # idempotent: already done, nothing changes
    await ensure_not_last_admin(session, target)
    await deactivate_account(session, target)
    target.touch()
    await session.flush()
    record_event(
        session,
        EventType.deactivated,
        user_id=target.id,
        actor_id=actor.id,
        ip=ip,
        user_agent=user_agent,
    )
    return target


ERRORS = problem_responses(
    Forbidden, InvalidCurrentPassword, TooManyAttempts, UserNotFound, LastAdmin, ServerBusy
)


@router.post("/users/me/deactivate", responses=ERRORS)
async def deactivate_me_route(
    body: Deactivation,
    actor: CurrentUser,
    session: SessionDep,
    guesses: GuessesDep,
    ip: ClientIP,
    user_agent: UserAgent,
) -> PrivateUser:
    """Deactivate your own account (confirm with your current password).

    Every session ends at once and every mailed link or code dies. The account and its
    email stay; an administrator can reactivate it. Idempotent.
    """
    user = await deactivate(
        session,
        guesses=guesses,
        actor=actor,
        target=actor,
        body=body,
        ip=ip,
        user_agent=user_agent,
    )
    return PrivateUser.of(user)


@router.post("/users/{user_id}/deactivate", responses=ERRORS)
async def deactivate_user_route(
    target: TargetUser,
    actor: CurrentUser,
    session: SessionDep,
    guesses: GuessesDep,
    ip: ClientIP,
    user_agent: UserAgent,
    body: Deactivation | None = Body(
        default=None,
        description="Administrators deactivating someone else send no body (or null). "
        "For your own account current_password is required: without it, 422.",
    ),
) -> PrivateUser:
    """Deactivate a user: administrators need no body; for yourself, confirm your password.

    Every session of the user ends at once. The last active administrator cannot be
    deactivated (409 last_admin).
    """
    user = await deactivate(
        session,
        guesses=guesses,
        actor=actor,
        target=target,
        body=body,
        ip=ip,
        user_agent=user_agent,
    )
    return PrivateUser.of(user)
