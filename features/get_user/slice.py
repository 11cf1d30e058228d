"""GET /api/v1/users/me and GET /api/v1/users/{user_id} (API.md, "GET /api/v1/users/...").

The user themself and admins see the private view with an ETag; other signed-in users
see the public view of active users only, so deactivated accounts stay hidden.
"""

import uuid

from fastapi import APIRouter, Response
from sqlalchemy.ext.asyncio import AsyncSession

from kernel.db import SessionDep
from kernel.errors import UserNotFound, problem_responses
from kernel.security import CurrentUser
from kernel.users import PrivateUser, PublicUser, User, private_view

router = APIRouter(tags=["users"])


async def get_user(session: AsyncSession, viewer: User, user_id: uuid.UUID) -> User:
    if user_id == viewer.id:
        return viewer
    user = await session.get(User, user_id)
    if user is None or not (user.is_active or viewer.is_superuser):
        raise UserNotFound()
    return user


@router.get("/users/me")
async def get_me_route(user: CurrentUser, response: Response) -> PrivateUser:
    """Read your own account."""
    return private_view(user, response)


@router.get("/users/{user_id}", responses=problem_responses(UserNotFound))
async def get_user_route(
    user_id: uuid.UUID, viewer: CurrentUser, session: SessionDep, response: Response
) -> PrivateUser | PublicUser:
    """Read a user: the private view for yourself and admins, the public view otherwise."""
    user = await get_user(session, viewer, user_id)
    if viewer.is_superuser or user.id == viewer.id:
        return private_view(user, response)
    return PublicUser.of(user)
