"""POST /api/v1/auth/password-reset and POST /api/v1/auth/password-reset/confirm (API.md,
"Email: recovery, verification, notices").

A request answers 202 with an empty body whatever the address: known or not, active or
not, over its send limit or not. It runs the same statements for every address under
its limit: it counts the send and queues a mail to be prepared when sent. Only then,
in the sender, is the address looked up: a known, active account gets a token and the
mail (mail/password_reset.*); any other address is dropped unsent. So the answer's
timing does not tell who has an account (bench/reset_timing.py measures it).

The confirmation takes the link's token, or the email and the 6-digit code, and a new
password; it ends every session of the user, gives a fresh login-guess budget, marks
the address verified (the mail reached it) and queues the "password changed" notice.
"""

from pathlib import Path

from fastapi import APIRouter, Response
from sqlalchemy.ext.asyncio import AsyncSession

from kernel.account_mail import link, queue_password_changed
from kernel.db import SessionDep, outside_transaction
from kernel.deps import (
    ClientIP,
    EmailTokensDep,
    HashingDep,
    RateLimitedPerIP,
    SendLimitsDep,
    SettingsDep,
    UserAgent,
)
from kernel.email_tokens import MailedProof, revoke_email_tokens
from kernel.errors import ProblemError, ServerBusy, problem_responses
from kernel.events import EventType, record_event
from kernel.fields import Email, StrictInput
from kernel.guesses import forget_failures
from kernel.mail import (
    MailPreparation,
    OutboxMail,
    PreparedMail,
    prepare_when_sent,
    queue_mail_prepared_later,
    render_mail,
)
from kernel.passwords import Password, check_new_password
from kernel.send_limits import TooManyRequests
from kernel.sessions import end_sessions
from kernel.users import find_user_by_email, hold_user

router = APIRouter(tags=["auth"])
MAIL_TEMPLATES = Path(__file__).parent / "mail"
RESET_PAGE = "/account/reset-password"  # served by features/account_pages


class InvalidResetToken(ProblemError):
    status, code = 400, "invalid_reset_token"
    detail = "This reset link or code is unknown, used or expired."


class ResetRequest(StrictInput):
    email: Email


class ResetConfirmation(MailedProof):
    new_password: Password


@router.post(
    "/auth/password-reset",
    status_code=202,
    response_class=Response,
    dependencies=[RateLimitedPerIP],
    responses=problem_responses(TooManyRequests),
)
async def request_password_reset_route(
    body: ResetRequest, session: SessionDep, limits: SendLimitsDep, ip: ClientIP
) -> Response:
    """Ask for a password-reset mail. 202 for any address: nobody learns who has an account.

    For a known, active account a mail with a link and a 6-digit code is queued; the
    answer does not depend on it.
    """
    await limits.check_ip(session, ip)
    if not await limits.address_allows(session, "password_reset", body.email):  # any address
        queue_mail_prepared_later(session, to=body.email, kind="password_reset")
    return Response(status_code=202)


async def prepare_reset_mail(
    session: AsyncSession, mail: OutboxMail, preparation: MailPreparation
) -> PreparedMail | None:
    """In the sender: the reset mail for a known, active account; None for any other."""
    # Held: an erasure in progress must not be followed by a token for its tombstone.
    user = await hold_user(session, await find_user_by_email(session, mail.to_address))
    if user is None or not user.is_active:
        return None
    secret = await preparation.email_tokens.issue(session, user, "password_reset")
    # Here, not in the request: the request runs the same statements for every address.
    # Who asked is not known here (no IP): the mail is the system's doing.
    record_event(session, EventType.password_reset_requested, user_id=user.id, actor_id=None)
    settings = preparation.settings
    context = {
        "token": secret.token,
        "code": secret.code,
        "link": link(settings.password_reset_url, secret.token, settings=settings, page=RESET_PAGE),
        "minutes": settings.password_reset_ttl_seconds // 60,
    }
    return PreparedMail(render_mail(MAIL_TEMPLATES, "password_reset", context), user.id)


prepare_when_sent("password_reset", prepare_reset_mail)


@router.post(
    "/auth/password-reset/confirm",
    status_code=204,
    response_class=Response,
    dependencies=[RateLimitedPerIP],
    responses=problem_responses(InvalidResetToken, TooManyRequests, ServerBusy),
)
async def confirm_password_reset_route(
    body: ResetConfirmation,
    session: SessionDep,
    tokens: EmailTokensDep,
    hashing: HashingDep,
    settings: SettingsDep,
    ip: ClientIP,
    user_agent: UserAgent,
) -> Response:
    """Set a new password with the mailed token or code; every session of the user ends.

    Send the token from the link, or the email and the 6-digit code. Five wrong codes
    end the pending reset.
    """
    found = await tokens.find(session, "password_reset", body)
    if found is None:
        raise InvalidResetToken()
    check_new_password(
        body.new_password, email=found.email, min_length=settings.password_min_length
    )
    # Only a live token or a right code costs argon2 work; nothing is written before it.
    async with outside_transaction(session):
        password_hash = await hashing.hash(body.new_password)
    user = await tokens.redeem(session, found)
    if user is None:
        raise InvalidResetToken()
    user.password_hash = password_hash
    user.email_verified = True
    user.touch()
    await end_sessions(session, user.id)
    await revoke_email_tokens(session, user.id, "password_reset")
    await forget_failures(session, user.email)
    queue_password_changed(session, user)
    # The mailed secret proves the user: they are the actor.
    record_event(
        session,
        EventType.password_reset,
        user_id=user.id,
        actor_id=user.id,
        ip=ip,
        user_agent=user_agent,
    )
    return Response(status_code=204)
