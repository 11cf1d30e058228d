"""Every test runs twice, on SQLite and on PostgreSQL, against the real app over HTTP.

Isolation: SQLite gets a fresh copy of a migrated database file per test; PostgreSQL
gets one migrated database per test session, truncated before each test. Both commit
for real, so concurrency tests see what production would.
"""

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from kernel import schema
from kernel.app import create_app
from kernel.db import Database, metadata
from kernel.settings import Settings, load_settings
from kernel.slices import load_tables
from tests.factories import FAST_HASHING, TEST_SECRET, Account, make_admin, make_user

POSTGRES_ADMIN_DSN = os.environ.get(
    "USERAPI_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
)


def _postgres_url(database: str) -> str:
    base = POSTGRES_ADMIN_DSN.rsplit("/", 1)[0]
    return f"{base.replace('postgresql://', 'postgresql+asyncpg://', 1)}/{database}"


async def _admin_execute(*statements: str) -> None:
    connection = await asyncpg.connect(POSTGRES_ADMIN_DSN, timeout=5)
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


async def _migrate(url: str) -> None:
    database = Database(load_settings(database_url=url, env="test", secret_key=TEST_SECRET))
    try:
        await schema.upgrade(database)
    finally:
        await database.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "userapi.db"
    asyncio.run(_migrate(f"sqlite+aiosqlite:///{path}"))
    return path


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    name = f"userapi_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    try:
        asyncio.run(_admin_execute(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError) as error:
        message = f"PostgreSQL at {POSTGRES_ADMIN_DSN} is unreachable: {error}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)  # under CI a missing PostgreSQL fails the run
        pytest.skip(message)
    url = _postgres_url(name)
    asyncio.run(_migrate(url))
    yield url
    asyncio.run(_admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        copy = tmp_path / "userapi.db"
        shutil.copyfile(template, copy)
        return f"sqlite+aiosqlite:///{copy}"
    url: str = request.getfixturevalue("postgres_database")
    load_tables()
    tables = ", ".join(f'"{table.name}"' for table in metadata.sorted_tables)
    asyncio.run(_truncate(url, tables))
    return url


async def _truncate(url: str, tables: str) -> None:
    database = Database(load_settings(database_url=url, env="test", secret_key=TEST_SECRET))
    try:
        async with database.engine.begin() as connection:
            await connection.execute(text(f"TRUNCATE {tables} CASCADE"))
    finally:
        await database.dispose()


def make_settings(database_url: str, data_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "env": "test",
        "database_url": database_url,
        "secret_key": TEST_SECRET,
        "data_dir": data_dir,
        **FAST_HASHING,
        **overrides,
    }
    return load_settings(**values)


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return make_settings(database_url, tmp_path)


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    # ASGITransport does not run the lifespan: enter it here, as a server would.
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


@pytest.fixture
async def user(client: httpx.AsyncClient) -> Account:
    return await make_user(client)


@pytest.fixture
async def other_user(client: httpx.AsyncClient) -> Account:
    return await make_user(client)


@pytest.fixture
async def admin(client: httpx.AsyncClient, app: FastAPI) -> Account:
    return await make_admin(client, app)
