"""POST /api/v1/users/me/deactivate and POST /api/v1/users/{user_id}/deactivate (API.md).

A soft delete: the row stays (the email stays taken), `is_active` becomes false and
bumping `token_version` makes every access and refresh token of the user fail at once.
"""

import uuid

from fastapi import APIRouter, Body
from sqlalchemy.ext.asyncio import AsyncSession

from kernel.db import SessionDep
from kernel.errors import (
    Forbidden,
    InvalidCurrentPassword,
    LastAdmin,
    ServerBusy,
    UserNotFound,
    problem_responses,
)
from kernel.fields import CurrentPassword, StrictInput
from kernel.passwords import PasswordHashing
from kernel.security import CurrentUser, PasswordsDep
from kernel.users import PrivateUser, User, ensure_not_last_admin

router = APIRouter(tags=["users"])


class Deactivation(StrictInput):
    current_password: CurrentPassword


async def deactivate(session: AsyncSession, user: User) -> User:
    if not user.is_active:
        return user  # idempotent: already done, nothing changes
    await ensure_not_last_admin(session, user)
    user.is_active = False
    user.revoke_tokens()
    user.touch()
    await session.flush()
    return user


async def _confirm_password(
    passwords: PasswordHashing, user: User, body: Deactivation | None
) -> None:
    if body is None or not await passwords.verify(user.password_hash, body.current_password):
        raise InvalidCurrentPassword()


ERRORS = problem_responses(Forbidden, InvalidCurrentPassword, UserNotFound, LastAdmin, ServerBusy)


@router.post("/users/me/deactivate", responses=ERRORS)
async def deactivate_me_route(
    body: Deactivation, actor: CurrentUser, session: SessionDep, passwords: PasswordsDep
) -> PrivateUser:
    """Deactivate your own account (confirm with your current password)."""
    await _confirm_password(passwords, actor, body)
    return PrivateUser.of(await deactivate(session, actor))


@router.post("/users/{user_id}/deactivate", responses=ERRORS)
async def deactivate_user_route(
    user_id: uuid.UUID,
    actor: CurrentUser,
    session: SessionDep,
    passwords: PasswordsDep,
    body: Deactivation | None = Body(default=None),
) -> PrivateUser:
    """Deactivate a user: administrators need no body; for yourself, confirm your password."""
    if user_id == actor.id:
        await _confirm_password(passwords, actor, body)
        return PrivateUser.of(await deactivate(session, actor))
    if not actor.is_superuser:
        raise Forbidden("Only administrators may deactivate other users.")
    user = await session.get(User, user_id)
    if user is None:
        raise UserNotFound()
    return PrivateUser.of(await deactivate(session, user))
