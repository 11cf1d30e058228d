"""GET /api/v1/users: admins list, search, filter and page through users (API.md).

Keyset pagination (kernel.pages): the cursor holds the sort key of the last row
returned, and the sort it belongs to, signed so an edited or forged one is refused.
"""

import uuid
from collections.abc import Callable
from datetime import datetime
from functools import cache
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import Select
from sqlmodel import col

from kernel.db import SessionDep
from kernel.deps import AdminUser, SettingsDep
from kernel.errors import Forbidden, problem_responses
from kernel.pages import CURSOR_SCHEMA, CursorCodec, InvalidCursor, Keyset
from kernel.users import PrivateUser, SearchText, User, not_erased

router = APIRouter(tags=["users"])

Sort = Literal["created_at", "-created_at", "email", "-email"]


def _total_schema(schema: dict[str, Any]) -> None:
    # Absent unless asked for, and never null when present: an optional integer.
    schema.pop("default", None)
    schema.pop("anyOf", None)
    schema["type"] = "integer"


class UserPage(BaseModel):
    items: list[PrivateUser]
    next_cursor: str | None
    # Left unset unless include_total=true; the route drops unset fields.
    total: int | None = Field(
        default=None,
        description="Present only with include_total=true.",
        json_schema_extra=_total_schema,
    )


def _cursor_values(sort: Sort, last: User) -> list[str]:
    key = last.email if sort.lstrip("-") == "email" else last.created_at.isoformat()
    return [sort, key, last.id.hex]


def _cursor_position(sort: Sort) -> Callable[[list[str]], tuple[Any, uuid.UUID]]:
    def parse(values: list[str]) -> tuple[Any, uuid.UUID]:
        cursor_sort, key, user_id = values
        if cursor_sort != sort:
            raise InvalidCursor("The cursor belongs to another sort order.")
        value = key if sort.lstrip("-") == "email" else datetime.fromisoformat(key)
        return value, uuid.UUID(hex=user_id)

    return parse


# Built on first use and kept: the same for every page (kernel.pages.Keyset).
@cache
def _keyset(sort: Sort) -> Keyset:
    key = col(User.email) if sort.lstrip("-") == "email" else col(User.created_at)
    return Keyset(key, col(User.id), descending=sort.startswith("-"))


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _filtered(query: Select[Any], q: str | None, is_active: bool | None) -> Select[Any]:
    query = query.where(not_erased())
    if q:
        # search_key holds email and names case-folded by the kernel; fold q the same way.
        # q is one line (SearchText) and the fields' separator is not, so a match never
        # spans two fields.
        pattern = f"%{_escape_like(q.casefold())}%"
        query = query.where(col(User.search_key).like(pattern, escape="\\"))
    if is_active is not None:
        query = query.where(col(User.is_active) == is_active)
    return query


async def list_users(
    session: AsyncSession,
    codec: CursorCodec,
    *,
    limit: int,
    cursor: str | None,
    q: str | None,
    is_active: bool | None,
    sort: Sort,
    include_total: bool,
) -> UserPage:
    position = None if cursor is None else codec.decode(cursor, _cursor_position(sort))
    # One row more than the page: whether there is a next one.
    query, parameters = _keyset(sort).page(
        _filtered(select(User), q, is_active), position, rows=limit + 1
    )
    rows = list((await session.scalars(query, parameters)).all())
    page, more = rows[:limit], len(rows) > limit
    total = None
    if include_total:
        total = await session.scalar(
            _filtered(select(func.count()).select_from(User), q, is_active)
        )
    result = UserPage(
        items=[PrivateUser.of(user) for user in page],
        next_cursor=codec.encode(_cursor_values(sort, page[-1])) if more else None,
    )
    if include_total:
        result.total = total or 0
    return result


@router.get(
    "/users",
    responses=problem_responses(Forbidden, InvalidCursor),
    response_model_exclude_unset=True,
)
async def list_users_route(
    _: AdminUser,
    session: SessionDep,
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(json_schema_extra=CURSOR_SCHEMA)] = None,
    q: SearchText | None = None,
    is_active: bool | None = None,
    sort: Sort = "created_at",
    include_total: bool = False,
) -> UserPage:
    """List users (admins only), newest last by default, one keyset page at a time.

    Search with q (email, first or last name), filter with is_active, sort by created_at
    or email either way; include_total adds the count. Page cost does not grow with
    depth.
    """
    return await list_users(
        session,
        CursorCodec(settings.signing_key, "list_users"),
        limit=limit,
        cursor=cursor,
        q=q,
        is_active=is_active,
        sort=sort,
        include_total=include_total,
    )
