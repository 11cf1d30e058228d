"""Alembic environment: the slices' tables come from the kernel's own discovery pass."""

import asyncio
from typing import Any, Literal

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlmodel.sql.sqltypes import AutoString

from kernel.db import Database, UTCDateTime, metadata
from kernel.migrations import schema_filter
from kernel.settings import load_settings
from kernel.slices import load_tables

load_tables()
# An advisory lock id, so that several servers starting at once migrate one at a time.
_MIGRATION_LOCK = 0x4D494752


def _render_item(kind: str, item: Any, _autogen_context: Any) -> str | Literal[False]:
    # Migrations name plain SQLAlchemy types, never the kernel's Python-side wrappers,
    # so old revisions keep working however the kernel changes.
    if kind == "type" and isinstance(item, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    if kind == "type" and isinstance(item, AutoString):
        return f"sa.String(length={item.length})" if item.length else "sa.String()"
    return False


def _migrate(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(text(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})"))
    context.configure(
        connection=connection,
        target_metadata=metadata,
        # SQLite cannot ALTER most things: batch mode copies the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        render_item=_render_item,
        include_object=schema_filter(connection.dialect.name),
    )
    with context.begin_transaction():
        context.run_migrations()


async def _migrate_standalone() -> None:
    database = Database(load_settings())
    try:
        async with database.engine.execution_options(sqlite_begin="IMMEDIATE").begin() as conn:
            await conn.run_sync(_migrate)
    finally:
        await database.dispose()


def main() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        # Called from kernel.migrations (userapi serve / migrate / tests).
        _migrate(connection)
        return
    if context.is_offline_mode():
        raise SystemExit("offline (--sql) migrations are not supported; use `userapi migrate`")
    # Plain `alembic upgrade head` from the repository root.
    asyncio.run(_migrate_standalone())


main()
