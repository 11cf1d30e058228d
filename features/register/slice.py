"""POST /api/v1/auth/register: create an account (API.md, "POST /api/v1/auth/register")."""

from fastapi import APIRouter, Response
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from kernel.credentials import hash_new_password
from kernel.db import SessionDep
from kernel.errors import EmailTaken, ServerBusy, problem_responses
from kernel.fields import AvatarUrl, Bio, Email, Name, Password, StrictInput, check_new_password
from kernel.passwords import PasswordHashing
from kernel.security import PasswordsDep, SettingsDep
from kernel.settings import Settings
from kernel.slices import API_PREFIX
from kernel.users import PrivateUser, User

router = APIRouter(tags=["auth"])


class Registration(StrictInput):
    email: Email
    password: Password
    first_name: Name
    last_name: Name
    bio: Bio | None = None
    avatar_url: AvatarUrl | None = None


async def register(
    session: AsyncSession, *, passwords: PasswordHashing, settings: Settings, form: Registration
) -> User:
    check_new_password(
        form.password, email=form.email, min_length=settings.password_min_length, field="password"
    )
    # Hash before touching the database: no lock or connection is held during argon2.
    password_hash = await hash_new_password(session, passwords, form.password)
    user = User(
        **form.model_dump(exclude={"password"}),
        password_hash=password_hash,
    )
    session.add(user)
    try:
        # The unique constraint decides, so two concurrent registrations cannot both win.
        await session.flush()
    except IntegrityError:
        raise EmailTaken() from None
    return user


@router.post(
    "/auth/register",
    status_code=201,
    responses=problem_responses(EmailTaken, ServerBusy),
)
async def register_route(
    form: Registration,
    response: Response,
    session: SessionDep,
    passwords: PasswordsDep,
    settings: SettingsDep,
) -> PrivateUser:
    """Register a new account."""
    user = await register(session, passwords=passwords, settings=settings, form=form)
    response.headers["Location"] = f"{API_PREFIX}/users/{user.id}"
    return PrivateUser.of(user)
