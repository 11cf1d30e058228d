"""POST /api/v1/auth/refresh, through HTTP on SQLite and PostgreSQL (API.md, "refresh")."""

import asyncio
import secrets
from typing import Any

import httpx
import pytest

from tests.factories import Account, assert_problem, deactivate_self, login, refresh

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


async def test_reusing_a_spent_refresh_token_returns_401_invalid_token(
    client: httpx.AsyncClient, user: Account
) -> None:
    await refreshed(client, user.refresh_token)

    response = await refresh(client, user.refresh_token)

    assert_problem(response, 401, "invalid_token")


async def test_reusing_a_spent_refresh_token_revokes_the_token_issued_from_it(
    client: httpx.AsyncClient, user: Account
) -> None:
    descendant = await refreshed(client, user.refresh_token)
    assert_problem(await refresh(client, user.refresh_token), 401, "invalid_token")

    response = await refresh(client, descendant["refresh_token"])

    assert_problem(response, 401, "invalid_token")


async def test_reusing_a_spent_refresh_token_revokes_every_descendant(
    client: httpx.AsyncClient, user: Account
) -> None:
    second = await refreshed(client, user.refresh_token)
    third = await refreshed(client, second["refresh_token"])
    assert_problem(await refresh(client, user.refresh_token), 401, "invalid_token")

    response = await refresh(client, third["refresh_token"])

    assert_problem(response, 401, "invalid_token")


async def test_reuse_in_one_login_leaves_other_logins_working(
    client: httpx.AsyncClient, user: Account
) -> None:
    stolen = user.refresh_token
    await refreshed(client, stolen)
    other_login = (await login(client, user)).refresh_token
    assert_problem(await refresh(client, stolen), 401, "invalid_token")

    response = await refresh(client, other_login)

    assert response.status_code == 200, response.text


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


async def test_two_concurrent_refreshes_of_one_token_succeed_at_most_once(
    client: httpx.AsyncClient, user: Account
) -> None:
    responses = await asyncio.gather(
        refresh(client, user.refresh_token), refresh(client, user.refresh_token)
    )

    statuses = sorted(response.status_code for response in responses)
    assert statuses in ([200, 401], [401, 401])
    for response in responses:
        if response.status_code == 401:
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
