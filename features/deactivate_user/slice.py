"""POST /api/v1/users/me/deactivate and POST /api/v1/users/{user_id}/deactivate (API.md).

A soft delete: the row stays (the email stays taken), `is_active` becomes false and
bumping `token_version` makes every access and refresh token of the user fail at once.
"""

import uuid

from fastapi import APIRouter, Body
from fastapi.exceptions import RequestValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from kernel.credentials import require_current_password
from kernel.db import SessionDep
from kernel.errors import (
    Forbidden,
    InvalidCurrentPassword,
    LastAdmin,
    ServerBusy,
    TooManyAttempts,
    UserNotFound,
    problem_responses,
)
from kernel.fields import CurrentPassword, StrictInput
from kernel.passwords import PasswordHashing
from kernel.security import Authorization, CurrentUser, PasswordsDep, SettingsDep
from kernel.settings import Settings
from kernel.users import PrivateUser, User, ensure_not_last_admin, lock_user

router = APIRouter(tags=["users"])


class Deactivation(StrictInput):
    current_password: CurrentPassword


async def deactivate(
    session: AsyncSession, *, authorized: Authorization, user_id: uuid.UUID
) -> User:
    user = await session.get(User, user_id)
    if user is None:
        raise UserNotFound()
    await lock_user(session, user)
    # A password check ran outside any transaction: the caller must still be authorized.
    await authorized.recheck(session)
    if not user.is_active:
        return user  # idempotent: already done, nothing changes
    await ensure_not_last_admin(session, user)
    user.deactivate()
    user.touch()
    await session.flush()
    return user


async def _confirm_password(
    session: AsyncSession,
    *,
    passwords: PasswordHashing,
    settings: Settings,
    user: User,
    body: Deactivation | None,
) -> None:
    if body is None:
        # The same answer as /users/me/deactivate gives a missing body.
        raise RequestValidationError(
            [{"loc": ("body", "current_password"), "msg": "Field required", "type": "missing"}]
        )
    await require_current_password(
        session,
        passwords=passwords,
        settings=settings,
        user=user,
        password=body.current_password,
    )


ERRORS = problem_responses(
    Forbidden, InvalidCurrentPassword, TooManyAttempts, UserNotFound, LastAdmin, ServerBusy
)


@router.post("/users/me/deactivate", responses=ERRORS)
async def deactivate_me_route(
    body: Deactivation,
    actor: CurrentUser,
    session: SessionDep,
    passwords: PasswordsDep,
    settings: SettingsDep,
) -> PrivateUser:
    """Deactivate your own account (confirm with your current password)."""
    authorized = Authorization.of(actor)
    await _confirm_password(session, passwords=passwords, settings=settings, user=actor, body=body)
    return PrivateUser.of(await deactivate(session, authorized=authorized, user_id=actor.id))


@router.post("/users/{user_id}/deactivate", responses=ERRORS)
async def deactivate_user_route(
    user_id: uuid.UUID,
    actor: CurrentUser,
    session: SessionDep,
    passwords: PasswordsDep,
    settings: SettingsDep,
    body: Deactivation | None = Body(default=None),
) -> PrivateUser:
    """Deactivate a user: administrators need no body; for yourself, confirm your password."""
    authorized = Authorization.of(actor)
    if user_id == actor.id:
        await _confirm_password(
            session, passwords=passwords, settings=settings, user=actor, body=body
        )
    elif not actor.is_superuser:
        raise Forbidden("Only administrators may deactivate other users.")
    return PrivateUser.of(await deactivate(session, authorized=authorized, user_id=user_id))
