"""POST /api/v1/auth/login: exchange email and password for a token pair.

API.md, "POST /api/v1/auth/login": OAuth2 password form or JSON; one 401 for an unknown
email and a wrong password (same body, same argon2 work); 403 for a deactivated account;
per-email throttling kept in the database; weaker stored hashes upgraded on success.
"""

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from kernel.credentials import check_password, hash_new_password
from kernel.db import SessionDep
from kernel.errors import (
    ProblemError,
    ServerBusy,
    TooManyAttempts,
    UnsupportedMediaType,
    problem_responses,
)
from kernel.fields import CurrentPassword, Email, StrictInput
from kernel.passwords import PasswordHashing
from kernel.security import AccessTokensDep, PasswordsDep, SettingsDep
from kernel.settings import Settings
from kernel.tokens import NO_STORE_HEADERS, AccessTokens, TokenPair, issue_token_pair
from kernel.transport import is_json, media_type
from kernel.users import User

router = APIRouter(tags=["auth"])
FORM_MEDIA_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


class Credentials(StrictInput):
    email: Email
    password: CurrentPassword


class InvalidCredentials(ProblemError):
    status, code, detail = 401, "invalid_credentials", "Wrong email or password."


class AccountInactive(ProblemError):
    status, code, detail = 403, "account_inactive", "This account has been deactivated."


async def login(
    session: AsyncSession,
    *,
    passwords: PasswordHashing,
    access_tokens: AccessTokens,
    settings: Settings,
    credentials: Credentials,
) -> TokenPair:
    user = await session.scalar(select(User).where(col(User.email) == credentials.email))
    # Throttled per email whether or not the account exists; an unknown email costs
    # the same argon2 work as a wrong password.
    if not await check_password(
        session,
        passwords=passwords,
        settings=settings,
        email=credentials.email,
        stored_hash=user.password_hash if user else None,
        password=credentials.password,
    ):
        raise InvalidCredentials()
    assert user is not None  # a password only matches an existing account's hash
    # argon2 ran outside any transaction: read the account again before trusting it.
    seen_token_version = user.token_version
    await session.refresh(user)
    if not user.is_active:
        raise AccountInactive()
    if user.token_version != seen_token_version:
        raise InvalidCredentials()  # the password changed while we were checking it
    if passwords.needs_rehash(user.password_hash):
        upgraded = await hash_new_password(session, passwords, credentials.password)
        # A plain UPDATE, not an ORM change: a rehash is invisible to clients (no new ETag).
        await session.execute(
            update(User)
            .where(col(User.id) == user.id, col(User.password_hash) == user.password_hash)
            .values(password_hash=upgraded)
        )
    return await issue_token_pair(
        session, access_tokens=access_tokens, settings=settings, user=user
    )


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
    return await login(
        session,
        passwords=passwords,
        access_tokens=access_tokens,
        settings=settings,
        credentials=credentials,
    )
