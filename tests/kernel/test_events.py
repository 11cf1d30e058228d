"""The security events table (kernel.events): retention by `userapi purge-expired` on
both databases, and on PostgreSQL a trigger that keeps the table append-only whatever
the application sends, tried through real connections."""

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.exc import DBAPIError

from kernel.db import Database, utc_now
from kernel.events import EventType, SecurityEvent, record_event
from kernel.settings import SettingsError, load_settings
from tests.factories import Account, all_events, types_of
from tests.servers import run_cli, server_env

OLD = timedelta(days=400)  # past the default retention of 365 days
ONLY_POSTGRESQL = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


async def add_event(app: FastAPI, user_id: str, *, age: timedelta) -> uuid.UUID:
    """An event of `age`, written through the kernel as a slice writes one, then dated."""
    database: Database = app.state.database
    async with database.session() as session:
        event = record_event(
            session, EventType.login_failed, user_id=uuid.UUID(user_id), actor_id=None
        )
        event.at = utc_now() - age  # before the INSERT: an event is never updated
    return event.id


@asynccontextmanager
async def plain_connection(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection of our own to the app's PostgreSQL database, as the app's user."""
    connection = await asyncpg.connect(database_url.replace("+asyncpg", "", 1), timeout=5)
    try:
        yield connection
    finally:
        await connection.close()


# --- retention ---------------------------------------------------------------------------


async def test_purge_deletes_events_past_the_retention_and_keeps_the_rest(
    client: httpx.AsyncClient, app: FastAPI, admin: Account, database_url: str, tmp_path: Path
) -> None:
    old = await add_event(app, admin.id, age=OLD)
    recent = await add_event(app, admin.id, age=timedelta(days=300))

    result = await run_cli("purge-expired", env=server_env(database_url), cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert "1 expired security events deleted" in result.stdout
    ids = {event["id"] for event in await all_events(client, admin)}
    assert str(recent) in ids
    assert str(old) not in ids
    assert {"registered", "login_succeeded"} <= set(types_of(await all_events(client, admin)))


async def test_purge_follows_audit_retention_days(
    client: httpx.AsyncClient, app: FastAPI, admin: Account, database_url: str, tmp_path: Path
) -> None:
    ten_days = await add_event(app, admin.id, age=timedelta(days=10))

    env = server_env(database_url, AUDIT_RETENTION_DAYS="7")
    result = await run_cli("purge-expired", env=env, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert "1 expired security events deleted" in result.stdout
    assert str(ten_days) not in {event["id"] for event in await all_events(client, admin)}


@pytest.mark.parametrize("value", ["0", "-1", "days"])
def test_a_bad_retention_names_the_setting(value: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(audit_retention_days=value)

    assert "AUDIT_RETENTION_DAYS" in str(caught.value)


# --- no secret in an event ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["password", "refresh_token", "code", "password_hash"])
async def test_an_event_refuses_details_that_could_hold_a_secret(app: FastAPI, name: str) -> None:
    database: Database = app.state.database
    async with database.session() as session:
        with pytest.raises(ValueError, match="may not be named"):
            record_event(
                session, EventType.login_failed, user_id=None, actor_id=None, details={name: "x"}
            )


async def test_an_event_refuses_a_detail_not_declared_personal_or_not(app: FastAPI) -> None:
    # Erasure removes the personal ones: a new detail must say which it is.
    database: Database = app.state.database
    async with database.session() as session:
        with pytest.raises(ValueError, match="not in DETAIL_NAMES"):
            record_event(
                session, EventType.login_failed, user_id=None, actor_id=None, details={"city": "x"}
            )


# --- append-only on PostgreSQL -----------------------------------------------------------


@ONLY_POSTGRESQL
async def test_postgresql_refuses_any_update_that_changes_or_adds_to_an_event(
    client: httpx.AsyncClient, admin: Account, database_url: str
) -> None:
    before = await all_events(client, admin)

    async with plain_connection(database_url) as connection:
        for statement in (
            "UPDATE security_events SET ip = '10.0.0.1'",
            "UPDATE security_events SET user_agent = 'forged'",
            """UPDATE security_events SET details = details || '{"reason": "forged"}'""",
            "UPDATE security_events SET at = at - interval '1000 days'",
            "UPDATE security_events SET type = 'logged_out'",
            "UPDATE security_events SET user_id = NULL",
            "UPDATE security_events SET actor_id = NULL",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await connection.execute(statement)

    assert await all_events(client, admin) == before


@ONLY_POSTGRESQL
async def test_postgresql_lets_an_update_only_take_personal_fields_away(
    client: httpx.AsyncClient, admin: Account, database_url: str
) -> None:
    # Erasure's update (kernel.events.scrub_events): the IP and agent go, details shrink.
    before = await all_events(client, admin)
    assert any(event["details"] for event in before)

    async with plain_connection(database_url) as connection:
        await connection.execute(
            "UPDATE security_events SET ip = NULL, user_agent = NULL, details = '{}'"
        )

    after = await all_events(client, admin)
    emptied: dict[str, Any] = {"ip": None, "user_agent": None, "details": {}}
    assert after == [event | emptied for event in before]


@ONLY_POSTGRESQL
async def test_postgresql_refuses_deleting_an_event_within_the_retention(
    client: httpx.AsyncClient, app: FastAPI, admin: Account, database_url: str
) -> None:
    await add_event(app, admin.id, age=timedelta(days=300))
    before = await all_events(client, admin)

    async with plain_connection(database_url) as connection:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await connection.execute("DELETE FROM security_events")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            # The purge's own setting does not open a recent event either.
            await as_the_purge(connection, "DELETE FROM security_events")

    assert await all_events(client, admin) == before


@ONLY_POSTGRESQL
async def test_postgresql_lets_only_a_retention_purge_delete_an_old_event(
    client: httpx.AsyncClient, app: FastAPI, admin: Account, database_url: str
) -> None:
    old = await add_event(app, admin.id, age=OLD)
    older_than = "DELETE FROM security_events WHERE at < now() - interval '365 days'"

    async with plain_connection(database_url) as connection:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await connection.execute(older_than)  # no retention set: not the purge
        deleted = await as_the_purge(connection, older_than)

    assert deleted == "DELETE 1"
    assert str(old) not in {event["id"] for event in await all_events(client, admin)}


@ONLY_POSTGRESQL
async def test_the_applications_own_session_cannot_change_an_event(
    client: httpx.AsyncClient, app: FastAPI, admin: Account
) -> None:
    latest = uuid.UUID((await all_events(client, admin))[0]["id"])

    with pytest.raises(DBAPIError, match="never changed"):
        await change_ip(app.state.database, latest)

    assert (await all_events(client, admin))[0]["ip"] != "10.0.0.1"


async def change_ip(database: Database, event_id: uuid.UUID) -> None:
    async with database.session() as session:
        event = await session.get(SecurityEvent, event_id)
        assert event is not None
        event.ip = "10.0.0.1"


async def as_the_purge(connection: asyncpg.Connection, statement: str) -> str:
    """Run `statement` in a transaction that set the retention, as `purge-expired` does."""
    async with connection.transaction():
        await connection.execute("SELECT set_config('userapi.audit_retention_days', '365', true)")
        result: str = await connection.execute(statement)
    return result
