"""Migrations: from an empty database to exactly the models, and back, on both databases."""

from collections.abc import AsyncIterator
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from kernel import migrations
from kernel.db import Database, metadata
from kernel.settings import load_settings
from kernel.slices import load_tables
from tests.factories import TEST_SECRET
from tests.kernel.conftest import EmptyDatabase


@pytest.fixture
async def database(empty_database: EmptyDatabase) -> AsyncIterator[Database]:
    load_tables()
    db = Database(
        load_settings(database_url=empty_database.url, env="test", secret_key=TEST_SECRET)
    )
    try:
        yield db
    finally:
        await db.dispose()


def _differences(connection: Connection) -> list[Any]:
    # Compared as `alembic check` compares (migrations/env.py): on this database's terms.
    opts = {"include_object": migrations.schema_filter(connection.dialect.name)}
    return list(compare_metadata(MigrationContext.configure(connection, opts=opts), metadata))


def _tables(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names())


async def differences(database: Database) -> list[Any]:
    async with database.engine.connect() as connection:
        return await connection.run_sync(_differences)


async def tables(database: Database) -> set[str]:
    async with database.engine.connect() as connection:
        return await connection.run_sync(_tables)


async def test_upgrading_an_empty_database_gives_exactly_the_models(database: Database) -> None:
    await migrations.upgrade(database)

    assert await differences(database) == []


async def test_upgrade_records_the_newest_revision(database: Database) -> None:
    await migrations.upgrade(database)

    assert await migrations.current_revision(database) == migrations.head_revision()


async def test_the_models_have_tables(database: Database) -> None:
    # The control for the comparison above: an empty database does differ from the models.
    assert await differences(database) != []


async def test_downgrade_to_base_leaves_only_alembic_version(database: Database) -> None:
    await migrations.upgrade(database)

    await migrations.downgrade(database, "base")

    assert await tables(database) == {"alembic_version"}
    assert await migrations.current_revision(database) is None


async def test_upgrading_again_after_downgrade_gives_exactly_the_models(
    database: Database,
) -> None:
    await migrations.upgrade(database)
    await migrations.downgrade(database, "base")

    await migrations.upgrade(database)

    assert await differences(database) == []
    assert await migrations.current_revision(database) == migrations.head_revision()


async def test_upgrading_twice_is_harmless(database: Database) -> None:
    await migrations.upgrade(database)

    await migrations.upgrade(database)

    assert await differences(database) == []
