"""`userapi purge-expired` sweeps expired sessions and stale login counters."""

import uuid
from datetime import timedelta
from pathlib import Path

import httpx
from fastapi import FastAPI
from sqlalchemy import func, select, update
from sqlmodel import col

from kernel.db import Database, utc_now
from kernel.guesses import PasswordAttempt
from kernel.sessions import Session
from tests.factories import assert_problem, make_user
from tests.servers import run_cli, server_env
from tests.waiting import wait_until


async def _expire_sessions_of(app: FastAPI, user_id: str) -> None:
    database: Database = app.state.database
    async with database.session() as session:
        await session.execute(
            update(Session)
            .where(col(Session.user_id) == uuid.UUID(user_id))
            .values(expires_at=utc_now())
        )


async def test_purge_deletes_expired_sessions_and_keeps_live_ones(
    client: httpx.AsyncClient, app: FastAPI, database_url: str, tmp_path: Path
) -> None:
    expired = await make_user(client)
    live = await make_user(client)
    await _expire_sessions_of(app, expired.id)

    result = await run_cli("purge-expired", env=server_env(database_url), cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert "1 expired sessions deleted" in result.stdout
    gone = await client.post("/api/v1/auth/refresh", json={"refresh_token": expired.refresh_token})
    assert_problem(gone, 401, "invalid_token")
    kept = await client.post("/api/v1/auth/refresh", json={"refresh_token": live.refresh_token})
    assert kept.status_code == 200


async def _counters_older_than(app: FastAPI, seconds: float) -> int:
    """Login counters whose window, were it this long, has passed (as purge-expired sees it)."""
    database: Database = app.state.database
    cutoff = utc_now() - timedelta(seconds=seconds)
    async with database.session(writes=False) as session:
        count = await session.scalar(
            select(func.count())
            .select_from(PasswordAttempt)
            .where(col(PasswordAttempt.window_started_at) <= cutoff)
        )
    return int(count or 0)


async def test_purge_deletes_login_counters_whose_window_has_passed(
    client: httpx.AsyncClient, app: FastAPI, database_url: str, tmp_path: Path
) -> None:
    wrong = {"email": "nobody@example.com", "password": "not the password"}
    assert (await client.post("/api/v1/auth/login", json=wrong)).status_code == 401

    async def window_has_passed() -> bool:
        return await _counters_older_than(app, 1) == 1

    await wait_until(
        window_has_passed, within=30, what="the login counter's 1-second window has passed"
    )

    env = server_env(database_url, LOGIN_LOCKOUT_SECONDS="1")
    result = await run_cli("purge-expired", env=env, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert "1 expired password attempt counters deleted" in result.stdout
