"""The async engine, the per-request session and where its transaction ends.

The kernel owns the transaction: a request's session commits when the route returns
(before the response is sent) and rolls back when it raises. A handler never commits.
The one exception is named: `outside_transaction(session)`, for slow work (argon2) that
must not hold a database lock or connection while it runs.
"""

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy import DateTime, MetaData, event
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import ORMExecuteState, Session
from sqlalchemy.types import TypeDecorator
from sqlmodel import SQLModel

from kernel.errors import RETRY_AFTER_OUTAGE, DatabaseUnavailable, ProblemError
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

# Column option for what must never leave the database (hashes, salts, mailed links):
# `Field(..., sa_column_kwargs=SECRET_COLUMN)`. The data export leaves these out.
SECRET_COLUMN: dict[str, Any] = {"info": {"secret": True}}

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SQLITE_BUSY_TIMEOUT_MS = 30_000
IDLE_PING_SECONDS = 10.0
_IDLE_SINCE = "userapi.idle_since"
log = logging.getLogger("userapi.db")


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


def _refuse_unreachable(engine: AsyncEngine) -> None:
    """A server that cannot be reached is an outage (503), told apart from any other OSError.

    asyncpg raises the socket's own error (refused, reset, DNS failure, timeout) when
    it connects; only here do we know that such an error came from the database.
    """

    @event.listens_for(engine.sync_engine, "do_connect")
    def _connect(dialect: Dialect, _: Any, cargs: Any, cparams: Any) -> Any:
        try:
            return dialect.connect(*cargs, **cparams)
        except OSError as error:
            log.warning("database unreachable: %s", type(error).__name__)
            raise DatabaseUnavailable(headers=RETRY_AFTER_OUTAGE) from error


def _ping_when_idle(engine: AsyncEngine) -> None:
    """pool_pre_ping's check, for a connection that sat unused in the pool for a while.

    pool_pre_ping pings on every checkout: on PostgreSQL three statements (BEGIN, ";",
    ROLLBACK), each a round trip, before a GET /users/me's own three. A connection in
    steady use has just proved itself; one idle for IDLE_PING_SECONDS may have been
    closed by the server, a restart or a proxy, so it is pinged first and, if dead,
    replaced before the request sees it. (A connection that dies in use is a disconnect
    error, and SQLAlchemy then invalidates the whole pool.)
    """

    @event.listens_for(engine.sync_engine, "checkin")
    def _checked_in(_: Any, record: Any) -> None:
        record.info[_IDLE_SINCE] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def _checked_out(dbapi_connection: Any, record: Any, _: Any) -> None:
        idle_since = record.info.pop(_IDLE_SINCE, None)
        if idle_since is None or time.monotonic() - idle_since < IDLE_PING_SECONDS:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as error:
            # The pool discards this connection and checks out (or opens) another.
            raise DisconnectionError("idle connection failed its ping") from error


# Behind PgBouncer in transaction mode, consecutive transactions of one client
# connection may run on different server connections, so a statement prepared under a
# name in one (asyncpg's __asyncpg_stmt_1__, or SQLAlchemy's cached ones) is missing or
# already taken in the next. So: no statement caches, and every statement anonymous. An
# anonymous statement with asyncpg's cache off is parsed again in the same message flight
# that binds and runs it, so it never outlives its transaction. Named statements with
# unique names (SQLAlchemy's documented alternative) would work too, but each one stays
# on the server connection it was prepared on: asyncpg's later Close goes to whichever
# server connection the next transaction gets.
_POOLER_SAFE: dict[str, Any] = {
    "statement_cache_size": 0,  # asyncpg's own cache
    "prepared_statement_cache_size": 0,  # SQLAlchemy's asyncpg dialect's cache
    "prepared_statement_name_func": lambda: "",  # "": the unnamed statement
}


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
            # A fixed pool, no overflow and no pre-ping: an overflow connection is closed
            # when returned, so under load each request paid for a new connection (its
            # own aiosqlite thread, its PRAGMAs); and a file does not go away as a server
            # can, so a ping before each checkout was a thread hop for nothing.
            pool = {
                "pool_size": settings.db_pool_size,
                "max_overflow": 0,
                "pool_timeout": settings.db_timeout_seconds,
            }
            in_memory = url.endswith((":memory:", "://"))  # one connection, no pool to size
            self.engine = create_async_engine(
                url, hide_parameters=True, **({} if in_memory else pool)
            )
            _configure_sqlite(self.engine)
            writer = self.engine.execution_options(sqlite_begin="IMMEDIATE")
        else:
            self.engine = create_async_engine(
                url,
                pool_size=settings.db_pool_size,
                # No overflow, as on SQLite: an overflow connection is closed when it is
                # returned, so under load each request opened one (TCP, startup, 5 ms
                # of CPU). Measured, 32 clients on GET /users/me: 1,261 req/s with 10+10
                # connections, 1,974 with 10. Requests past the pool wait for a connection.
                max_overflow=0,
                pool_timeout=settings.db_timeout_seconds,
                hide_parameters=True,
                connect_args={
                    "timeout": settings.db_timeout_seconds,
                    "command_timeout": settings.db_timeout_seconds * 6,
                    **(_POOLER_SAFE if settings.database_pooler == "pgbouncer" else {}),
                },
            )
            _refuse_unreachable(self.engine)
            _ping_when_idle(self.engine)
            writer = self.engine
        self._readers = async_sessionmaker(
            self.engine, expire_on_commit=False, sync_session_class=_TrackedSession
        )
        self._writers = async_sessionmaker(
            writer, expire_on_commit=False, sync_session_class=_TrackedSession
        )

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


