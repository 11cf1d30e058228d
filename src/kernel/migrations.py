"""Alembic, driven from code: upgrade on start-up, and is the schema at head (for /ready)."""

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from kernel.db import Database

_SOURCE_TREE = Path(__file__).resolve().parents[2] / "migrations"
_INSTALLED = Path(__file__).resolve().parent / "_migrations"


def migrations_dir() -> Path:
    """migrations/ beside src/ in a checkout; shipped inside the package in a wheel."""
    return _SOURCE_TREE if _SOURCE_TREE.is_dir() else _INSTALLED


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def _run(connection: Connection, action: str, revision: str) -> None:
    config = alembic_config()
    # env.py uses this connection instead of opening its own.
    config.attributes["connection"] = connection
    if action == "upgrade":
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
        return await connection.run_sync(
            lambda sync: MigrationContext.configure(sync).get_current_revision()
        )
