"""GET /api/v1/users/me/export: everything stored about the caller, as one JSON document
(API.md v1.1, "Account lifecycle and audit trail").

What is exported is derived from the tables themselves, not listed by hand: the
caller's row in `users`, and every row of every table with a foreign key to `users` that
points at the caller (sessions, security events by or about them, mails, mailed-secret
records, and whatever table a new slice adds). Columns marked
`kernel.db.SECRET_COLUMN` (the password hash, session salts, token and code hashes, the
bodies of mails, which hold links and codes) are left out.

Counters keyed by an email rather than by the account (the login-guess and mail-send
windows) are not exported: they last minutes and are purged by `userapi purge-expired`.
"""

import uuid
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import Column, or_, select

from kernel.db import SessionDep, utc_now
from kernel.deps import CurrentUser
from kernel.users import tables_naming_users

router = APIRouter(tags=["users"])


def _exported(column: Column[Any]) -> bool:
    return not column.info.get("secret", False)


def _json_value(value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        moment = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return value


@router.get(
    "/users/me/export",
    response_class=JSONResponse,
    responses={200: {"description": "Everything stored about you, table by table."}},
)
async def export_my_data_route(user: CurrentUser, db: SessionDep) -> JSONResponse:
    """Download everything stored about you (never a hash, token or secret)."""
    document: dict[str, Any] = {"exported_at": _json_value(utc_now()), "user_id": str(user.id)}
    tables: dict[str, list[dict[str, Any]]] = {}
    for table, naming in tables_naming_users():
        columns = [column for column in table.columns if _exported(column)]
        rows = await db.execute(
            select(*columns).where(or_(*(column == user.id for column in naming)))
        )
        tables[table.name] = [
            {name: _json_value(value) for name, value in row._mapping.items()} for row in rows
        ]
    document["tables"] = tables
    return JSONResponse(
        document,
        headers={
            "Content-Disposition": f'attachment; filename="userapi-export-{user.id}.json"',
            "Cache-Control": "no-store",
        },
    )
