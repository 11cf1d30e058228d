"""PATCH /api/v1/users/me and PATCH /api/v1/users/{user_id}: partial update (API.md).

Self-service changes of email or password (and an admin deactivating themself) need the
current password, throttled like logins; admins may edit anyone and set `is_active` /
`is_superuser`. The slow part (argon2) runs first, outside any transaction; then the
row is locked, `If-Match` is checked against it, and the change is applied.

A new email is unverified: a verification goes to it, a notice to the old address
(mail/email_changed.*), and secrets mailed to the old address die. A new password
ends every session and queues the "password changed" notice.
"""

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Header, Response
from pydantic import Field, WithJsonSchema
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from kernel.account_mail import queue_password_changed, queue_verification
from kernel.db import SessionDep, outside_transaction
from kernel.deps import (
    ClientIP,
    CurrentUser,
    EmailTokensDep,
    GuessesDep,
    HashingDep,
    SendLimitsDep,
    SettingsDep,
    TargetUser,
    UserAgent,
)
from kernel.email_tokens import EmailTokens, revoke_email_tokens
from kernel.errors import (
    EmailTaken,
    Forbidden,
    InvalidCurrentPassword,
    LastAdmin,
    PreconditionFailed,
    ServerBusy,
    TooManyAttempts,
    UserNotFound,
    problem_responses,
)
from kernel.events import EventType, record_event
from kernel.fields import AvatarUrl, Bio, Email, Name, StrictInput
from kernel.guesses import PasswordGuesses
from kernel.hashing import PasswordHashing
from kernel.mail import queue_mail
from kernel.passwords import CurrentPassword, Password, check_new_password
from kernel.send_limits import SendLimits, TooManyRequests
from kernel.sessions import deactivate_account, end_sessions
from kernel.settings import Settings
from kernel.users import (
    PrivateUser,
    User,
    ensure_not_last_admin,
    etag,
    lock_user,
    private_view_with_etag,
)

router = APIRouter(tags=["users"])
MAIL_TEMPLATES = Path(__file__).parent / "mail"
ADMIN_ONLY = frozenset({"is_active", "is_superuser"})
NEEDS_CURRENT_PASSWORD = frozenset({"email", "password"})


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


def _omittable() -> Any:
    """May be left out (stays as it is) but not null: the schema shows no null default."""
    return Field(default=None, json_schema_extra=_no_default)


class UserUpdate(StrictInput):
    first_name: Name = _omittable()
    last_name: Name = _omittable()
    bio: Bio | None = None  # null clears
    avatar_url: AvatarUrl | None = None  # null clears
    email: Email = _omittable()
    password: Password = _omittable()
    current_password: CurrentPassword = _omittable()
    is_active: bool = _omittable()
    is_superuser: bool = _omittable()


def _check_precondition(if_match: str | None, user: User) -> None:
    """If-Match uses strong comparison (RFC 9110): a weak tag never matches."""
    if if_match is None:
        return
    tags = {tag.strip() for tag in if_match.split(",")}
    if "*" not in tags and etag(user) not in tags:
        raise PreconditionFailed()


def _needs_current_password(fields: set[str], update: UserUpdate) -> bool:
    return bool(fields & NEEDS_CURRENT_PASSWORD) or update.is_active is False


async def update_user(
    session: AsyncSession,
    *,
    guesses: PasswordGuesses,
    hashing: PasswordHashing,
    tokens: EmailTokens,
    limits: SendLimits,
    ip: str | None,
    user_agent: str | None,
    settings: Settings,
    actor: User,
    target: User,
    update: UserUpdate,
    if_match: str | None,
) -> User:
    _check_precondition(if_match, target)  # early, before any argon2 work
    fields = update.model_fields_set - {"current_password"}
    if fields & ADMIN_ONLY and not actor.is_superuser:
        raise Forbidden("Only administrators may change is_active or is_superuser.")
    changes: dict[str, Any] = {name: getattr(update, name) for name in fields - {"password"}}
    if "password" in fields:
        new_email = changes.get("email", target.email)
        check_new_password(
            update.password, email=new_email, min_length=settings.password_min_length
        )
    async with outside_transaction(session):
        if actor.id == target.id and _needs_current_password(fields, update):
            await guesses.confirm(target, update.current_password)
        if "password" in fields:
            changes["password_hash"] = await hashing.hash(update.password)
    # Locked, and the caller confirmed under the lock; If-Match against the locked row.
    await lock_user(session, target)
    _check_precondition(if_match, target)
    changes = {name: value for name, value in changes.items() if getattr(target, name) != value}
    if not changes:
        return target
    if "email" in changes:
        # An email change mails a new code: limited like asking for one, or a guesser
        # could change back and forth for a fresh budget, and flood any address.
        await limits.check_ip(session, ip)
        wait = await limits.address_allows(session, "email_verification", changes["email"])
        if wait:
            raise TooManyRequests(headers={"Retry-After": str(wait)})
    if changes.get("is_superuser") is False or changes.get("is_active") is False:
        await ensure_not_last_admin(session, target)
    activation = changes.pop("is_active", None)
    if activation is False:
        await deactivate_account(session, target)
    elif activation is True:
        target.is_active = True  # sessions ended by the deactivation stay ended
    if "password_hash" in changes:
        await end_sessions(session, target.id)  # every session, the caller's included
    old_email = target.email
    for name, value in changes.items():
        setattr(target, name, value)
    if "email" in changes:
        target.email_verified = False
    target.touch()
    try:
        await session.flush()
    except IntegrityError:
        raise EmailTaken() from None
    if "email" in changes:
        await _mail_email_change(session, tokens, settings, target, old_email)
    if "password_hash" in changes:
        queue_password_changed(session, target)
    for kind in _events_of(changes, activation):
        record_event(
            session, kind, user_id=target.id, actor_id=actor.id, ip=ip, user_agent=user_agent
        )
    return target


