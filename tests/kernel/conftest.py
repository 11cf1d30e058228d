"""Kernel-only fixtures: an empty (never migrated) database on SQLite and on PostgreSQL,
and a temporary folder of slices, so no test ever writes into the source tree."""

import asyncio
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import features
from tests.conftest import admin_execute, async_url, postgres_url
from tests.kernel.helpers import forget_modules


@dataclass(frozen=True)
class EmptyDatabase:
    """A database with no tables at all."""

    url: str  # with the async driver, as the kernel uses it
    operator_url: str  # as an operator writes it in DATABASE_URL


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database(request: pytest.FixtureRequest) -> Iterator[EmptyDatabase]:
    """A new SQLite file, or a newly created PostgreSQL database dropped afterwards."""
    if request.param == "sqlite":
        folder: Path = request.getfixturevalue("sqlite_folder")
        path = folder / "empty.db"
        yield EmptyDatabase(url=f"sqlite+aiosqlite:///{path}", operator_url=f"sqlite:///{path}")
        return
    name = f"userapi_kernel_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    asyncio.run(admin_execute(f'CREATE DATABASE "{name}"'))
    operator_url = postgres_url(name)
    try:
        yield EmptyDatabase(url=async_url(operator_url), operator_url=operator_url)
    finally:
        asyncio.run(admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def more_features(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A second folder of slices that the `features` package searches, for this test only."""
    folder = tmp_path / "more_features"
    folder.mkdir()
    monkeypatch.setattr(features, "__path__", [*features.__path__, str(folder)])
    yield folder
    for child in folder.iterdir():
        forget_modules(f"{features.__name__}.{child.name}")
