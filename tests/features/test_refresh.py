"""POST /api/v1/auth/refresh, through HTTP on SQLite and PostgreSQL (API.md, "refresh")."""

import asyncio
import secrets
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select, update
from sqlmodel import col

from kernel.db import Database, utc_now
from kernel.sessions import Session
from tests.conftest import make_settings
from tests.factories import (
    Account,
    assert_problem,
    deactivate_self,
    login,
    make_user,
    refresh,
    serving,
)
from tests.kernel.helpers import bearer

REFRESH = "/api/v1/auth/refresh"
TOKEN_FIELDS = {"access_token", "token_type", "expires_in", "refresh_token"}


async def refreshed(client: httpx.AsyncClient, token: str) -> dict[str, Any]:
    """Refresh, expecting success; the new pair."""
    response = await refresh(client, token)
    assert response.status_code == 200, response.text
    tokens: dict[str, Any] = response.json()
    return tokens


async def test_refresh_returns_a_new_token_pair(client: httpx.AsyncClient, user: Account) -> None:
    response = await refresh(client, user.refresh_token)

    assert response.status_code == 200, response.text
    tokens = response.json()
    assert set(tokens) == TOKEN_FIELDS
    assert tokens["token_type"] == "bearer"
    assert tokens["expires_in"] == 900
    assert tokens["access_token"]
    assert tokens["refresh_token"]


async def test_refresh_response_is_not_cacheable(client: httpx.AsyncClient, user: Account) -> None:
    response = await refresh(client, user.refresh_token)

    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"


async def test_refresh_rotates_the_refresh_token(client: httpx.AsyncClient, user: Account) -> None:
    tokens = await refreshed(client, user.refresh_token)

    assert tokens["refresh_token"] != user.refresh_token


async def test_refreshed_access_token_works_on_users_me(
    client: httpx.AsyncClient, user: Account
) -> None:
    tokens = await refreshed(client, user.refresh_token)

    me = await client.get(
        "/api/v1/users/me", headers={"Authorization": f"Bearer {tokens['access_token']}"}
    )

    assert me.status_code == 200, me.text
    assert me.json()["id"] == user.id


async def test_refreshed_refresh_token_can_be_refreshed_in_turn(
    client: httpx.AsyncClient, user: Account
) -> None:
    second = await refreshed(client, user.refresh_token)

    response = await refresh(client, second["refresh_token"])

    assert response.status_code == 200, response.text


async def test_an_earlier_token_presented_again_returns_401_invalid_token(
    client: httpx.AsyncClient, user: Account
) -> None:
    second = await refreshed(client, user.refresh_token)
    await refreshed(client, second["refresh_token"])

    # Two generations back: no retry explains it, the token was copied.
    response = await refresh(client, user.refresh_token)

    assert_problem(response, 401, "invalid_token")


async def test_reusing_an_earlier_token_revokes_the_session(
    client: httpx.AsyncClient, user: Account
) -> None:
    second = await refreshed(client, user.refresh_token)
    third = await refreshed(client, second["refresh_token"])
    assert_problem(await refresh(client, user.refresh_token), 401, "invalid_token")

    refreshed_again = await refresh(client, third["refresh_token"])
    me = await client.get("/api/v1/users/me", headers=bearer(third["access_token"]))

    # The thief's copy and the owner's live token die together, access token included.
    assert_problem(refreshed_again, 401, "invalid_token")
    assert_problem(me, 401, "invalid_token")


async def test_reuse_in_one_session_leaves_other_sessions_working(
    client: httpx.AsyncClient, user: Account
) -> None:
    stolen = user.refresh_token
    second = await refreshed(client, stolen)
    await refreshed(client, second["refresh_token"])
    other_login = (await login(client, user)).refresh_token
    assert_problem(await refresh(client, stolen), 401, "invalid_token")

    response = await refresh(client, other_login)

    assert response.status_code == 200, response.text


async def test_a_retry_whose_response_was_lost_keeps_the_user_logged_in(
    client: httpx.AsyncClient, user: Account
) -> None:
    lost = await refreshed(client, user.refresh_token)  # the client never saw this

    retried = await refreshed(client, user.refresh_token)
    me = await client.get("/api/v1/users/me", headers=bearer(retried["access_token"]))
    onwards = await refresh(client, retried["refresh_token"])

    assert retried["refresh_token"] == lost["refresh_token"]
    assert me.status_code == 200
    assert onwards.status_code == 200, onwards.text


