"""The async engine, the per-request session and the column types both databases share."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy import DateTime, MetaData, event
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.types import TypeDecorator
from sqlmodel import SQLModel

from kernel.errors import ProblemError
from kernel.settings import Settings, SettingsError

# Stable constraint names on both databases, so migrations can name what they drop.
SQLModel.metadata.naming_convention = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata: MetaData = SQLModel.metadata

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SQLITE_BUSY_TIMEOUT_MS = 30_000


def utc_now() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on the way out, whatever the database keeps (SQLite keeps none)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        # A naive datetime is taken as UTC (never as the server's local time).
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(
        self,
        value: datetime | None,
        dialect: Dialect,  # noqa: ARG002
    ) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _: Any) -> None:
        # Take transaction control from the driver so that "begin" below decides the mode.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk before we answer 2xx, so a crash loses nothing acknowledged.
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Connection) -> None:
        # A writer takes the write lock up front (IMMEDIATE): a deferred transaction that
        # read first and writes later fails with "database is locked" instead of waiting.
        mode = connection.get_execution_options().get("sqlite_begin", "DEFERRED")
        connection.exec_driver_sql(f"BEGIN {mode}")


class Database:
    """Engines and session factories; built in create_app, never at import time."""

    def __init__(self, settings: Settings) -> None:
        url = settings.resolved_database_url
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            # The default SQLite file lives in DATA_DIR: name the setting the operator set.
            _ensure_sqlite_folder(url, "DATABASE_URL" if settings.database_url else "DATA_DIR")
            # hide_parameters: a logged database error must not carry hashes or emails.
            self.engine = create_async_engine(url, pool_pre_ping=True, hide_parameters=True)
            _configure_sqlite(self.engine)
            writer = self.engine.execution_options(sqlite_begin="IMMEDIATE")
        else:
            self.engine = create_async_engine(
                url,
                pool_size=settings.db_pool_size,
                max_overflow=settings.db_pool_size,
                pool_timeout=settings.db_timeout_seconds,
                pool_pre_ping=True,
                hide_parameters=True,
                connect_args={
                    "timeout": settings.db_timeout_seconds,
                    "command_timeout": settings.db_timeout_seconds * 6,
                },
            )
            writer = self.engine
        self._readers = async_sessionmaker(self.engine, expire_on_commit=False)
        self._writers = async_sessionmaker(writer, expire_on_commit=False)

    @asynccontextmanager
    async def session(self, *, writes: bool = True) -> AsyncIterator[AsyncSession]:
        """One unit of work: committed when the block succeeds, rolled back when it raises."""
        factory = self._writers if writes else self._readers
        async with factory() as session:
            try:
                yield session
                # Inside the try: a COMMIT that fails (SQLite checks deferred foreign keys
                # there) leaves the transaction open, holding the write lock, unless we
                # roll it back before the connection goes back to the pool.
                await session.commit()
            except ProblemError as problem:
                # Some refusals are outcomes to record (a reused refresh token revokes
                # its family); any other failure leaves nothing behind.
                await (session.commit() if problem.keeps_changes else session.rollback())
                raise
            except BaseException:
                await session.rollback()
                raise

    async def dispose(self) -> None:
        await self.engine.dispose()


def dialect_name(session: AsyncSession) -> str:
    return session.get_bind().dialect.name


def _ensure_sqlite_folder(url: str, setting: str) -> None:
    path = url.split(":///", 1)[-1].split("?", 1)[0]
    if path and path != ":memory:":
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise SettingsError(f"invalid setting {setting}: {error}") from None


async def _request_session(request: Request) -> AsyncIterator[AsyncSession]:
    database: Database = request.app.state.database
    async with database.session(writes=request.method not in SAFE_METHODS) as session:
        yield session


# scope="function": the commit runs before the response is sent, so a write that
# fails to commit can never be answered with a 2xx.
SessionDep = Annotated[AsyncSession, Depends(_request_session, scope="function")]
