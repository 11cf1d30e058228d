"""POST /api/v1/auth/login: exchange email and password for a token pair.

API.md, "POST /api/v1/auth/login": OAuth2 password form or JSON; one 401 for an unknown
email and a wrong password (same body, same argon2 work); 403 for a deactivated account;
per-email throttling kept in the database; weaker stored hashes upgraded on success.
"""

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import ConfigDict, ValidationError
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from kernel.db import SessionDep, outside_transaction, utc_now
from kernel.deps import (
    AccessTokensDep,
    ClientIP,
    GuessesDep,
    HashingDep,
    RateLimitedPerIP,
    RefreshTokensDep,
    SettingsDep,
    UserAgent,
)
from kernel.errors import (
    InvalidInput,
    ProblemError,
    ServerBusy,
    TooManyAttempts,
    UnsupportedMediaType,
    problem_responses,
    validation_issues,
)
from kernel.events import Details, EventType, record_event
from kernel.fields import Email, StrictInput
from kernel.guesses import LockedOut, PasswordGuesses
from kernel.hashing import PasswordHashing
from kernel.media_types import is_json, media_type
from kernel.passwords import CurrentPassword
from kernel.send_limits import TooManyRequests
from kernel.sessions import (
    NO_STORE_HEADERS,
    USER_AGENT_MAX_LENGTH,
    RefreshTokens,
    Session,
    TokenPair,
    token_pair,
)
from kernel.settings import Settings
from kernel.tokens import AccessTokens
from kernel.users import User, find_user_by_email, hold_user

router = APIRouter(tags=["auth"])
FORM_MEDIA_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


class Credentials(StrictInput):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"email": "ada@example.com", "password": "analytical engine 1843"}]
        }
    )

    email: Email
    password: CurrentPassword


@dataclass(frozen=True)
class Device:
    """What the session list shows of where a login came from."""

    user_agent: str | None
    ip: str | None


# A refused login records its event and answers an error: the event must commit all
# the same (keeps_changes). It is the only write of the transaction by then: the
# password check runs outside it, and nothing else is written before a refusal.


class InvalidCredentials(ProblemError):
    status, code, detail = 401, "invalid_credentials", "Wrong email or password."
    keeps_changes = True


class AccountInactive(ProblemError):
    status, code, detail = 403, "account_inactive", "This account has been deactivated."
    keeps_changes = True


class EmailNotVerified(ProblemError):
    status, code, detail = 403, "email_not_verified", "Verify your email address first."
    keeps_changes = True


class LoginThrottled(TooManyAttempts):
    keeps_changes = True


def _refused(
    db: AsyncSession,
    kind: EventType,
    *,
    email: str,
    user: User | None,
    device: Device,
    reason: str | None = None,
) -> None:
    """The event of a refused login. Unknown emails are recorded too, with the address
    typed: at most LOGIN_MAX_FAILURES failures and one throttled event per email and
    lockout window (the per-email throttle), see the README."""
    details: Details = {} if user else {"email": email}
    if reason:
        details["reason"] = reason
    record_event(
        db,
        kind,
        user_id=user.id if user else None,
        actor_id=None,  # whoever typed it: nobody proven
        ip=device.ip,
        user_agent=device.user_agent,
        details=details,
    )


async def start_session(
    db: AsyncSession,
    *,
    settings: Settings,
    user: User,
    user_agent: str | None,
    ip: str | None,
) -> Session:
    """A new session for a login; the user's least recently used go past the cap."""
    now = utc_now()
    # A login is a natural moment to drop this user's expired sessions; `userapi
    # purge-expired` sweeps the rest.
    await db.execute(
        delete(Session).where(col(Session.user_id) == user.id, col(Session.expires_at) <= now)
    )
    keep = settings.max_sessions_per_user - 1
    newest = (
        select(col(Session.id))
        .where(col(Session.user_id) == user.id)
        .order_by(col(Session.last_used_at).desc(), col(Session.id).desc())
        .limit(keep)
    )
    await db.execute(
        delete(Session).where(col(Session.user_id) == user.id, col(Session.id).not_in(newest))
    )
    session = Session(
        user_id=user.id,
        created_at=now,
        last_used_at=now,
        expires_at=now + timedelta(seconds=settings.refresh_token_ttl_seconds),
        user_agent=(user_agent or None) and user_agent[:USER_AGENT_MAX_LENGTH],
        ip=ip,
    )
    db.add(session)
    await db.flush()
    return session


