"""POST /api/v1/auth/register: create an account (API.md, "POST /api/v1/auth/register").

The new address is unverified; a verification mail is queued with the account.
"""

from fastapi import APIRouter, Response

from kernel.account_mail import queue_verification
from kernel.db import SessionDep
from kernel.deps import (
    ClientIP,
    EmailTokensDep,
    HashingDep,
    RateLimitedPerIP,
    SettingsDep,
    UserAgent,
)
from kernel.errors import EmailTaken, ServerBusy, problem_responses
from kernel.events import EventType, record_event
from kernel.send_limits import TooManyRequests
from kernel.slices import API_PREFIX
from kernel.users import PrivateUser, Registration, create_user

router = APIRouter(tags=["auth"])


@router.post(
    "/auth/register",
    status_code=201,
    dependencies=[RateLimitedPerIP],
    responses=problem_responses(EmailTaken, TooManyRequests, ServerBusy),
)
async def register_route(
    form: Registration,
    response: Response,
    session: SessionDep,
    hashing: HashingDep,
    tokens: EmailTokensDep,
    settings: SettingsDep,
    ip: ClientIP,
    user_agent: UserAgent,
) -> PrivateUser:
    """Register a new account.

    Returns the new account (201, with Location) and queues a verification mail. The
    email is case-folded; a taken one is 409 email_taken.
    """
    user = await create_user(
        session, form, hashing=hashing, min_password_length=settings.password_min_length
    )
    await queue_verification(session, tokens=tokens, settings=settings, user=user)
    record_event(
        session,
        EventType.registered,
        user_id=user.id,
        actor_id=user.id,
        ip=ip,
        user_agent=user_agent,
    )
    response.headers["Location"] = f"{API_PREFIX}/users/{user.id}"
    return PrivateUser.of(user)
