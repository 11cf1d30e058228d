"""POST /api/v1/auth/logout: revoke the refresh tokens of one login (API.md, "logout").

Needs no access token (it may have expired) and is idempotent: an unknown or already
revoked token also gets 204, so a client can always finish logging out.
"""

from fastapi import APIRouter, Response
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from kernel.db import SessionDep
from kernel.fields import StrictInput
from kernel.tokens import RefreshToken, RefreshTokenValue, hash_refresh_token, revoke_family

router = APIRouter(tags=["auth"])


class LogoutRequest(StrictInput):
    refresh_token: RefreshTokenValue


async def logout(session: AsyncSession, token: str) -> None:
    family_id = await session.scalar(
        select(col(RefreshToken.family_id)).where(
            col(RefreshToken.token_hash) == hash_refresh_token(token)
        )
    )
    if family_id is not None:
        await revoke_family(session, family_id)


@router.post("/auth/logout", status_code=204, response_class=Response)
async def logout_route(body: LogoutRequest, session: SessionDep) -> None:
    """Log out: revoke this login's refresh tokens (other logins stay)."""
    await logout(session, body.refresh_token)
