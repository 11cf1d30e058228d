"""The dependency aliases routes name in their signatures: who calls, on whom, with what.

Authenticated is the default: every route outside the public list (register, login,
refresh, logout, password reset, email verification, health, ready, docs) names
`CurrentUser`, `AdminUser` or `TargetUser`, and a kernel test fails when one does not.
"""

import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import OAuth2PasswordBearer
from sqlalchemy.ext.asyncio import AsyncSession

from kernel.callers import CallerReads, adopt
from kernel.db import SessionDep, recheck_on_resume, when_session_opens
from kernel.email_tokens import EmailTokens
from kernel.errors import Forbidden, InvalidToken, NotAuthenticated, UserNotFound
from kernel.guesses import PasswordGuesses
from kernel.hashing import PasswordHashing
from kernel.rate_limits import PerIPRateLimit
from kernel.send_limits import SendLimits
from kernel.sessions import RefreshTokens, Session, token_speaks_for
from kernel.settings import Settings
from kernel.slices import LOGIN_PATH
from kernel.tokens import AccessTokens
from kernel.users import User, find_user

# auto_error=False: a missing token is our own 401 problem, not FastAPI's {"detail"}.
_bearer = OAuth2PasswordBearer(tokenUrl=LOGIN_PATH, auto_error=False)


def _app_state(name: str) -> Callable[[Request], Awaitable[Any]]:
    """A dependency giving `app.state.<name>`, built once in create_app."""

    # async: FastAPI runs a plain `def` dependency in a worker thread, a hop per request.
    async def shared(request: Request) -> Any:
        return getattr(request.app.state, name)

    shared.__name__ = f"app_state_{name}"
    return shared


SettingsDep = Annotated[Settings, Depends(_app_state("settings"))]
HashingDep = Annotated[PasswordHashing, Depends(_app_state("hashing"))]
GuessesDep = Annotated[PasswordGuesses, Depends(_app_state("guesses"))]
AccessTokensDep = Annotated[AccessTokens, Depends(_app_state("access_tokens"))]
RefreshTokensDep = Annotated[RefreshTokens, Depends(_app_state("refresh_tokens"))]
EmailTokensDep = Annotated[EmailTokens, Depends(_app_state("email_tokens"))]
SendLimitsDep = Annotated[SendLimits, Depends(_app_state("send_limits"))]


async def _client_ip(request: Request) -> str | None:
    # Resolved once per request by kernel.client_ip (the trusted-proxy rule).
    return request.client.host if request.client else None


# Where a request comes from: session records, per-IP limits and security events.
ClientIP = Annotated[str | None, Depends(_client_ip)]


async def _within_rate_limit(request: Request, ip: ClientIP) -> None:
    limit: PerIPRateLimit = request.app.state.rate_limit
    await limit.hit(ip)


# RATE_LIMIT_PER_IP, for a route's `dependencies=[...]`: counted in a transaction of its
# own before anything else of the route runs (its request session, any password hash).
# List TooManyRequests in the route's responses.
RateLimitedPerIP = Depends(_within_rate_limit)


async def _user_agent(request: Request) -> str | None:
    return request.headers.get("user-agent") or None


# The client's User-Agent header, as sent (None when absent): session records and events.
UserAgent = Annotated[str | None, Depends(_user_agent)]


async def _current_user(request: Request, token: Annotated[str | None, Depends(_bearer)]) -> User:
    # app.state read here, not through dependencies: each dependency FastAPI solves
    # costs CPU on every authenticated request (bench/profiles/users-me-*.txt).
    tokens: AccessTokens = request.app.state.access_tokens
    reads: CallerReads = request.app.state.caller_reads
    if not token:
        raise NotAuthenticated()
    claims = tokens.verify(token)
    # One primary-key read of user and session: a revoked session (logout, password
    # change, deactivation...) is seen here at once, in every process.
    found = await reads.find(claims.user_id, claims.session_id)
    user, session = found if found else (None, None)
    if not token_speaks_for(user, session):
        raise InvalidToken()
    assert session is not None
    was_admin = user.is_superuser

    async def still_authorized(db: AsyncSession) -> None:
        # After slow work outside a transaction: the session may have been revoked, or
        # the admin demoted, while the request waited.
        await db.refresh(user)
        if not token_speaks_for(user, await db.get(Session, session.id, populate_existing=True)):
            raise InvalidToken()
        if was_admin and not user.is_superuser:
            raise Forbidden("You are no longer an administrator.")

    def attach(db: AsyncSession) -> None:
        adopt(db, user, session)
        recheck_on_resume(db, still_authorized)

    when_session_opens(request, attach)
    request.state.caller_session = session
    request.state.user_id = str(user.id)  # the request log's user_id
    return user


async def _current_session(
    request: Request,
    _: Annotated[User, Depends(_current_user)],
) -> Session:
    session: Session = request.state.caller_session
    return session


async def _admin_user(user: Annotated[User, Depends(_current_user)]) -> User:
    if not user.is_superuser:
        raise Forbidden("Administrators only.")
    return user


def may_manage(caller: User, user_id: uuid.UUID) -> bool:
    """The one rule for acting on an account: your own, or anyone's if you are an admin."""
    return caller.id == user_id or caller.is_superuser


async def _target_user(
    user_id: uuid.UUID, caller: Annotated[User, Depends(_current_user)], db: SessionDep
) -> User:
    if not may_manage(caller, user_id):
        raise Forbidden("Only administrators may act on other users.")
    if user_id == caller.id:
        return caller
    user = await find_user(db, user_id)
    if user is None:
        raise UserNotFound()
    return user


async def _administered_user(
    user_id: uuid.UUID, _: Annotated[User, Depends(_admin_user)], db: SessionDep
) -> User:
    user = await find_user(db, user_id)
    if user is None:
        raise UserNotFound()
    return user


CurrentUser = Annotated[User, Depends(_current_user)]
# The session of the calling access token (its `sid`).
CurrentSession = Annotated[Session, Depends(_current_session)]
AdminUser = Annotated[User, Depends(_admin_user)]
# The `{user_id}` of the path: yourself, or for admins anyone (403 forbidden for others,
# 404 user_not_found for an unknown id).
TargetUser = Annotated[User, Depends(_target_user)]
# The `{user_id}` of an admins-only path: 403 forbidden for everyone else, 404 if unknown.
AdministeredUser = Annotated[User, Depends(_administered_user)]
