"""POST /api/v1/auth/login: exchange email and password for a token pair.

API.md, "POST /api/v1/auth/login": OAuth2 password form or JSON; one 401 for an unknown
email and a wrong password (same body, same argon2 work); 403 for a deactivated account;
per-email throttling kept in the database; weaker stored hashes upgraded on success.
"""

import math
from datetime import datetime, timedelta
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from sqlalchemy import case, delete, literal, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import Field, SQLModel, col

from kernel.db import SessionDep, UTCDateTime, dialect_name, utc_now
from kernel.errors import ProblemError, ServerBusy, UnsupportedMediaType, problem_responses
from kernel.fields import CurrentPassword, Email, StrictInput
from kernel.passwords import PasswordHashing
from kernel.security import AccessTokensDep, PasswordsDep, SettingsDep
from kernel.settings import Settings
from kernel.tokens import NO_STORE_HEADERS, AccessTokens, TokenPair, issue_token_pair
from kernel.transport import is_json, media_type
from kernel.users import User

router = APIRouter(tags=["auth"])
FORM_MEDIA_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


class LoginAttempt(SQLModel, table=True):
    """Failed attempts per normalised email in the current window; only login touches it."""

    __tablename__ = "login_attempts"

    email: str = Field(max_length=320, primary_key=True)
    failures: int
    window_started_at: datetime = Field(sa_type=UTCDateTime)


class Credentials(StrictInput):
    email: Email
    password: CurrentPassword


class InvalidCredentials(ProblemError):
    status, code, detail = 401, "invalid_credentials", "Wrong email or password."


class AccountInactive(ProblemError):
    status, code, detail = 403, "account_inactive", "This account has been deactivated."


class TooManyAttempts(ProblemError):
    status, code, detail = 429, "too_many_attempts", "Too many failed logins; try again later."


async def _reserve_attempt(session: AsyncSession, email: str, settings: Settings) -> int:
    """Count this attempt as a failure up front (success clears it); seconds locked, or 0.

    One atomic upsert: a burst of concurrent guesses cannot all read "4 failures" and
    all go on to be checked.
    """
    now = utc_now()
    window = timedelta(seconds=settings.login_lockout_seconds)
    now_value = literal(now, UTCDateTime())
    failures_column = col(LoginAttempt.failures)
    started_column = col(LoginAttempt.window_started_at)
    expired = started_column <= literal(now - window, UTCDateTime())
    insert = postgresql_insert if dialect_name(session) == "postgresql" else sqlite_insert
    statement = (
        insert(LoginAttempt)
        .values(email=email, failures=1, window_started_at=now)
        .on_conflict_do_update(
            index_elements=["email"],
            set_={
                "failures": case((expired, 1), else_=failures_column + 1),
                "window_started_at": case((expired, now_value), else_=started_column),
            },
        )
        .returning(failures_column, started_column)
    )
    failures: int
    started: datetime
    failures, started = (await session.execute(statement)).one()
    if failures <= settings.login_max_failures:
        return 0
    return max(1, math.ceil((started + window - now).total_seconds()))


async def login(
    session: AsyncSession,
    passwords: PasswordHashing,
    access_tokens: AccessTokens,
    settings: Settings,
    credentials: Credentials,
) -> TokenPair:
    locked_for = await _reserve_attempt(session, credentials.email, settings)
    if locked_for:
        await session.commit()
        raise TooManyAttempts(headers={"Retry-After": str(locked_for)})
    user = await session.scalar(select(User).where(col(User.email) == credentials.email))
    # Commit now: the counted attempt must survive a failed check, and no lock may be
    # held while argon2 runs (on SQLite that would stall every writer).
    await session.commit()
    if user is None:
        await passwords.burn_verify(credentials.password)
        raise InvalidCredentials()
    if not await passwords.verify(user.password_hash, credentials.password):
        raise InvalidCredentials()
    if not user.is_active:
        raise AccountInactive()
    await session.execute(delete(LoginAttempt).where(col(LoginAttempt.email) == credentials.email))
    if passwords.needs_rehash(user.password_hash):
        # A plain UPDATE, not an ORM change: a rehash is invisible to clients (no new ETag).
        await session.execute(
            update(User)
            .where(col(User.id) == user.id, col(User.password_hash) == user.password_hash)
            .values(password_hash=await passwords.hash(credentials.password))
        )
    return await issue_token_pair(
        session, access_tokens=access_tokens, settings=settings, user=user
    )


async def purge_expired(session: AsyncSession, settings: Settings) -> int:
    """Drop counters whose window has passed (run by `userapi purge-expired`)."""
    cutoff = utc_now() - timedelta(seconds=settings.login_lockout_seconds)
    result = await session.execute(
        delete(LoginAttempt).where(col(LoginAttempt.window_started_at) <= cutoff)
    )
    return int(getattr(result, "rowcount", 0) or 0)


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
            raise RequestValidationError(
                [{"loc": ("body",), "msg": f"JSON decode error: {error}", "type": "json_invalid"}]
            ) from None
    else:
        raise UnsupportedMediaType("Send JSON or an OAuth2 password form.")
    try:
        return Credentials.model_validate(data)
    except ValidationError as error:
        raise RequestValidationError(
            [{**issue, "loc": ("body", *issue["loc"])} for issue in error.errors()]
        ) from None


@router.post(
    "/auth/login",
    responses=problem_responses(
        InvalidCredentials, AccountInactive, TooManyAttempts, UnsupportedMediaType, ServerBusy
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
    passwords: PasswordsDep,
    access_tokens: AccessTokensDep,
    settings: SettingsDep,
) -> TokenPair:
    """Log in with email and password (JSON, or the OAuth2 password form)."""
    credentials = await _read_credentials(request)
    response.headers.update(NO_STORE_HEADERS)
    return await login(session, passwords, access_tokens, settings, credentials)
