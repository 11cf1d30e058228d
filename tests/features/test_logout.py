"""POST /api/v1/auth/logout, through HTTP on SQLite and PostgreSQL (API.md, "logout")."""

import asyncio
import secrets

import httpx
import pytest

from tests.factories import Account, assert_problem, login, refresh

LOGOUT = "/api/v1/auth/logout"


async def logout(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.post(LOGOUT, json={"refresh_token": token})


async def test_logout_returns_204_with_an_empty_body(
    client: httpx.AsyncClient, user: Account
) -> None:
    response = await logout(client, user.refresh_token)

    assert response.status_code == 204
    assert response.content == b""


async def test_refresh_token_is_rejected_after_logout(
    client: httpx.AsyncClient, user: Account
) -> None:
    assert (await logout(client, user.refresh_token)).status_code == 204

    response = await refresh(client, user.refresh_token)

    assert_problem(response, 401, "invalid_token")


async def test_logout_with_an_earlier_token_revokes_the_current_token_of_that_login(
    client: httpx.AsyncClient, user: Account
) -> None:
    rotated = await refresh(client, user.refresh_token)
    assert rotated.status_code == 200, rotated.text
    assert (await logout(client, user.refresh_token)).status_code == 204

    response = await refresh(client, rotated.json()["refresh_token"])

    assert_problem(response, 401, "invalid_token")


async def test_logout_with_a_rotated_token_revokes_that_login(
    client: httpx.AsyncClient, user: Account
) -> None:
    rotated = await refresh(client, user.refresh_token)
    assert rotated.status_code == 200, rotated.text
    current = rotated.json()["refresh_token"]
    assert (await logout(client, current)).status_code == 204

    response = await refresh(client, current)

    assert_problem(response, 401, "invalid_token")


async def test_logout_leaves_the_users_other_logins_working(
    client: httpx.AsyncClient, user: Account
) -> None:
    first_login = user.refresh_token
    second_login = (await login(client, user)).refresh_token
    assert (await logout(client, first_login)).status_code == 204

    response = await refresh(client, second_login)

    assert response.status_code == 200, response.text


async def test_logout_leaves_other_users_logins_working(
    client: httpx.AsyncClient, user: Account, other_user: Account
) -> None:
    assert (await logout(client, user.refresh_token)).status_code == 204

    response = await refresh(client, other_user.refresh_token)

    assert response.status_code == 200, response.text


async def test_logout_with_an_unknown_token_returns_204(client: httpx.AsyncClient) -> None:
    response = await logout(client, secrets.token_urlsafe(32))

    assert response.status_code == 204
    assert response.content == b""


async def test_repeated_logout_returns_204(client: httpx.AsyncClient, user: Account) -> None:
    assert (await logout(client, user.refresh_token)).status_code == 204

    response = await logout(client, user.refresh_token)

    assert response.status_code == 204
    assert response.content == b""


async def test_logout_with_a_revoked_token_leaves_other_logins_working(
    client: httpx.AsyncClient, user: Account
) -> None:
    first_login = user.refresh_token
    assert (await logout(client, first_login)).status_code == 204
    second_login = (await login(client, user)).refresh_token
    assert (await logout(client, first_login)).status_code == 204

    response = await refresh(client, second_login)

    assert response.status_code == 200, response.text


async def test_logout_ignores_an_invalid_access_token(
    client: httpx.AsyncClient, user: Account
) -> None:
    response = await client.post(
        LOGOUT,
        json={"refresh_token": user.refresh_token},
        headers={"Authorization": "Bearer expired.or.garbage"},
    )

    assert response.status_code == 204
    assert_problem(await refresh(client, user.refresh_token), 401, "invalid_token")


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({}, id="missing-token"),
        pytest.param({"refresh_token": 12345}, id="token-not-string"),
        pytest.param([], id="json-array"),
    ],
)
async def test_logout_with_an_invalid_body_returns_422(
    client: httpx.AsyncClient, body: object
) -> None:
    response = await client.post(LOGOUT, json=body)

    assert_problem(response, 422, "validation_error")


async def test_logout_racing_a_refresh_leaves_no_token_of_that_login_working(
    client: httpx.AsyncClient, user: Account
) -> None:
    for _ in range(5):
        await login(client, user)
        refreshed, logged_out = await asyncio.gather(
            refresh(client, user.refresh_token), logout(client, user.refresh_token)
        )

        assert logged_out.status_code == 204
        if refreshed.status_code == 200:  # the refresh won the race: its child is revoked too
            child = await refresh(client, refreshed.json()["refresh_token"])
            assert_problem(child, 401, "invalid_token")
        else:
            assert_problem(refreshed, 401, "invalid_token")


async def test_logout_kills_that_sessions_access_token_at_once(
    client: httpx.AsyncClient, user: Account
) -> None:
    other = await login(client, Account(id=user.id, email=user.email, password=user.password))

    await logout(client, user.refresh_token)

    me = await client.get("/api/v1/users/me", headers=user.headers)
    assert_problem(me, 401, "invalid_token")
    assert (await client.get("/api/v1/users/me", headers=other.headers)).status_code == 200
