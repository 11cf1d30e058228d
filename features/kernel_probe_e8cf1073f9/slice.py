"""GET /api/v1/kernel-probe-e8cf1073f9: name the use case and the API.md lines it implements.

Made by `userapi new-feature kernel_probe_e8cf1073f9`. The kernel mounts it because the folder
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

router = APIRouter(tags=["kernel_probe_e8cf1073f9"])


class KernelProbeE8Cf1073F9Result(BaseModel):
    active_users: int


async def kernel_probe_e8cf1073f9(session: AsyncSession) -> KernelProbeE8Cf1073F9Result:
    count = await session.scalar(
        select(func.count()).select_from(User).where(col(User.is_active))
    )
    return KernelProbeE8Cf1073F9Result(active_users=count or 0)


@router.get("/kernel-probe-e8cf1073f9")
async def kernel_probe_e8cf1073f9_route(
    _: CurrentUser,
    session: SessionDep,
) -> KernelProbeE8Cf1073F9Result:
    """Count the active users (replace with this feature's use case)."""
    return await kernel_probe_e8cf1073f9(session)
