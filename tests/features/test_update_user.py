"""PATCH /api/v1/users/me and PATCH /api/v1/users/{user_id}, through HTTP on both databases."""

import asyncio
import uuid
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.factories import DEFAULT_PASSWORD, Account, assert_problem, login, make_admin, refresh

PUBLIC_KEYS = {"id", "first_name", "last_name", "full_name", "bio", "avatar_url"}
PRIVATE_KEYS = PUBLIC_KEYS | {
    "email",
    "email_verified",
    "is_active",
    "is_superuser",
    "created_at",
    "updated_at",
}
NEW_PASSWORD = "a brand new passphrase 42"


async def me(client: httpx.AsyncClient, account: Account) -> dict[str, Any]:
    response = await client.get("/api/v1/users/me", headers=account.headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def patch(
    client: httpx.AsyncClient, account: Account, body: dict[str, Any], target: str = "me"
) -> httpx.Response:
    return await client.patch(f"/api/v1/users/{target}", headers=account.headers, json=body)


async def log_in(client: httpx.AsyncClient, email: str, password: str) -> httpx.Response:
    return await client.post("/api/v1/auth/login", json={"email": email, "password": password})


async def test_partial_update_returns_the_private_user(
    client: httpx.AsyncClient, user: Account
) -> None:
    body = {
        "first_name": "Grace",
        "last_name": "Hopper",
        "bio": "COBOL",
        "avatar_url": "https://a.test/g",
    }

    response = await patch(client, user, body)

    assert response.status_code == 200
    updated = response.json()
    assert set(updated) == PRIVATE_KEYS
    assert {key: updated[key] for key in body} == body
    assert updated["full_name"] == "Grace Hopper"
    assert updated["email"] == user.email
    assert await me(client, user) == updated


async def test_omitted_fields_are_left_unchanged(client: httpx.AsyncClient, user: Account) -> None:
    response = await patch(client, user, {"bio": "Only the bio"})

    assert response.json() == user.record | {
        "bio": "Only the bio",
        "updated_at": response.json()["updated_at"],
    }


async def test_update_returns_a_new_etag_and_a_later_updated_at(
    client: httpx.AsyncClient, user: Account
) -> None:
    before = await client.get("/api/v1/users/me", headers=user.headers)

    response = await patch(client, user, {"first_name": "Grace"})

    assert response.headers["etag"] != before.headers["etag"]
    assert response.json()["updated_at"] > before.json()["updated_at"]
    assert response.json()["created_at"] == before.json()["created_at"]


@pytest.mark.parametrize(
    ("field", "value"), [("bio", "A bio"), ("avatar_url", "https://example.com/a.png")]
)
async def test_null_clears_an_optional_field(
    client: httpx.AsyncClient, user: Account, field: str, value: str
) -> None:
    await patch(client, user, {field: value})

    response = await patch(client, user, {field: None})

    assert response.status_code == 200
    assert response.json()[field] is None
    assert (await me(client, user))[field] is None


@pytest.mark.parametrize("field", ["first_name", "last_name", "email", "password"])
async def test_null_for_a_required_field_returns_422(
    client: httpx.AsyncClient, user: Account, field: str
) -> None:
    response = await patch(client, user, {field: None, "current_password": user.password})

    assert_problem(response, 422, "validation_error")
    assert await me(client, user) == user.record


@pytest.mark.parametrize("field", ["nickname", "id", "password_hash", "created_at", "full_name"])
async def test_unknown_field_returns_422(
    client: httpx.AsyncClient, user: Account, field: str
) -> None:
    response = await patch(client, user, {field: "x"})

    assert_problem(response, 422, "validation_error")


async def test_email_change_with_current_password_is_normalised(
    client: httpx.AsyncClient, user: Account
) -> None:
    body = {"email": "  New.Person@Example.COM ", "current_password": user.password}

    response = await patch(client, user, body)

    assert response.status_code == 200
    assert response.json()["email"] == "new.person@example.com"
    assert (await log_in(client, "new.person@example.com", user.password)).status_code == 200


@pytest.mark.parametrize("current", [None, "wrong password entirely"])
@pytest.mark.parametrize("field", ["email", "password"])
async def test_email_or_password_change_without_the_right_current_password_returns_403(
    client: httpx.AsyncClient, user: Account, field: str, current: str | None
) -> None:
    body = {"email": "changed@example.com"} if field == "email" else {"password": NEW_PASSWORD}
    if current is not None:
        body["current_password"] = current

    response = await patch(client, user, body)

    assert_problem(response, 403, "invalid_current_password")
    assert await me(client, user) == user.record
    assert (await log_in(client, user.email, user.password)).status_code == 200


async def test_email_taken_case_insensitively_returns_409(
    client: httpx.AsyncClient, user: Account, other_user: Account
) -> None:
    body = {"email": other_user.email.upper(), "current_password": user.password}

    response = await patch(client, user, body)

    assert_problem(response, 409, "email_taken")
    assert await me(client, user) == user.record


async def test_too_short_new_password_returns_422_and_keeps_the_old_one(
    client: httpx.AsyncClient, user: Account
) -> None:
    response = await patch(client, user, {"password": "short1", "current_password": user.password})

    assert_problem(response, 422, "validation_error")
    assert (await log_in(client, user.email, user.password)).status_code == 200


@pytest.mark.parametrize("password", ["iloveyou", "password", "PASSWORD1"])
async def test_common_new_password_returns_422_password_too_common(
    client: httpx.AsyncClient, user: Account, password: str
) -> None:
    response = await patch(client, user, {"password": password, "current_password": user.password})

    problem = assert_problem(response, 422, "validation_error")
    assert "password_too_common" in [error["type"] for error in problem["errors"]]
    assert (await log_in(client, user.email, user.password)).status_code == 200


async def test_new_password_error_names_the_field_as_register_does(
    client: httpx.AsyncClient, user: Account
) -> None:
    registration = {"email": "x@example.com", "first_name": "X", "last_name": "Y"}
    register = await client.post(
        "/api/v1/auth/register", json=registration | {"password": "short1"}
    )

    response = await patch(client, user, {"password": "short1", "current_password": user.password})

    issues = [(error["loc"], error["type"]) for error in response.json()["errors"]]
    assert issues == [(error["loc"], error["type"]) for error in register.json()["errors"]]
    assert issues[0][0] == ["body", "password"]


async def test_new_password_equal_to_the_email_returns_422(
    client: httpx.AsyncClient, user: Account
) -> None:
    response = await patch(
        client, user, {"password": user.email, "current_password": user.password}
    )

    assert_problem(response, 422, "validation_error")


async def test_password_change_swaps_which_password_logs_in(
    client: httpx.AsyncClient, user: Account
) -> None:
    body = {"password": NEW_PASSWORD, "current_password": user.password}
    assert (await patch(client, user, body)).status_code == 200

    assert_problem(await log_in(client, user.email, user.password), 401, "invalid_credentials")
    assert (await log_in(client, user.email, NEW_PASSWORD)).status_code == 200


async def test_password_change_revokes_the_old_access_and_refresh_tokens(
    client: httpx.AsyncClient, user: Account
) -> None:
    body = {"password": NEW_PASSWORD, "current_password": user.password}
    assert (await patch(client, user, body)).status_code == 200

    assert_problem(await client.get("/api/v1/users/me", headers=user.headers), 401, "invalid_token")
    assert_problem(await refresh(client, user.refresh_token), 401, "invalid_token")


@pytest.mark.parametrize("field", ["is_active", "is_superuser"])
@pytest.mark.parametrize("value", [True, False])
async def test_non_admin_sending_an_admin_only_field_returns_403_forbidden(
    client: httpx.AsyncClient, user: Account, field: str, value: bool
) -> None:
    response = await patch(client, user, {field: value})

    assert_problem(response, 403, "forbidden")
    assert await me(client, user) == user.record


async def test_user_may_update_themself_by_id(client: httpx.AsyncClient, user: Account) -> None:
    response = await patch(client, user, {"bio": "by id"}, target=user.id)

    assert response.status_code == 200
    assert response.json()["bio"] == "by id"


async def test_non_admin_updating_another_user_returns_403_forbidden(
    client: httpx.AsyncClient, user: Account, other_user: Account
) -> None:
    response = await patch(client, user, {"first_name": "Hacked"}, target=other_user.id)

    assert_problem(response, 403, "forbidden")
    assert await me(client, other_user) == other_user.record


async def test_admin_updates_another_user_without_current_password(
    client: httpx.AsyncClient, admin: Account, user: Account
) -> None:
    body = {"first_name": "Renamed", "email": "Moved@Example.com", "password": NEW_PASSWORD}

    response = await patch(client, admin, body, target=user.id)

    assert response.status_code == 200
    assert response.json()["first_name"] == "Renamed"
    assert response.json()["email"] == "moved@example.com"
    assert response.headers["etag"]
    assert (await log_in(client, "moved@example.com", NEW_PASSWORD)).status_code == 200


async def test_admin_updating_an_unknown_id_returns_404(
    client: httpx.AsyncClient, admin: Account
) -> None:
    response = await patch(client, admin, {"first_name": "Nobody"}, target=str(uuid.uuid4()))

    assert_problem(response, 404, "user_not_found")


async def test_admin_may_promote_another_user(
    client: httpx.AsyncClient, admin: Account, user: Account
) -> None:
    response = await patch(client, admin, {"is_superuser": True}, target=user.id)

    assert response.json()["is_superuser"] is True
    assert (await client.get("/api/v1/users", headers=user.headers)).status_code == 200


async def test_if_match_with_the_current_etag_updates(
    client: httpx.AsyncClient, user: Account
) -> None:
    etag = (await client.get("/api/v1/users/me", headers=user.headers)).headers["etag"]

    response = await client.patch(
        "/api/v1/users/me", headers=user.headers | {"If-Match": etag}, json={"bio": "matched"}
    )

    assert response.status_code == 200
    assert response.json()["bio"] == "matched"


async def test_stale_if_match_returns_412_and_changes_nothing(
    client: httpx.AsyncClient, user: Account
) -> None:
    stale = (await client.get("/api/v1/users/me", headers=user.headers)).headers["etag"]
    changed = (await patch(client, user, {"bio": "first"})).json()

    response = await client.patch(
        "/api/v1/users/me", headers=user.headers | {"If-Match": stale}, json={"bio": "second"}
    )

    assert_problem(response, 412, "precondition_failed")
    assert await me(client, user) == changed


async def test_concurrent_updates_with_one_etag_let_exactly_one_win(
    client: httpx.AsyncClient, user: Account
) -> None:
    etag = (await client.get("/api/v1/users/me", headers=user.headers)).headers["etag"]
    headers = user.headers | {"If-Match": etag}

    responses = await asyncio.gather(
        *(
            client.patch("/api/v1/users/me", headers=headers, json={"bio": f"writer {number}"})
            for number in range(20)
        )
    )

    winners = [response for response in responses if response.status_code == 200]
    assert len(winners) == 1
    for response in responses:
        if response.status_code != 200:
            assert_problem(response, 412, "precondition_failed")
    assert await me(client, user) == winners[0].json()


@pytest.mark.parametrize("body", [{"is_superuser": False}, {"is_active": False}])
async def test_last_active_admin_cannot_remove_themself(
    client: httpx.AsyncClient, admin: Account, body: dict[str, bool]
) -> None:
    response = await patch(client, admin, body | {"current_password": admin.password})

    assert_problem(response, 409, "last_admin")
    assert await me(client, admin) == admin.record | {"is_superuser": True}


@pytest.mark.parametrize("body", [{"is_superuser": False}, {"is_active": False}])
async def test_admin_may_remove_themself_while_another_admin_remains(
    client: httpx.AsyncClient, app: FastAPI, admin: Account, body: dict[str, bool]
) -> None:
    await make_admin(client, app)

    response = await patch(client, admin, body | {"current_password": admin.password})

    assert response.status_code == 200
    assert {key: response.json()[key] for key in body} == body


async def test_admin_deactivating_themself_needs_the_current_password(
    client: httpx.AsyncClient, app: FastAPI, admin: Account
) -> None:
    await make_admin(client, app)

    response = await patch(client, admin, {"is_active": False})

    assert_problem(response, 403, "invalid_current_password")
    assert (await me(client, admin))["is_active"] is True


async def test_admin_deactivation_makes_the_users_tokens_fail_at_once(
    client: httpx.AsyncClient, admin: Account, user: Account
) -> None:
    response = await patch(client, admin, {"is_active": False}, target=user.id)

    assert response.json()["is_active"] is False
    assert_problem(await patch(client, user, {"bio": "still here?"}), 401, "invalid_token")
    assert_problem(await refresh(client, user.refresh_token), 401, "invalid_token")
    assert_problem(await log_in(client, user.email, user.password), 403, "account_inactive")


async def test_reactivation_keeps_old_tokens_revoked_but_allows_a_new_login(
    client: httpx.AsyncClient, admin: Account, user: Account
) -> None:
    await patch(client, admin, {"is_active": False}, target=user.id)

    response = await patch(client, admin, {"is_active": True}, target=user.id)

    assert response.json()["is_active"] is True
    assert_problem(await client.get("/api/v1/users/me", headers=user.headers), 401, "invalid_token")
    assert_problem(await refresh(client, user.refresh_token), 401, "invalid_token")
    fresh = await login(client, Account(user.id, user.email, DEFAULT_PASSWORD))
    assert (await me(client, fresh))["is_active"] is True


@pytest.mark.parametrize(
    "raw",
    [
        b'{"first_name": "a\\u0000b"}',
        b'{"bio": "nul \\u0000 inside"}',
        b'{"first_name": "\\ud800"}',
        b'{"last_name": "x\\udfff"}',
        b'{"bio": "\\ud83d"}',
        b'{"first_name": "a\x00b"}',
    ],
)
async def test_nul_or_lone_surrogate_returns_422_and_changes_nothing(
    client: httpx.AsyncClient, user: Account, raw: bytes
) -> None:
    response = await client.patch(
        "/api/v1/users/me",
        headers=user.headers | {"Content-Type": "application/json"},
        content=raw,
    )

    assert_problem(response, 422, "validation_error")
    assert await me(client, user) == user.record


async def test_concurrent_unconditional_updates_all_succeed(
    client: httpx.AsyncClient, user: Account
) -> None:
    responses = await asyncio.gather(
        *(patch(client, user, {"bio": f"edit {index}"}) for index in range(10))
    )

    assert [response.status_code for response in responses] == [200] * 10
    assert (await me(client, user))["bio"] in {f"edit {index}" for index in range(10)}


async def test_a_weak_if_match_never_matches(client: httpx.AsyncClient, user: Account) -> None:
    current = (await client.get("/api/v1/users/me", headers=user.headers)).headers["etag"]

    response = await client.patch(
        "/api/v1/users/me", headers=user.headers | {"If-Match": f"W/{current}"}, json={"bio": "w"}
    )

    assert_problem(response, 412, "precondition_failed")
