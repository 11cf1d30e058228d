"""GET /health and GET /ready (API.md "GET /health and GET /ready")."""

from pathlib import Path

import httpx
from fastapi import FastAPI

from kernel import migrations
from kernel.db import Database
from tests.conftest import make_settings
from tests.factories import assert_problem, serving
from tests.kernel.conftest import EmptyDatabase


async def test_health_is_200_ok(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_ready_is_200_on_a_migrated_database(client: httpx.AsyncClient) -> None:
    response = await client.get("/ready")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_ready_is_503_when_the_schema_is_behind_the_newest_migration(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    database: Database = app.state.database
    assert (await client.get("/ready")).status_code == 200  # the same process, ready before
    await migrations.downgrade(database, "-1")
    try:
        behind = await migrations.current_revision(database)
        response = await client.get("/ready")
    finally:
        # PostgreSQL's test database is shared by the session: put the schema back.
        await migrations.upgrade(database)

    assert_problem(response, 503, "schema_not_ready")
    detail = response.json()["detail"]
    assert f"at {behind}, behind {migrations.head_revision()}" in detail
    assert "userapi migrate" in detail
    assert response.headers["Retry-After"]


async def test_ready_is_503_on_a_database_never_migrated(
    empty_database: EmptyDatabase, tmp_path: Path
) -> None:
    async with serving(make_settings(empty_database.url, tmp_path)) as (_, http):
        response = await http.get("/ready")

    assert_problem(response, 503, "schema_not_ready")
    assert "no migrations applied" in response.json()["detail"]


async def test_health_is_200_even_when_the_database_is_not_ready(
    empty_database: EmptyDatabase, tmp_path: Path
) -> None:
    async with serving(make_settings(empty_database.url, tmp_path)) as (_, http):
        response = await http.get("/health")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_ready_is_503_when_the_database_does_not_answer(tmp_path: Path) -> None:
    # Port 1 on the loopback: nothing listens there, the connection is refused at once.
    unreachable = "postgresql+asyncpg://postgres@127.0.0.1:1/userapi"

    async with serving(make_settings(unreachable, tmp_path)) as (_, http):
        response = await http.get("/ready")

    assert_problem(response, 503, "database_unavailable")
