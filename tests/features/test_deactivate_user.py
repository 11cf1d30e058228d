"""POST /api/v1/users/me/deactivate and POST /api/v1/users/{user_id}/deactivate, over HTTP."""

import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.factories import Account, assert_problem, make_admin

PUBLIC_KEYS = {"id", "first_name", "last_name", "full_name", "bio", "avatar_url"}
PRIVATE_KEYS = PUBLIC_KEYS | {
    "email",
    "email_verified",
    "is_active",
    "is_superuser",
    "created_at",
    "updated_at",
}


async def deactivate(
    client: httpx.AsyncClient, actor: Account, target: str = "me", password: str | None = None
) -> httpx.Response:
    body: dict[str, Any] | None = None if password is None else {"current_password": password}
    return await client.post(f"/api/v1/users/{target}/deactivate", headers=actor.headers, json=body)


async def is_active(client: httpx.AsyncClient, admin: Account, account: Account) -> bool:
    response = await client.get(f"/api/v1/users/{account.id}", headers=admin.headers)
    assert response.status_code == 200, response.text
    active: bool = response.json()["is_active"]
    return active


async def log_in(client: httpx.AsyncClient, account: Account) -> httpx.Response:
    credentials = {"email": account.email, "password": account.password}
    return await client.post("/api/v1/auth/login", json=credentials)


async def test_self_deactivation_with_the_right_password_returns_the_inactive_user(
    client: httpx.AsyncClient, user: Account
) -> None:
    response = await deactivate(client, user, password=user.password)

    assert response.status_code == 200
    body = response.json()
    assert set(body) == PRIVATE_KEYS
    assert body["id"] == user.id
    assert body["is_active"] is False


async def test_self_deactivation_with_a_wrong_password_returns_403_and_changes_nothing(
    client: httpx.AsyncClient, user: Account
) -> None:
    response = await deactivate(client, user, password="not my password at all")

    assert_problem(response, 403, "invalid_current_password")
    assert (await client.get("/api/v1/users/me", headers=user.headers)).json() == user.record


@pytest.mark.parametrize("body", [None, {}, {"current_password": ""}])
async def test_self_deactivation_without_a_password_returns_422(
    client: httpx.AsyncClient, user: Account, body: dict[str, str] | None
) -> None:
    response = await client.post("/api/v1/users/me/deactivate", headers=user.headers, json=body)

    assert_problem(response, 422, "validation_error")
    assert (await client.get("/api/v1/users/me", headers=user.headers)).status_code == 200


async def test_after_self_deactivation_the_access_token_returns_401_invalid_token(
    client: httpx.AsyncClient, user: Account
) -> None:
    await deactivate(client, user, password=user.password)

    response = await client.get("/api/v1/users/me", headers=user.headers)

    assert_problem(response, 401, "invalid_token")


async def test_after_self_deactivation_the_refresh_token_returns_401_invalid_token(
    client: httpx.AsyncClient, user: Account
) -> None:
    await deactivate(client, user, password=user.password)

    response = await client.post("/api/v1/auth/refresh", json={"refresh_token": user.refresh_token})

    assert_problem(response, 401, "invalid_token")


async def test_after_self_deactivation_login_returns_403_account_inactive(
    client: httpx.AsyncClient, user: Account
) -> None:
    await deactivate(client, user, password=user.password)

    assert_problem(await log_in(client, user), 403, "account_inactive")


@pytest.mark.parametrize("spelling", [str.lower, str.upper])
async def test_deactivated_users_email_stays_taken(
    client: httpx.AsyncClient, user: Account, spelling: Callable[[str], str]
) -> None:
    await deactivate(client, user, password=user.password)
    body = {"email": spelling(user.email), "password": "another fine passphrase"}

    response = await client.post(
        "/api/v1/auth/register", json=body | {"first_name": "New", "last_name": "Comer"}
    )

    assert_problem(response, 409, "email_taken")


async def test_admin_deactivates_another_user_without_a_body(
    client: httpx.AsyncClient, admin: Account, user: Account
) -> None:
    response = await deactivate(client, admin, target=user.id)

    assert response.status_code == 200
    assert set(response.json()) == PRIVATE_KEYS
    assert response.json()["is_active"] is False
    assert_problem(await client.get("/api/v1/users/me", headers=user.headers), 401, "invalid_token")
    assert_problem(await log_in(client, user), 403, "account_inactive")


async def test_repeating_a_deactivation_returns_200_and_the_same_user(
    client: httpx.AsyncClient, admin: Account, user: Account
) -> None:
    first = await deactivate(client, admin, target=user.id)

    second = await deactivate(client, admin, target=user.id)

    assert second.status_code == 200
    assert second.json() == first.json()


async def test_non_admin_deactivating_another_user_returns_403_forbidden(
    client: httpx.AsyncClient, admin: Account, user: Account, other_user: Account
) -> None:
    response = await deactivate(client, user, target=other_user.id, password=user.password)

    assert_problem(response, 403, "forbidden")
    assert await is_active(client, admin, other_user)


async def test_admin_deactivating_an_unknown_id_returns_404(
    client: httpx.AsyncClient, admin: Account
) -> None:
    response = await deactivate(client, admin, target=str(uuid.uuid4()))

    assert_problem(response, 404, "user_not_found")


@pytest.mark.parametrize("own_path", [True, False], ids=["me", "own-id"])
async def test_last_active_admin_deactivating_themself_returns_409_last_admin(
    client: httpx.AsyncClient, admin: Account, own_path: bool
) -> None:
    target = "me" if own_path else admin.id

    response = await deactivate(client, admin, target=target, password=admin.password)

    assert_problem(response, 409, "last_admin")
    assert await is_active(client, admin, admin)


async def test_admin_deactivating_themself_while_another_admin_remains_returns_200(
    client: httpx.AsyncClient, app: FastAPI, admin: Account
) -> None:
    other_admin = await make_admin(client, app)

    response = await deactivate(client, admin, password=admin.password)

    assert response.status_code == 200
    assert response.json()["is_active"] is False
    assert not await is_active(client, other_admin, admin)


async def test_admin_may_deactivate_another_admin_while_one_remains(
    client: httpx.AsyncClient, app: FastAPI, admin: Account
) -> None:
    other_admin = await make_admin(client, app)

    response = await deactivate(client, admin, target=other_admin.id)

    assert response.status_code == 200
    assert_problem(await deactivate(client, admin, password=admin.password), 409, "last_admin")


async def test_own_id_without_a_body_returns_422_like_the_me_route(
    client: httpx.AsyncClient, user: Account
) -> None:
    response = await deactivate(client, user, target=user.id)

    problem = assert_problem(response, 422, "validation_error")
    assert problem["errors"][0]["loc"] == ["body", "current_password"]
    assert (await client.get("/api/v1/users/me", headers=user.headers)).status_code == 200


async def test_own_id_with_the_right_password_deactivates(
    client: httpx.AsyncClient, user: Account
) -> None:
    response = await deactivate(client, user, target=user.id, password=user.password)

    assert response.status_code == 200
    assert response.json()["is_active"] is False
