"""Pooled PostgreSQL connections the server closed while they sat idle are replaced before
a request uses them (kernel.db pings a connection idle for IDLE_PING_SECONDS, instead of
pinging on every checkout). PostgreSQL only: a SQLite file has no server to lose it.
"""

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import kernel.db
from tests.conftest import admin_connection, admin_execute, make_settings, migrate, postgres_url
from tests.factories import make_user, serving


@pytest.fixture
async def own_database(postgres_database: str) -> AsyncIterator[str]:
    """A database of this test's own, so terminating its connections harms no one else
    (asking for postgres_database applies the suite's rule: no PostgreSQL fails under CI)."""
    assert postgres_database
    name = f"userapi_idle_{uuid.uuid4().hex[:8]}"
    await admin_execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        await admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _terminate_connections(name: str) -> int:
    async with admin_connection() as admin:
        ended = await admin.fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = $1 AND pid <> pg_backend_pid()",
            name,
        )
    return len(ended)


@pytest.mark.parametrize(("idle_ping_seconds", "first_answer"), [(0.0, 200), (3600.0, 503)])
async def test_a_connection_closed_while_idle_is_replaced_once_it_was_idle_long_enough(
    own_database: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    idle_ping_seconds: float,
    first_answer: int,
) -> None:
    # 0: every pooled connection counts as idle long enough, so it is pinged; 3600: none
    # does, and the request meets the dead connection (the cost pool_pre_ping paid for).
    monkeypatch.setattr(kernel.db, "IDLE_PING_SECONDS", idle_ping_seconds)
    url = postgres_url(own_database)
    await migrate(url)
    async with serving(make_settings(url, tmp_path)) as (_, client):
        account = await make_user(client)
        assert (await client.get("/api/v1/users/me", headers=account.headers)).status_code == 200

        assert await _terminate_connections(own_database) > 0
        first = await client.get("/api/v1/users/me", headers=account.headers)
        then = await client.get("/api/v1/users/me", headers=account.headers)

    assert first.status_code == first_answer, first.text
    # Either way the pool recovers: a disconnect invalidates every pooled connection.
    assert then.status_code == 200, then.text


async def test_a_request_that_meets_a_closed_connection_is_answered_on_a_new_one(
    own_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The token check (kernel.callers) reads on a pooled connection; when the server has
    # closed it, the check is made again on a fresh one instead of failing the request.
    # One pooled connection, never pinged: the request is sure to meet the dead one.
    monkeypatch.setattr(kernel.db, "IDLE_PING_SECONDS", 3600.0)
    url = postgres_url(own_database)
    await migrate(url)
    async with serving(make_settings(url, tmp_path, db_pool_size=1)) as (_, client):
        account = await make_user(client)
        assert (await client.get("/api/v1/users/me", headers=account.headers)).status_code == 200

        assert await _terminate_connections(own_database) > 0
        me = await client.get("/api/v1/users/me", headers=account.headers)

    assert me.status_code == 200, me.text
    assert me.json()["email"] == account.email