def _events_of(changes: dict[str, Any], activation: bool | None) -> list[EventType]:
    """The security events of an applied change (no addresses: the user_id says whose)."""
    events = []
    if "password_hash" in changes:
        events.append(EventType.password_changed)
    if "email" in changes:
        events.append(EventType.email_changed)
    if activation is not None:
        events.append(EventType.reactivated if activation else EventType.deactivated)
    if "is_superuser" in changes:
        events.append(EventType.promoted if changes["is_superuser"] else EventType.demoted)
    return events


async def _mail_email_change(
    session: AsyncSession, tokens: EmailTokens, settings: Settings, user: User, old_email: str
) -> None:
    await revoke_email_tokens(session, user.id)  # a reset mailed to the old address dies
    queue_mail(
        session,
        to=old_email,
        templates=MAIL_TEMPLATES,
        kind="email_changed",
        user_id=user.id,
        context={"new_email": _masked(user.email)},
    )
    await queue_verification(session, tokens=tokens, settings=settings, user=user)


def _masked(email: str) -> str:
    """n***@example.com: enough for the owner to recognise, not to hand out an address."""
    local, _, domain = email.rpartition("@")
    return f"{local[:1]}***@{domain}"


ERRORS = problem_responses(
    Forbidden,
    InvalidCurrentPassword,
    TooManyAttempts,
    UserNotFound,
    EmailTaken,
    LastAdmin,
    PreconditionFailed,
    ServerBusy,
    TooManyRequests,
)
# RFC 9110's If-Match: "*" or a list of entity tags. Documented as that, never as null:
# absent means unconditional, and any other value (`null` too) matches no ETag: 412.
IF_MATCH_SCHEMA = {
    "type": "string",
    "pattern": r'^(\*|(W/)?"[!#-~]*"(\s*,\s*(W/)?"[!#-~]*")*)$',
    "description": "Update only if the user's ETag is one of these (strong comparison); "
    "412 precondition_failed otherwise.",
}
IfMatch = Annotated[
    str | None,
    WithJsonSchema(IF_MATCH_SCHEMA),
    Header(description="Update only if the user's ETag matches (412 otherwise)."),
]


@router.patch("/users/me", responses=ERRORS)
async def update_me_route(
    update: UserUpdate,
    actor: CurrentUser,
    session: SessionDep,
    guesses: GuessesDep,
    hashing: HashingDep,
    tokens: EmailTokensDep,
    limits: SendLimitsDep,
    ip: ClientIP,
    user_agent: UserAgent,
    settings: SettingsDep,
    response: Response,
    if_match: IfMatch = None,
) -> PrivateUser:
    """Update your own account.

    Partial: send only what changes. Changing email or password needs current_password;
    a password change ends every session. Send If-Match to refuse a change made
    meanwhile.
    """
    # The same as PATCH /users/{your id}.
    return await update_user_route(
        update=update,
        target=actor,
        actor=actor,
        session=session,
        guesses=guesses,
        hashing=hashing,
        tokens=tokens,
        limits=limits,
        ip=ip,
        user_agent=user_agent,
        settings=settings,
        response=response,
        if_match=if_match,
    )


@router.patch("/users/{user_id}", responses=ERRORS)
async def update_user_route(
    update: UserUpdate,
    target: TargetUser,
    actor: CurrentUser,
    session: SessionDep,
    guesses: GuessesDep,
    hashing: HashingDep,
    tokens: EmailTokensDep,
    limits: SendLimitsDep,
    ip: ClientIP,
    user_agent: UserAgent,
    settings: SettingsDep,
    response: Response,
    if_match: IfMatch = None,
) -> PrivateUser:
    """Update a user: yourself, or anyone if you are an administrator.

    Administrators need no current_password and may set is_active and is_superuser; the
    last active administrator cannot be removed.
    """
    user = await update_user(
        session,
        guesses=guesses,
        hashing=hashing,
        tokens=tokens,
        limits=limits,
        ip=ip,
        user_agent=user_agent,
        settings=settings,
        actor=actor,
        target=target,
        update=update,
        if_match=if_match,
    )
    return private_view_with_etag(user, response)