def deleted_count(result: Any) -> int:
    """How many rows a DELETE removed (what purge-expired reports)."""
    return int(getattr(result, "rowcount", 0) or 0)


def dialect_name(session: AsyncSession) -> str:
    return session.get_bind().dialect.name


# --- transactions: where they end --------------------------------------------------------

_WROTE = "userapi.wrote"
_RECHECKS = "userapi.rechecks"


class _TrackedSession(Session):
    """A session that knows whether its transaction has written anything yet."""


@event.listens_for(_TrackedSession, "before_flush")
def _on_flush(session: Session, *_: Any) -> None:
    if session.new or session.dirty or session.deleted:
        session.info[_WROTE] = True


@event.listens_for(_TrackedSession, "do_orm_execute")
def _on_execute(state: ORMExecuteState) -> None:
    if state.is_insert or state.is_update or state.is_delete:
        state.session.info[_WROTE] = True


@event.listens_for(_TrackedSession, "after_commit")
@event.listens_for(_TrackedSession, "after_rollback")
def _on_end(session: Session) -> None:
    session.info.pop(_WROTE, None)


def recheck_on_resume(
    session: AsyncSession, check: Callable[[AsyncSession], Awaitable[None]]
) -> None:
    """Have every `outside_transaction` block of this request end with `check`.

    What a request read before the block may have changed while no transaction was
    open; the kernel registers here the checks every request needs (the caller's token
    still speaks for them), so no slice can forget them.
    """
    session.info.setdefault(_RECHECKS, []).append(check)


@asynccontextmanager
async def outside_transaction(session: AsyncSession) -> AsyncIterator[None]:
    """Run the block with no transaction open: for slow work such as argon2.

    A transaction would hold SQLite's database-wide write lock (every writer begins
    IMMEDIATE), or a pooled PostgreSQL connection, for the whole hash. So the request's
    transaction, which may only have read so far, ends here; loaded objects stay usable.
    Writes before the block would be committed half-done, so they are refused. After the
    block the next statement begins a new transaction: the registered rechecks run first,
    and anything else read before must be read again (under a lock, if it decides a write).
    """
    if session.info.get(_WROTE):
        raise RuntimeError("outside_transaction() after a write: do the slow work first")
    await session.commit()  # ends a transaction that has only read
    yield
    await run_rechecks(session)


async def run_rechecks(session: AsyncSession) -> None:
    """The checks registered by recheck_on_resume, now (see kernel.users.lock_user)."""
    for check in session.info.get(_RECHECKS, ()):
        await check(session)


def _ensure_sqlite_folder(url: str, setting: str) -> None:
    path = url.split(":///", 1)[-1].split("?", 1)[0]
    if path and path != ":memory:":
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise SettingsError(f"invalid setting {setting}: {error}") from None


_OPENED = "userapi_request_session"
_ON_OPEN = "userapi_on_session_open"


def when_session_opens(request: Request, attach: Callable[[AsyncSession], None]) -> None:
    """Run `attach` on the request's session: now if it is open, else when it opens.

    For what a request read before, and without, a session (kernel.callers): a route
    that never asks for a session never pays for one.
    """
    session: AsyncSession | None = getattr(request.state, _OPENED, None)
    if session is not None:
        attach(session)
    else:
        pending: list[Callable[[AsyncSession], None]] = getattr(request.state, _ON_OPEN, [])
        setattr(request.state, _ON_OPEN, [*pending, attach])


async def _request_session(request: Request) -> AsyncIterator[AsyncSession]:
    database: Database = request.app.state.database
    async with database.session(writes=request.method not in SAFE_METHODS) as session:
        setattr(request.state, _OPENED, session)
        for attach in getattr(request.state, _ON_OPEN, ()):
            attach(session)
        yield session


# scope="function": the commit runs before the response is sent, so a write that
# fails to commit can never be answered with a 2xx.
SessionDep = Annotated[AsyncSession, Depends(_request_session, scope="function")]
