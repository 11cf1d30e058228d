"""POST /api/v1/auth/verify-email and POST /api/v1/users/me/verification-email (API.md,
"Email: recovery, verification, notices").

The mail itself (kernel/mail_templates/email_verification.*) is shared: register and an
email change queue it too. A token or code proves only the address it was mailed to: once
the account's email changes, it is refused.
"""

from fastapi import APIRouter, Response

from kernel.account_mail import queue_verification
from kernel.db import SessionDep
from kernel.deps import (
    ClientIP,
    CurrentUser,
    EmailTokensDep,
    RateLimitedPerIP,
    SendLimitsDep,
    SettingsDep,
    UserAgent,
)
from kernel.email_tokens import MailedProof
from kernel.errors import ProblemError, problem_responses
from kernel.events import EventType, record_event
from kernel.send_limits import TooManyRequests

router = APIRouter(tags=["auth"])


class InvalidVerificationToken(ProblemError):
    status, code = 400, "invalid_verification_token"
    detail = "This verification link or code is unknown, used or expired."


class AlreadyVerified(ProblemError):
    status, code, detail = 409, "already_verified", "This email address is already verified."


@router.post(
    "/auth/verify-email",
    status_code=204,
    response_class=Response,
    dependencies=[RateLimitedPerIP],
    responses=problem_responses(InvalidVerificationToken, TooManyRequests),
)
async def verify_email_route(
    body: MailedProof,
    session: SessionDep,
    tokens: EmailTokensDep,
    ip: ClientIP,
    user_agent: UserAgent,
) -> Response:
    """Confirm an email address with the mailed token or code.

    Send the token from the link, or the email and the 6-digit code.
    """
    found = await tokens.find(session, "email_verification", body)
    user = await tokens.redeem(session, found) if found else None
    if user is None:
        raise InvalidVerificationToken()
    if not user.email_verified:
        user.email_verified = True
        user.touch()
        record_event(
            session,
            EventType.email_verified,
            user_id=user.id,
            actor_id=user.id,  # the mailed secret proves the user
            ip=ip,
            user_agent=user_agent,
        )
    return Response(status_code=204)


@router.post(
    "/users/me/verification-email",
    status_code=202,
    response_class=Response,
    dependencies=[RateLimitedPerIP],
    responses=problem_responses(AlreadyVerified, TooManyRequests),
)
async def send_verification_email_route(
    user: CurrentUser,
    session: SessionDep,
    tokens: EmailTokensDep,
    limits: SendLimitsDep,
    settings: SettingsDep,
    ip: ClientIP,
) -> Response:
    """Send a new verification mail to your address; earlier links and codes stop working.

    Limited per address and per client IP (429 too_many_requests).
    """
    if user.email_verified:
        raise AlreadyVerified()
    await limits.check_ip(session, ip)
    wait = await limits.address_allows(session, "email_verification", user.email)
    if wait:
        raise TooManyRequests(headers={"Retry-After": str(wait)})
    await queue_verification(session, tokens=tokens, settings=settings, user=user)
    return Response(status_code=202)
