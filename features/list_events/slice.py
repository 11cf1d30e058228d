"""GET /api/v1/users/me/events and, for admins, GET /api/v1/events: the security audit
trail (API.md, "Account lifecycle and audit trail").

Newest first, keyset-paged like the users list (kernel.pages): the signed cursor holds
the (at, id) of the last event returned, so a page is one index range however deep, and
events written meanwhile never shift a page. Admins filter by `user_id`, `type` and a
time range: `since` inclusive, `until` exclusive. The events are written by the slices
whose changes they record (kernel.events.record_event); this slice only reads them.
"""

import re
import uuid
from datetime import datetime
from functools import cache
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, BeforeValidator
from pydantic_core import PydanticCustomError
from sqlalchemy import ColumnElement, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from kernel.db import SessionDep
from kernel.deps import AdminUser, CurrentUser, SettingsDep
from kernel.errors import Forbidden, problem_responses
from kernel.events import Event, EventType, SecurityEvent
from kernel.pages import CURSOR_SCHEMA, CursorCodec, InvalidCursor, Keyset

router = APIRouter(tags=["events"])

CURSOR_PURPOSE = "security_events"
Limit = Annotated[int, Query(ge=1, le=100)]
Cursor = Annotated[str | None, Query(json_schema_extra=CURSOR_SCHEMA)]


class EventPage(BaseModel):
    items: list[Event]
    next_cursor: str | None


_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}")


def _rfc3339_only(value: object) -> object:
    # Lax parsing would take "0.5" as a Unix timestamp: the schema promises date-time.
    if isinstance(value, str) and not _RFC3339.match(value):
        raise PydanticCustomError(
            "datetime_format", "must be an RFC 3339 date-time, like 2026-12-01T00:00:00Z"
        )
    return value


QueryTime = Annotated[datetime, BeforeValidator(_rfc3339_only)]


def _position(values: list[str]) -> tuple[datetime, uuid.UUID]:
    at, event_id = values
    return datetime.fromisoformat(at), uuid.UUID(hex=event_id)


# Built on first use and kept: the same for every page (kernel.pages.Keyset).
@cache
def _newest_first() -> Keyset:
    return Keyset(col(SecurityEvent.at), col(SecurityEvent.id), descending=True)


async def list_events(
    session: AsyncSession,
    codec: CursorCodec,
    *,
    limit: int,
    cursor: str | None,
    conditions: list[ColumnElement[bool]],
) -> EventPage:
    position = None if cursor is None else codec.decode(cursor, _position)
    query, parameters = _newest_first().page(
        select(SecurityEvent).where(*conditions), position, rows=limit + 1
    )
    rows = list((await session.scalars(query, parameters)).all())
    page, more = rows[:limit], len(rows) > limit
    last = page[-1] if more else None
    return EventPage(
        items=[Event.of(event) for event in page],
        next_cursor=codec.encode([last.at.isoformat(), last.id.hex]) if last else None,
    )


@router.get("/users/me/events", responses=problem_responses(InvalidCursor))
async def list_my_events_route(
    user: CurrentUser,
    session: SessionDep,
    settings: SettingsDep,
    limit: Limit = 20,
    cursor: Cursor = None,
) -> EventPage:
    """Your account's security events, newest first, one keyset page at a time.

    Follow next_cursor until it is null. Events are never changed; they are kept
    AUDIT_RETENTION_DAYS.
    """
    return await list_events(
        session,
        CursorCodec(settings.signing_key, CURSOR_PURPOSE),
        limit=limit,
        cursor=cursor,
        conditions=[col(SecurityEvent.user_id) == user.id],
    )


@router.get("/events", responses=problem_responses(Forbidden, InvalidCursor))
async def list_events_route(
    _: AdminUser,
    session: SessionDep,
    settings: SettingsDep,
    limit: Limit = 20,
    cursor: Cursor = None,
    user_id: uuid.UUID | None = None,
    kind: Annotated[EventType | None, Query(alias="type")] = None,
    since: Annotated[QueryTime | None, Query(description="At or after (inclusive).")] = None,
    until: Annotated[QueryTime | None, Query(description="Before (exclusive).")] = None,
) -> EventPage:
    """Every account's security events (administrators only), newest first, filtered.

    Filter by user_id, type, since (inclusive) and until (exclusive); follow next_cursor
    until it is null.
    """
    conditions: list[ColumnElement[bool]] = []
    if user_id is not None:
        conditions.append(col(SecurityEvent.user_id) == user_id)
    if kind is not None:
        conditions.append(col(SecurityEvent.type) == kind.value)
    if since is not None:
        conditions.append(col(SecurityEvent.at) >= since)
    if until is not None:
        conditions.append(col(SecurityEvent.at) < until)
    return await list_events(
        session,
        CursorCodec(settings.signing_key, CURSOR_PURPOSE),
        limit=limit,
        cursor=cursor,
        conditions=conditions,
    )