async def test_twenty_parallel_refreshes_of_one_token_leave_a_working_session(
    client: httpx.AsyncClient, user: Account
) -> None:
    responses = await asyncio.gather(*(refresh(client, user.refresh_token) for _ in range(20)))

    assert [response.status_code for response in responses] == [200] * 20
    tokens = {response.json()["refresh_token"] for response in responses}
    # Every request got the session's one live token: whichever the app keeps works.
    assert len(tokens) == 1
    assert (await refresh(client, tokens.pop())).status_code == 200


async def test_a_replay_after_the_grace_window_revokes_the_session(
    client: httpx.AsyncClient, app: FastAPI, user: Account
) -> None:
    live = await refreshed(client, user.refresh_token)
    await _move_last_rotation_back(app, user, seconds=11)  # past the 10 s default

    replayed = await refresh(client, user.refresh_token)
    owner = await refresh(client, live["refresh_token"])

    assert_problem(replayed, 401, "invalid_token")
    assert_problem(owner, 401, "invalid_token")


async def test_with_no_grace_window_a_retry_revokes_the_session(
    database_url: str, tmp_path: Path
) -> None:
    settings = make_settings(database_url, tmp_path, refresh_reuse_grace_seconds=0)
    async with serving(settings) as (_, client):
        user = await make_user(client)
        live = await refreshed(client, user.refresh_token)

        retried = await refresh(client, user.refresh_token)
        owner = await refresh(client, live["refresh_token"])

    assert_problem(retried, 401, "invalid_token")
    assert_problem(owner, 401, "invalid_token")


async def test_a_session_stays_one_row_however_often_it_is_refreshed(
    client: httpx.AsyncClient, app: FastAPI, user: Account
) -> None:
    token = user.refresh_token
    for _ in range(50):
        token = (await refreshed(client, token))["refresh_token"]

    assert await _sessions_of(app, user) == 1


async def test_a_forged_token_naming_a_real_session_revokes_nothing(
    client: httpx.AsyncClient, user: Account
) -> None:
    session_part, _, _ = user.refresh_token.split(".")
    forged = f"{session_part}.0.{'A' * 43}"

    response = await refresh(client, forged)
    genuine = await refresh(client, user.refresh_token)

    assert_problem(response, 401, "invalid_token")
    assert genuine.status_code == 200, genuine.text


async def _move_last_rotation_back(app: FastAPI, user: Account, *, seconds: int) -> None:
    """Arrange, through the kernel, that the last refresh happened `seconds` ago."""
    database: Database = app.state.database
    async with database.session() as db:
        await db.execute(
            update(Session)
            .where(col(Session.user_id) == uuid.UUID(user.id))
            .values(rotated_at=utc_now() - timedelta(seconds=seconds))
        )


async def _sessions_of(app: FastAPI, user: Account) -> int:
    database: Database = app.state.database
    async with database.session(writes=False) as db:
        count = await db.scalar(
            select(func.count())
            .select_from(Session)
            .where(col(Session.user_id) == uuid.UUID(user.id))
        )
    return int(count or 0)


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(secrets.token_urlsafe(32), id="random"),
        pytest.param("not-a-token", id="short"),
        pytest.param("x" * 1000, id="long"),
    ],
)
async def test_unknown_refresh_token_returns_401_invalid_token(
    client: httpx.AsyncClient, token: str
) -> None:
    response = await refresh(client, token)

    assert_problem(response, 401, "invalid_token")


async def test_access_token_is_not_accepted_as_a_refresh_token(
    client: httpx.AsyncClient, user: Account
) -> None:
    response = await refresh(client, user.access_token)

    assert_problem(response, 401, "invalid_token")


async def test_refresh_token_of_a_deactivated_user_returns_401_invalid_token(
    client: httpx.AsyncClient, user: Account
) -> None:
    await deactivate_self(client, user)

    response = await refresh(client, user.refresh_token)

    assert_problem(response, 401, "invalid_token")


async def test_refresh_token_issued_before_a_password_change_returns_401_invalid_token(
    client: httpx.AsyncClient, user: Account
) -> None:
    changed = await client.patch(
        "/api/v1/users/me",
        json={"password": "a brand new passphrase", "current_password": user.password},
        headers=user.headers,
    )
    assert changed.status_code == 200, changed.text

    response = await refresh(client, user.refresh_token)

    assert_problem(response, 401, "invalid_token")


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({}, id="missing-token"),
        pytest.param({"token": "abc"}, id="wrong-field-name"),
        pytest.param({"refresh_token": 12345}, id="token-not-string"),
        pytest.param({"refresh_token": None}, id="token-null"),
        pytest.param([], id="json-array"),
    ],
)
async def test_refresh_with_an_invalid_body_returns_422(
    client: httpx.AsyncClient, body: object
) -> None:
    response = await client.post(REFRESH, json=body)

    assert_problem(response, 422, "validation_error")
