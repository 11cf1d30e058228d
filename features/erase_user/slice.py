"""POST /api/v1/users/me/erase and POST /api/v1/users/{user_id}/erase (API.md v1.1,
"Account lifecycle and audit trail").

Erasure, unlike deactivation, cannot be undone. In one transaction (a crash part-way
leaves the account whole, never half gone):
- every row of every table with a foreign key to `users` that names the account goes
  (sessions, mailed tokens and codes, mails, and whatever table a new slice adds), and
  so do the mails queued to its address and the counters keyed by it;
- its security events stay, with their IP, user agent and personal details removed
  (`kernel.events.scrub_events`), and a `deleted` event is added;
- the `users` row stays as a tombstone holding nothing personal: its id is never used
  again, and `kernel.users.find_user` makes it 404 everywhere. The email is free to
  register again at once.
Yourself: confirm with your current password (throttled like logins). Admins: anyone,
no body needed. The last active admin cannot be erased.

With SMTP configured, a notice goes to the old address. It is the one personal trace
left, and only until it has been sent (or has failed for good): the sender then deletes
it rather than keeping it like other mails.
"""

from pathlib import Path

from fastapi import APIRouter, Body, Response
from sqlalchemy import delete, or_
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from kernel.db import SessionDep, outside_transaction, utc_now
from kernel.deps import ClientIP, CurrentUser, GuessesDep, SettingsDep, TargetUser, UserAgent
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
from kernel.events import EventType, SecurityEvent, record_event, scrub_events
from kernel.fields import StrictInput
from kernel.guesses import PasswordGuesses, forget_failures
from kernel.mail import OutboxMail, queue_mail
from kernel.passwords import CurrentPassword
from kernel.send_limits import forget_address
from kernel.settings import Settings
from kernel.users import (
    User,
    empty_of_personal_data,
    ensure_not_last_admin,
    lock_user,
    tables_naming_users,
)

router = APIRouter(tags=["users"])
MAIL_TEMPLATES = Path(__file__).parent / "mail"
# Kept and emptied rather than deleted: the tombstone, and the audit trail.
KEPT_TABLES = {User.__tablename__, SecurityEvent.__tablename__}


class Erasure(StrictInput):
    current_password: CurrentPassword


async def erase(
    session: AsyncSession,
    *,
    guesses: PasswordGuesses,
    settings: Settings,
    actor: User,
    target: User,
    body: Erasure | None,
    ip: str | None,
    user_agent: str | None,
) -> None:
    erasing_yourself = target.id == actor.id
    if erasing_yourself:
        if body is None:
            # The same answer as /users/me/erase gives a missing body.
            raise InvalidInput.at(("body", "current_password"), "Field required", "missing")
        async with outside_transaction(session):
            await guesses.confirm(actor, body.current_password)
    await lock_user(session, target)  # 404 if a concurrent request erased it meanwhile
    await ensure_not_last_admin(session, target)

    email = target.email
    for table, naming in tables_naming_users():
        if table.name not in KEPT_TABLES:
            await session.execute(delete(table).where(or_(*(c == target.id for c in naming))))
    await session.execute(delete(OutboxMail).where(col(OutboxMail.to_address) == email))
    await forget_failures(session, email)
    await forget_address(session, email)
    # The tombstone first: the PostgreSQL trigger lets events lose their personal
    # fields only once the account they name is erased.
    empty_of_personal_data(target, utc_now())
    await session.flush()
    await scrub_events(session, target.id, email)

    if settings.resolved_mail_backend == "smtp":
        # No user_id: nothing links it to the tombstone; deleted once it has gone.
        queue_mail(
            session,
            to=email,
            templates=MAIL_TEMPLATES,
            kind="account_erased",
            context={},
            forget_when_done=True,
        )
    # An admin's address and agent are the admin's; the erased user's own are not kept.
    record_event(
        session,
        EventType.deleted,
        user_id=target.id,
        actor_id=actor.id,
        ip=None if erasing_yourself else ip,
        user_agent=None if erasing_yourself else user_agent,
    )


ERRORS = problem_responses(
    Forbidden, InvalidCurrentPassword, TooManyAttempts, UserNotFound, LastAdmin, ServerBusy
)


@router.post("/users/me/erase", status_code=204, response_class=Response, responses=ERRORS)
async def erase_me_route(
    body: Erasure,
    actor: CurrentUser,
    session: SessionDep,
    guesses: GuessesDep,
    settings: SettingsDep,
    ip: ClientIP,
    user_agent: UserAgent,
) -> Response:
    """Erase your own account for good (confirm with your current password).

    In one transaction: personal fields, sessions, pending links and codes, and mails
    are deleted; security events stay without their personal fields. The id answers 404
    from then on; the email may register again at once.
    """
    await erase(
        session,
        guesses=guesses,
        settings=settings,
        actor=actor,
        target=actor,
        body=body,
        ip=ip,
        user_agent=user_agent,
    )
    return Response(status_code=204)


@router.post("/users/{user_id}/erase", status_code=204, response_class=Response, responses=ERRORS)
async def erase_user_route(
    target: TargetUser,
    actor: CurrentUser,
    session: SessionDep,
    guesses: GuessesDep,
    settings: SettingsDep,
    ip: ClientIP,
    user_agent: UserAgent,
    body: Erasure | None = Body(
        default=None,
        description="Administrators erasing someone else send no body (or null). "
        "For your own account current_password is required: without it, 422.",
    ),
) -> Response:
    """Erase a user for good: administrators need no body; for yourself, confirm your password.

    The same erasure as POST /users/me/erase. The last active administrator cannot be
    erased (409 last_admin).
    """
    await erase(
        session,
        guesses=guesses,
        settings=settings,
        actor=actor,
        target=target,
        body=body,
        ip=ip,
        user_agent=user_agent,
    )
    return Response(status_code=204)
