"""The read behind every authenticated request: the token's user and session, by primary key.

It runs on every request that carries a token, so it is not an ORM query. Measured on
one core (bench/profiles/users-me-*.txt): an ORM session's `select(User, Session)` took
785 µs, mostly SQLAlchemy's session, transaction and loading machinery and, on SQLite,
aiosqlite's thread hops (BEGIN, execute, fetch, COMMIT, each a round trip to a thread);
the same read took 7 µs on sqlite3 and 99 µs on asyncpg. So SQLAlchemy still builds and
compiles the statement from the models, and converts each value with the column's own
type, but the driver runs it:

- SQLite: on the event loop, on a read-only connection of this process's own. A primary
  key lookup in a WAL database is a few B-tree pages, most likely cached, and a WAL
  reader never waits for a writer; a thread hop costs more than the read. It never
  waits for a lock either (busy timeout 0): when the file is busy, as during a WAL
  recovery, the read goes the slow way below.
- PostgreSQL: asyncpg's fetchrow on a connection checked out of the engine's pool (so
  the pool's size, timeout, idle ping and PgBouncer settings apply), in autocommit: one
  round trip, where a session's transaction took three.

Whatever goes wrong on the fast way (a busy file, a connection the server closed) is
left to the slow way: the same statement through SQLAlchemy on a fresh pooled
connection, whose failures the kernel's error handlers already answer (503 for an
outage, 500 for a bug).

The objects returned are the ORM's own, built as its loader builds them; `adopt` makes
them part of a session as if it had loaded them (kernel.deps does, if the route opens
one), so a slice sees no difference.
"""

import sqlite3
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Column, bindparam, inspect, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import configure_mappers, make_transient_to_detached
from sqlalchemy.util import greenlet_spawn
from sqlmodel import SQLModel

from kernel.db import Database
from kernel.sessions import Session
from kernel.users import User

Processor = Callable[[Any], Any] | None


class _Table:
    """How one table's columns become an ORM instance, as the ORM's loader does it."""

    def __init__(self, model: type[SQLModel], dialect: Any) -> None:
        mapper = inspect(model)
        self.columns: list[Column[Any]] = list(mapper.local_table.columns)
        self.keys = [mapper.get_property_by_column(column).key for column in self.columns]
        self.processors: list[Processor] = [
            column.type.dialect_impl(dialect).result_processor(dialect, None)
            for column in self.columns
        ]
        self._new = mapper.class_manager.new_instance

    def instance(self, values: Sequence[Any], *, convert: bool) -> Any:
        if convert:
            values = [p(v) if p else v for p, v in zip(self.processors, values, strict=True)]
        instance = self._new()
        instance.__dict__.update(zip(self.keys, values, strict=True))
        return instance


class _Plan:
    """The statement and the column conversions for one dialect, from the models."""

    def __init__(self, dialect: Any) -> None:
        self.users, self.sessions = _Table(User, dialect), _Table(Session, dialect)
        self.statement = (
            select(*self.users.columns, *self.sessions.columns)
            .join_from(User, Session, Session.user_id == User.id)  # type: ignore[arg-type]
            .where(User.id == bindparam("user_id"), Session.id == bindparam("session_id"))  # type: ignore[arg-type]
        )
        self.sql = str(self.statement.compile(dialect=dialect))
        id_type = User.__table__.c.id.type  # type: ignore[attr-defined]
        self.bind_id: Processor = id_type.dialect_impl(dialect).bind_processor(dialect)


# One plan per dialect and parameter style, for the process: building it was 6% of the
# CPU of an in-process test (each builds an app), and it depends on nothing else.
_plans: dict[tuple[type, str], _Plan] = {}


def _plan_for(dialect: Any) -> _Plan:
    key = (type(dialect), dialect.paramstyle)
    if key not in _plans:
        _plans[key] = _Plan(dialect)
    return _plans[key]


