"""GET /api/v1/kernel-probe-2a90e74bfe: name the use case and the API.md lines it implements.

Made by `userapi new-feature kernel_probe_2a90e74bfe`. The kernel mounts it because the folder
exists: nothing else needs editing. Keep the shape: request schemas, slice-only
errors, the handler (plain async function on a session), then the thin route.
"""

from fastapi import APIRouter
from pydantic import BaseModel
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from kernel.db import SessionDep
from kernel.security import CurrentUser
from kernel.users import User

router = APIRouter(tags=["kernel_probe_2a90e74bfe"])


class KernelProbe2A90E74BfeResult(BaseModel):
    active_users: int


async def kernel_probe_2a90e74bfe(session: AsyncSession) -> KernelProbe2A90E74BfeResult:
    count = await session.scalar(
        select(func.count()).select_from(User).where(col(User.is_active))
    )
    return KernelProbe2A90E74BfeResult(active_users=count or 0)


@router.get("/kernel-probe-2a90e74bfe")
async def kernel_probe_2a90e74bfe_route(
    _: CurrentUser,
    session: SessionDep,
) -> KernelProbe2A90E74BfeResult:
    """Count the active users (replace with this feature's use case)."""
    return await kernel_probe_2a90e74bfe(session)
