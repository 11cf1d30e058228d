"""GET /api/v1/users/me and GET /api/v1/users/{user_id} (API.md, "GET /api/v1/users/...").

The user themself and admins see the private view with an ETag; other signed-in users
see the public view of active users only, so deactivated accounts stay hidden.
"""

import uuid

from fastapi import APIRouter, Response
from sqlalchemy.ext.asyncio import AsyncSession

from kernel.db import SessionDep
from kernel.deps import CurrentUser, may_manage
from kernel.errors import UserNotFound, problem_responses
from kernel.users import PrivateUser, PublicUser, User, find_user, private_view_with_etag

router = APIRouter(tags=["users"])


async def get_user(session: AsyncSession, viewer: User, user_id: uuid.UUID) -> User:
    user = viewer if user_id == viewer.id else await find_user(session, user_id)
    # Deactivated accounts are hidden from everyone who may not manage them.
    if user is None or not (user.is_active or may_manage(viewer, user_id)):
        raise UserNotFound()
    return user


@router.get("/users/me")
async def get_me_route(user: CurrentUser, response: Response) -> PrivateUser:
    """Read your own account."""
    return private_view_with_etag(user, response)


@router.get("/users/{user_id}", responses=problem_responses(UserNotFound))
async def get_user_route(
    user_id: uuid.UUID, viewer: CurrentUser, session: SessionDep, response: Response
) -> PrivateUser | PublicUser:
    """Read a user: the private view for yourself and admins, the public view otherwise."""
    user = await get_user(session, viewer, user_id)
    if may_manage(viewer, user.id):
        return private_view_with_etag(user, response)
    return PublicUser.of(user)
