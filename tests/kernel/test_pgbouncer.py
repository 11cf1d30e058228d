"""Through a connection pooler: PgBouncer in transaction mode, with DATABASE_POOLER=pgbouncer.

README "Configuration" (DATABASE_POOLER). PostgreSQL only: a pooler for PostgreSQL.
A real PgBouncer (tests/pgbouncer.py) in front of a new database; `userapi migrate`
and `userapi serve` reach the database only through it.
"""

import asyncio
import os
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import POSTGRES_ADMIN_DSN, admin_execute
from tests.factories import DEFAULT_PASSWORD, registration
from tests.pgbouncer import pgbouncer_running
from tests.servers import cli_env, log_tail, run_cli, running_server
from tests.waiting import poll

POOLER = {"DATABASE_POOLER": "pgbouncer"}
ADMIN_EMAIL = "root@example.com"
ADMIN_PASSWORD = "a long admin passphrase nobody else uses"
READY_SECONDS = 60.0
# A statement one transaction prepared, looked for or prepared again in another.
NAMED_STATEMENT_FAILURE = re.compile(
    r'prepared statement "__asyncpg_stmt_\w+__" (?:already exists|does not exist)'
)


@pytest.fixture
async def through_pgbouncer(tmp_path: Path) -> AsyncIterator[str]:
    """A new, empty database, and the URL that reaches it only through PgBouncer."""
    name = f"userapi_pooled_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    try:
        await admin_execute(f'CREATE DATABASE "{name}"')
    except OSError as error:
        message = f"PostgreSQL at {POSTGRES_ADMIN_DSN} is unreachable: {error}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    try:
        async with pgbouncer_running(tmp_path / "pgbouncer", POSTGRES_ADMIN_DSN, name) as url:
            yield url
    finally:
        await admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _login(http: httpx.AsyncClient, email: str, password: str) -> dict[str, str]:
    response = await http.post("/api/v1/auth/login", json={"email": email, "password": password})
    assert response.status_code == 200, response.text
    tokens: dict[str, str] = response.json()
    return tokens


def _bearer(tokens: dict[str, str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens['access_token']}"}


async def test_migrate_then_the_core_flows_work_through_pgbouncer(
    through_pgbouncer: str, tmp_path: Path
) -> None:
    env = cli_env(DATABASE_URL=through_pgbouncer, **POOLER)
    migrated = await run_cli("migrate", env=env, cwd=tmp_path)
    assert migrated.returncode == 0, migrated.stderr
    made = await run_cli(
        "create-admin", "--email", ADMIN_EMAIL, "--password", ADMIN_PASSWORD, env=env, cwd=tmp_path
    )
    assert made.returncode == 0, made.stderr

    async with (
        running_server(through_pgbouncer, tmp_path, env=POOLER) as server,
        httpx.AsyncClient(base_url=server.base_url, timeout=30) as http,
    ):
        answers = await poll(
            lambda: http.get("/ready"),
            until=lambda response: response.status_code == 200,
            within=READY_SECONDS,
            what="/ready answers 200 through PgBouncer",
        )
        assert answers[-1].json() == {"status": "ok"}

        bodies = [registration() for _ in range(3)]
        registered = await asyncio.gather(
            *(http.post("/api/v1/auth/register", json=body) for body in bodies)
        )
        assert [response.status_code for response in registered] == [201] * 3, [
            response.text for response in registered
        ]
        tokens = await _login(http, bodies[0]["email"], DEFAULT_PASSWORD)

        # Many at once: the app's pooled connections interleave their transactions on
        # PgBouncer's two server connections.
        mes = await asyncio.gather(
            *(http.get("/api/v1/users/me", headers=_bearer(tokens)) for _ in range(30))
        )
        assert {response.status_code for response in mes} == {200}
        assert {response.json()["email"] for response in mes} == {bodies[0]["email"]}

        refreshed = await http.post(
            "/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
        )
        assert refreshed.status_code == 200, refreshed.text
        tokens = refreshed.json()
        me = await http.get("/api/v1/users/me", headers=_bearer(tokens))
        assert me.status_code == 200, me.text

        logout = await http.post(
            "/api/v1/auth/logout", json={"refresh_token": tokens["refresh_token"]}
        )
        assert logout.status_code == 204, logout.text
        # The session is gone: its access token and its refresh token are refused at once.
        after_logout = await http.get("/api/v1/users/me", headers=_bearer(tokens))
        assert after_logout.status_code == 401, after_logout.text
        spent = await http.post(
            "/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
        )
        assert spent.status_code == 401, spent.text

        admin = await _login(http, ADMIN_EMAIL, ADMIN_PASSWORD)
        listed = await http.get("/api/v1/users", headers=_bearer(admin), params={"limit": 50})
        assert listed.status_code == 200, listed.text
        emails = {item["email"] for item in listed.json()["items"]}
        assert emails == {ADMIN_EMAIL, *(body["email"] for body in bodies)}

        assert not NAMED_STATEMENT_FAILURE.search(log_tail(server.log_path, lines=10_000))


async def test_without_the_setting_the_server_fails_behind_pgbouncer(
    through_pgbouncer: str, tmp_path: Path
) -> None:
    """The failure DATABASE_POOLER exists for, shown on the same PgBouncer: asyncpg's
    named, cached statements meet each other on shared server connections."""
    migrated = await run_cli(
        "migrate", env=cli_env(DATABASE_URL=through_pgbouncer, **POOLER), cwd=tmp_path
    )
    assert migrated.returncode == 0, migrated.stderr

    async with (
        running_server(through_pgbouncer, tmp_path) as server,
        httpx.AsyncClient(base_url=server.base_url, timeout=30) as http,
    ):
        await poll(
            lambda: asyncio.gather(*(http.get("/ready") for _ in range(10))),
            until=lambda answers: any(answer.status_code >= 500 for answer in answers),
            within=READY_SECONDS,
            what="a /ready answer fails on a prepared statement",
        )
        assert NAMED_STATEMENT_FAILURE.search(log_tail(server.log_path, lines=10_000))
