"""Alembic, driven from code: upgrade on start-up, and can this code run on the schema
(for /ready).

During a rolling deploy old and new processes share one database. Migrations only add
(tables, nullable or defaulted columns), so a database migrated AHEAD of a process's
code still holds everything that code reads and writes: the process stays ready, and
`userapi serve` leaves such a database alone. A database BEHIND the code lacks what the
code needs: not ready until `userapi migrate`. And a table no migration creates (a new
slice's, forgotten) is named, so the mistake is found at deploy, not by a user.
"""

import logging
from functools import cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.environment import IncludeObjectFn, NameFilterType
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Index, MetaData, inspect
from sqlalchemy.engine import Connection
from sqlalchemy.schema import SchemaItem

from kernel.db import Database

log = logging.getLogger("userapi.migrations")

_SOURCE_TREE = Path(__file__).resolve().parents[2] / "migrations"
_INSTALLED = Path(__file__).resolve().parent / "_migrations"


def migrations_dir() -> Path:
    """migrations/ beside src/ in a checkout; shipped inside the package in a wheel."""
    return _SOURCE_TREE if _SOURCE_TREE.is_dir() else _INSTALLED


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    return config


def schema_filter(dialect: str) -> IncludeObjectFn:
    """What of the models is part of the schema on `dialect`, for Alembic's comparisons
    (autogenerate, `alembic check`, the migration tests): an index of a kind only
    PostgreSQL has (`postgresql_using`: GIN, GiST...) is created by its migration there
    alone, so elsewhere it is neither missing nor to be created."""

    def include(
        item: SchemaItem,
        _name: str | None,
        _type: NameFilterType,
        _reflected: bool,
        _compare_to: SchemaItem | None,
    ) -> bool:
        postgresql_only = (
            isinstance(item, Index) and item.dialect_options["postgresql"]["using"] is not None
        )
        return dialect == "postgresql" or not postgresql_only

    return include


@cache  # the scripts a process ships with do not change under it; parsing them costs 2 ms
def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def is_in_history(revision: str) -> bool:
    """Whether this code's migrations include REVISION (else it is a later release's)."""
    try:
        return ScriptDirectory.from_config(alembic_config()).get_revision(revision) is not None
    except CommandError:  # "Can't locate revision": not ours
        return False


def _revision_of(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def _run(connection: Connection, action: str, revision: str) -> None:
    config = alembic_config()
    # env.py uses this connection instead of opening its own.
    config.attributes["connection"] = connection
    if action == "upgrade":
        current = _revision_of(connection)
        if current is not None and not is_in_history(current):
            # A newer release migrated it (rolling deploy): there is nothing to do here.
            log.warning("the database is at %s, ahead of this code: not migrating", current)
            return
        command.upgrade(config, revision)
    else:
        command.downgrade(config, revision)


async def upgrade(database: Database, revision: str = "head") -> None:
    async with database.engine.execution_options(sqlite_begin="IMMEDIATE").begin() as connection:
        await connection.run_sync(_run, "upgrade", revision)


async def downgrade(database: Database, revision: str = "base") -> None:
    async with database.engine.execution_options(sqlite_begin="IMMEDIATE").begin() as connection:
        await connection.run_sync(_run, "downgrade", revision)


async def current_revision(database: Database) -> str | None:
    async with database.engine.connect() as connection:
        return await connection.run_sync(_revision_of)


def _missing(connection: Connection, metadata: MetaData) -> list[str]:
    """Every table and column of the models that the database does not have."""
    # One reflection of every table's columns (one catalog query on PostgreSQL).
    present = {
        table: {column["name"] for column in columns}
        for (_, table), columns in inspect(connection).get_multi_columns().items()
    }
    missing = []
    for table in metadata.sorted_tables:
        if table.name not in present:
            missing.append(f"table {table.name}")
            continue
        have = present[table.name]
        missing += [f"column {table.name}.{c.name}" for c in table.columns if c.name not in have]
    return missing


class SchemaReadiness:
    """Why this code cannot run on the database's schema, or None when it can."""

    def __init__(self, metadata: MetaData) -> None:
        self._metadata = metadata
        self._head = head_revision()
        # The revision whose schema was last found complete: probes (every few seconds,
        # from each load balancer) then cost one query, not an inspection of every table.
        self._verified: str | None = None

    async def problem(self, database: Database) -> str | None:
        revision = await current_revision(database)
        if revision is not None and revision == self._verified:
            return None
        if revision is None:
            return f"the database has no migrations applied: run `userapi migrate` ({self._head})"
        if revision != self._head and is_in_history(revision):
            return (
                f"the database schema is at {revision}, behind {self._head} that this code "
                "needs: run `userapi migrate`"
            )
        async with database.engine.connect() as connection:
            missing = await connection.run_sync(_missing, self._metadata)
        if missing:
            why = " (no migration creates them)" if revision == self._head else ""
            return f"missing from the database{why}: {', '.join(missing)}"
        self._verified = revision
        return None
