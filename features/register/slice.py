"""POST /api/v1/auth/register: create an account (API.md, "POST /api/v1/auth/register")."""

from fastapi import APIRouter, Response

from kernel.db import SessionDep
from kernel.deps import HashingDep, SettingsDep
from kernel.errors import EmailTaken, ServerBusy, problem_responses
from kernel.fields import AvatarUrl, Bio, Email, Name, StrictInput
from kernel.passwords import Password
from kernel.slices import API_PREFIX
from kernel.users import PrivateUser, create_user

router = APIRouter(tags=["auth"])


class Registration(StrictInput):
    email: Email
    password: Password
    first_name: Name
    last_name: Name
    bio: Bio | None = None
    avatar_url: AvatarUrl | None = None


@router.post(
    "/auth/register",
    status_code=201,
    responses=problem_responses(EmailTaken, ServerBusy),
)
async def register_route(
    form: Registration,
    response: Response,
    session: SessionDep,
    hashing: HashingDep,
    settings: SettingsDep,
) -> PrivateUser:
    """Register a new account."""
    user = await create_user(
        session,
        hashing=hashing,
        min_password_length=settings.password_min_length,
        **form.model_dump(),
    )
    response.headers["Location"] = f"{API_PREFIX}/users/{user.id}"
    return PrivateUser.of(user)