class CallerReads:
    """`find(user_id, session_id)`: the user and that session of theirs, or None."""

    def __init__(self, database: Database) -> None:
        # The ORM's first query configures every mapper; instances built here without
        # one would lack their attribute machinery (a 500 on the first GET /users/me of
        # a process that had run no query yet: HS256 keys, mail sender off).
        configure_mappers()
        self._database = database
        plan = _plan_for(database.engine.dialect)
        self._users, self._sessions = plan.users, plan.sessions
        self._split = len(self._users.columns)
        self._statement, self._sql, self._bind_id = plan.statement, plan.sql, plan.bind_id
        self._sqlite_path = _sqlite_file(database)
        self._sqlite: sqlite3.Connection | None = None

    async def find(self, user_id: uuid.UUID, session_id: uuid.UUID) -> tuple[User, Session] | None:
        ids = [self._bind_id(i) if self._bind_id else i for i in (user_id, session_id)]
        row = await self._fast(ids)
        if row is None:
            return await self._through_sqlalchemy(user_id, session_id)
        return self._objects(row, convert=True) if row else None

    def close(self) -> None:
        if self._sqlite is not None:
            self._sqlite.close()
            self._sqlite = None

    # --- the fast ways: a row, () for none, or None to go the slow way ---

    async def _fast(self, ids: list[Any]) -> Sequence[Any] | None:
        if not self._database.is_sqlite:
            return await self._on_asyncpg(ids)
        if self._sqlite_path is not None:
            return self._on_sqlite(ids)
        return None  # an in-memory database: only the engine's own connection sees it

    def _on_sqlite(self, ids: list[Any]) -> Sequence[Any] | None:
        try:
            if self._sqlite is None:
                self._sqlite = _read_only_connection(self._sqlite_path or "")
            # fetchall: the statement runs to its end, so no read transaction stays open
            # (an open one would keep checkpoints from emptying the WAL).
            rows = self._sqlite.execute(self._sql, ids).fetchall()
        except sqlite3.Error:
            self.close()
            return None
        return rows[0] if rows else ()

    async def _on_asyncpg(self, ids: list[Any]) -> Sequence[Any] | None:
        pooled = await self._database.engine.raw_connection()
        try:
            row = await pooled.driver_connection.fetchrow(self._sql, *ids)  # type: ignore[union-attr]
        except Exception:
            pooled.invalidate()  # it may be broken: the pool replaces it
            return None
        finally:
            # In a greenlet: returning it may close it (pool overflow), which awaits.
            await greenlet_spawn(pooled.close)
        return tuple(row) if row is not None else ()

    # --- the slow way ---

    async def _through_sqlalchemy(
        self, user_id: uuid.UUID, session_id: uuid.UUID
    ) -> tuple[User, Session] | None:
        async with self._database.engine.connect() as connection:
            result = await connection.execute(
                self._statement, {"user_id": user_id, "session_id": session_id}
            )
            row = result.first()
        return self._objects(tuple(row), convert=False) if row is not None else None

    def _objects(self, row: Sequence[Any], *, convert: bool) -> tuple[User, Session]:
        user = self._users.instance(row[: self._split], convert=convert)
        session = self._sessions.instance(row[self._split :], convert=convert)
        return user, session


def adopt(session: AsyncSession, *instances: SQLModel) -> None:
    """Instances `find` returned, made part of the session as if it had loaded them: its
    changes to them are flushed with its own. Only then: a request that opens no session
    (GET /users/me) does not pay for it."""
    for instance in instances:
        make_transient_to_detached(instance)  # loaded and unchanged, not new
        session.add(instance)


def _sqlite_file(database: Database) -> str | None:
    """The database file, when the process can open it beside the engine (not in memory)."""
    if not database.is_sqlite:
        return None
    path = make_url(database.url).database
    return None if not path or path == ":memory:" else path


def _read_only_connection(path: str) -> sqlite3.Connection:
    # timeout=0: never wait for a lock on the event loop. check_same_thread=False: it is
    # only ever used on the loop's thread, but closed wherever the app shuts down.
    connection = sqlite3.connect(path, timeout=0, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA query_only=ON")
    return connection
