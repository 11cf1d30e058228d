"""Kernel-only fixtures: an empty (never migrated) database on SQLite and on PostgreSQL."""

import asyncio
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from tests.conftest import POSTGRES_ADMIN_DSN


@dataclass(frozen=True)
class EmptyDatabase:
    """A database with no tables at all."""

    url: str  # with the async driver, as the kernel uses it
    operator_url: str  # as an operator writes it in DATABASE_URL


async def _admin_execute(statement: str) -> None:
    connection = await asyncpg.connect(POSTGRES_ADMIN_DSN, timeout=5)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EmptyDatabase]:
    """A new SQLite file, or a newly created PostgreSQL database dropped afterwards."""
    if request.param == "sqlite":
        path = tmp_path / "empty.db"
        yield EmptyDatabase(url=f"sqlite+aiosqlite:///{path}", operator_url=f"sqlite:///{path}")
        return
    name = f"userapi_kernel_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    asyncio.run(_admin_execute(f'CREATE DATABASE "{name}"'))
    base = POSTGRES_ADMIN_DSN.rsplit("/", 1)[0]
    try:
        yield EmptyDatabase(
            url=f"{base.replace('postgresql://', 'postgresql+asyncpg://', 1)}/{name}",
            operator_url=f"{base}/{name}",
        )
    finally:
        asyncio.run(_admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