async def login(
    session: AsyncSession,
    *,
    guesses: PasswordGuesses,
    hashing: PasswordHashing,
    access_tokens: AccessTokens,
    refresh_tokens: RefreshTokens,
    settings: Settings,
    credentials: Credentials,
    device: Device,
) -> TokenPair:
    user = await find_user_by_email(session, credentials.email)
    checked_hash = user.password_hash if user else None
    email = credentials.email
    try:
        async with outside_transaction(session):
            # Throttled per email whether or not the account exists; an unknown email
            # costs the same argon2 work as a wrong password.
            matches = await guesses.check(
                email=email, stored_hash=checked_hash, password=credentials.password
            )
    except LockedOut as locked:
        if not locked.first:
            raise  # one event per lockout: the table does not grow with the refusals
        user = await hold_user(session, user)
        _refused(session, EventType.login_throttled, email=email, user=user, device=device)
        raise LoginThrottled(headers=locked.headers) from None
    # It may have changed while no transaction was open; erased meanwhile, it is now an
    # address no account has, and nothing about this login may be written against it.
    user = await hold_user(session, user)
    failed = EventType.login_failed
    if not matches or user is None:
        reason = "wrong_password" if user else "unknown_email"
        _refused(session, failed, email=email, user=user, device=device, reason=reason)
        raise InvalidCredentials()
    if not user.is_active:
        _refused(session, failed, email=email, user=user, device=device, reason="account_inactive")
        raise AccountInactive()
    if user.password_hash != checked_hash:
        # The password changed while we were checking it.
        _refused(session, failed, email=email, user=user, device=device, reason="wrong_password")
        raise InvalidCredentials()
    if settings.require_verified_email and not user.email_verified:
        reason = "email_not_verified"
        _refused(session, failed, email=email, user=user, device=device, reason=reason)
        raise EmailNotVerified()  # told only to whoever knows the password
    if hashing.needs_rehash(user.password_hash):
        async with outside_transaction(session):
            upgraded = await hashing.hash(credentials.password)
        # A plain UPDATE, not an ORM change: a rehash is invisible to clients (no new ETag).
        # Conditional: a password changed meanwhile is not overwritten.
        await session.execute(
            update(User)
            .where(col(User.id) == user.id, col(User.password_hash) == user.password_hash)
            .values(password_hash=upgraded)
        )
    started = await start_session(
        session, settings=settings, user=user, user_agent=device.user_agent, ip=device.ip
    )
    record_event(
        session,
        EventType.login_succeeded,
        user_id=user.id,
        actor_id=user.id,
        ip=device.ip,
        user_agent=device.user_agent,
        details={"session_id": str(started.id)},
    )
    return token_pair(started, access_tokens=access_tokens, refresh_tokens=refresh_tokens)


async def _read_credentials(request: Request) -> Credentials:
    media = media_type(request)
    data: Any
    if media in FORM_MEDIA_TYPES:
        form = await request.form()
        data = {"email": form.get("username"), "password": form.get("password")}
    elif is_json(media):
        try:
            data = await request.json()
        except ValueError as error:
            raise InvalidInput.at(
                ("body",), f"JSON decode error: {error}", "json_invalid"
            ) from None
    else:
        raise UnsupportedMediaType("Send JSON or an OAuth2 password form.")
    try:
        return Credentials.model_validate(data)
    except ValidationError as error:
        issues = [{**issue, "loc": ("body", *issue["loc"])} for issue in error.errors()]
        raise InvalidInput(errors=validation_issues(issues)) from None


@router.post(
    "/auth/login",
    # Before the body is read and long before any hash: a spray is refused cheaply.
    dependencies=[RateLimitedPerIP],
    responses=problem_responses(
        InvalidCredentials,
        AccountInactive,
        EmailNotVerified,
        LoginThrottled,
        TooManyRequests,
        UnsupportedMediaType,
        ServerBusy,
    ),
    # The JSON body is documented here; the OAuth2 password form is described by the
    # security scheme, so generated clients get one unambiguous body type.
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": Credentials.model_json_schema()}},
        }
    },
)
async def login_route(
    request: Request,
    response: Response,
    session: SessionDep,
    guesses: GuessesDep,
    hashing: HashingDep,
    access_tokens: AccessTokensDep,
    refresh_tokens: RefreshTokensDep,
    settings: SettingsDep,
    ip: ClientIP,
    user_agent: UserAgent,
) -> TokenPair:
    """Log in with email and password (JSON, or the OAuth2 password form).

    Starts a session and returns an access token and a refresh token. Failed checks are
    counted per email; past LOGIN_MAX_FAILURES the email's logins get 429 for
    LOGIN_LOCKOUT_SECONDS.
    """
    credentials = await _read_credentials(request)
    response.headers.update(NO_STORE_HEADERS)
    return await login(
        session,
        guesses=guesses,
        hashing=hashing,
        access_tokens=access_tokens,
        refresh_tokens=refresh_tokens,
        settings=settings,
        credentials=credentials,
        device=Device(user_agent=user_agent, ip=ip),
    )
