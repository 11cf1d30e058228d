"""Crashes, outages and shutdowns: nothing acknowledged is lost, nothing hangs.

- kill -9 under load: every registration that got a 201 is there after a restart.
- SIGTERM: requests in flight finish before the process exits.
- PostgreSQL outage: requests answer 503 problem+json at once, /ready says 503, and the
  service recovers by itself when the database is back.
"""

import asyncio
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import admin_connection, admin_execute, make_settings, migrate, postgres_url
from tests.factories import (
    DEFAULT_PASSWORD,
    assert_problem,
    make_user,
    refresh,
    registration,
    serving,
)
from tests.servers import running_server
from tests.waiting import wait_until

CLIENTS = 6
REGISTRATIONS_BEFORE_KILL = 40


async def _register_until_failure(
    base_url: str, client_number: int, acked: list[str], enough: asyncio.Event
) -> None:
    """Register users one after another until the server stops answering."""
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        for index in range(10_000):
            email = f"client{client_number}-{index}@example.com"
            try:
                response = await client.post(
                    "/api/v1/auth/register", json=registration(email=email)
                )
            except httpx.TransportError:
                return
            if response.status_code == 201:
                acked.append(email)
            if len(acked) >= REGISTRATIONS_BEFORE_KILL:
                enough.set()


async def test_every_acknowledged_registration_survives_kill_9(
    database_url: str, tmp_path: Path
) -> None:
    acknowledged: list[str] = []
    enough = asyncio.Event()
    async with running_server(database_url, tmp_path) as server:
        writers = [
            asyncio.create_task(
                _register_until_failure(server.base_url, number, acknowledged, enough)
            )
            for number in range(CLIENTS)
        ]
        async with asyncio.timeout(60):
            await enough.wait()
        server.signal(signal.SIGKILL)  # mid-stream: requests are in flight
        await asyncio.gather(*writers)

    async with (
        running_server(database_url, tmp_path) as restarted,
        httpx.AsyncClient(base_url=restarted.base_url, timeout=30) as client,
    ):
        logins = [
            await client.post(
                "/api/v1/auth/login", json={"email": email, "password": DEFAULT_PASSWORD}
            )
            for email in acknowledged
        ]
    assert len(acknowledged) >= REGISTRATIONS_BEFORE_KILL
    assert [response.status_code for response in logins] == [200] * len(acknowledged)


async def test_sigterm_lets_requests_in_flight_finish(database_url: str, tmp_path: Path) -> None:
    # One hashing slot and real argon2 cost: the logins queue, so some are still in
    # flight when SIGTERM arrives, once the server has them all.
    slow = {
        "HASH_CONCURRENCY": "1",
        # Six t=3, 64 MiB hashes in a row outlast the default 10 s wait on a loaded
        # machine (two logins got 503 server_busy): the wait is not what this tests.
        "HASH_WAIT_SECONDS": "300",
        "ARGON2_TIME_COST": "3",
        "ARGON2_MEMORY_KIB": "65536",
        "LOGIN_MAX_FAILURES": "1000",
    }
    email = f"graceful-{uuid.uuid4().hex[:8]}@example.com"
    body = {"email": email, "password": DEFAULT_PASSWORD}
    async with (
        running_server(database_url, tmp_path, env=slow) as server,
        httpx.AsyncClient(base_url=server.base_url, timeout=60) as client,
    ):
        registered = await client.post("/api/v1/auth/register", json=registration(email=email))
        assert registered.status_code == 201
        sent = 0

        async def count_sent(event: str, _: dict[str, Any]) -> None:
            nonlocal sent
            sent += event == "http11.send_request_body.complete"

        logins = [
            asyncio.create_task(
                client.post("/api/v1/auth/login", json=body, extensions={"trace": count_sent})
            )
            for _ in range(6)
        ]
        await wait_until(
            lambda: sent == len(logins) and server.has_read_everything_sent(),
            within=30,
            what="the server has accepted and read all six logins",
        )
        in_flight = sum(not login.done() for login in logins)
        server.signal(signal.SIGTERM)
        responses = await asyncio.gather(*logins)
        exit_code = await server.wait_exit()

    assert in_flight > 0
    assert [response.status_code for response in responses] == [200] * 6
    # uvicorn re-raises SIGTERM once it has drained, so the exit reads "terminated".
    assert exit_code in (0, -signal.SIGTERM)
    # Each answered login was committed whole: its refresh token works after a restart.
    async with (
        running_server(database_url, tmp_path) as restarted,
        httpx.AsyncClient(base_url=restarted.base_url, timeout=30) as client,
    ):
        refreshed = [
            await refresh(client, response.json()["refresh_token"]) for response in responses
        ]
    assert [response.status_code for response in refreshed] == [200] * 6


@pytest.fixture
async def outage_database(postgres_database: str) -> AsyncIterator[str]:
    """A PostgreSQL database of this test's own, so refusing connections harms no one else.

    Asking for postgres_database applies the suite's rule: no PostgreSQL fails under CI.
    """
    assert postgres_database
    name = f"userapi_outage_{uuid.uuid4().hex[:8]}"
    await admin_execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        await admin_execute(
            f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true',
            f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)',
        )


async def _set_outage(name: str, *, down: bool) -> None:
    async with admin_connection() as admin:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(not down).lower()}')
        if down:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
            )


async def test_postgresql_outage_gives_503_and_recovers_without_restart(
    outage_database: str, tmp_path: Path
) -> None:
    # PostgreSQL only: SQLite runs inside the process, there is no server to lose.
    url = postgres_url(outage_database)
    await migrate(url)
    async with serving(make_settings(url, tmp_path)) as (_, client):
        account = await make_user(client)

        await _set_outage(outage_database, down=True)
        during_me = await client.get("/api/v1/users/me", headers=account.headers)
        during_ready = await client.get("/ready")
        during_register = await client.post(
            "/api/v1/auth/register", json=registration(email="late@example.com")
        )
        await _set_outage(outage_database, down=False)
        after_me = await client.get("/api/v1/users/me", headers=account.headers)
        after_ready = await client.get("/ready")

    for response in (during_me, during_ready, during_register):
        assert_problem(response, 503, "database_unavailable")
        assert response.headers["retry-after"]
    assert after_me.status_code == 200
    assert after_ready.status_code == 200


async def test_an_unresolvable_database_host_gives_503_not_500(tmp_path: Path) -> None:
    settings = make_settings("postgresql://postgres@no-such-host.invalid/userapi", tmp_path)
    async with serving(settings) as (_, client):
        ready = await client.get("/ready")
        register = await client.post("/api/v1/auth/register", json=registration())

    for response in (ready, register):
        assert_problem(response, 503, "database_unavailable")
