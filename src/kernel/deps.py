"""Who is calling: the dependency aliases every protected route names in its signature."""

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import OAuth2PasswordBearer
from sqlalchemy.ext.asyncio import AsyncSession

from kernel.db import SessionDep
from kernel.errors import Forbidden, InvalidToken, NotAuthenticated
from kernel.passwords import PasswordHashing
from kernel.settings import Settings
from kernel.tokens import AccessTokens
from kernel.users import User

# The one route the kernel names: OAuth2's password flow must point at a token URL, and
# API.md fixes it. Everything else about login lives in its slice.
LOGIN_PATH = "/api/v1/auth/login"

# auto_error=False: a missing token is our own 401 problem, not FastAPI's {"detail"}.
_bearer = OAuth2PasswordBearer(tokenUrl=LOGIN_PATH, auto_error=False)


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _passwords(request: Request) -> PasswordHashing:
    passwords: PasswordHashing = request.app.state.passwords
    return passwords


def _access_tokens(request: Request) -> AccessTokens:
    tokens: AccessTokens = request.app.state.access_tokens
    return tokens


SettingsDep = Annotated[Settings, Depends(_settings)]
PasswordsDep = Annotated[PasswordHashing, Depends(_passwords)]
AccessTokensDep = Annotated[AccessTokens, Depends(_access_tokens)]


async def _current_user(
    session: SessionDep,
    tokens: AccessTokensDep,
    token: Annotated[str | None, Depends(_bearer)],
) -> User:
    if not token:
        raise NotAuthenticated()
    claims = tokens.verify(token)
    # One primary-key lookup: deactivation and password change bump token_version,
    # so an older token fails here at once, in every process.
    user = await session.get(User, claims.user_id)
    if user is None or not user.is_active or user.token_version != claims.token_version:
        raise InvalidToken()
    return user


async def _admin_user(user: Annotated[User, Depends(_current_user)]) -> User:
    if not user.is_superuser:
        raise Forbidden("Administrators only.")
    return user


@dataclass(frozen=True)
class Authorization:
    """What a request was authorized on, to confirm after slow work outside a transaction.

    A handler that releases its transaction for argon2 (kernel.credentials) must not act
    on a token revoked, or an admin demoted, while it waited.
    """

    user: User
    token_version: int
    is_superuser: bool

    @classmethod
    def of(cls, user: User) -> "Authorization":
        return cls(user=user, token_version=user.token_version, is_superuser=user.is_superuser)

    async def recheck(self, session: AsyncSession) -> None:
        await session.refresh(self.user)
        if not self.user.is_active or self.user.token_version != self.token_version:
            raise InvalidToken()
        if self.is_superuser and not self.user.is_superuser:
            raise Forbidden("You are no longer an administrator.")


CurrentUser = Annotated[User, Depends(_current_user)]
AdminUser = Annotated[User, Depends(_admin_user)]
