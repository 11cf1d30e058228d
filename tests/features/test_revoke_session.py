"""DELETE /api/v1/users/me/sessions/{id} and /users/{user_id}/sessions/{id}, both databases."""

import uuid

import httpx

from tests.factories import Account, assert_problem, login, refresh

ME = "/api/v1/users/me"


async def second_login(client: httpx.AsyncClient, user: Account) -> Account:
    return await login(client, Account(id=user.id, email=user.email, password=user.password))


async def session_ids(client: httpx.AsyncClient, account: Account) -> dict[bool, str]:
    """Session ids by whether they are the caller's own."""
    items = (await client.get(f"{ME}/sessions", headers=account.headers)).json()["items"]
    return {item["current"]: item["id"] for item in items}


async def test_ending_another_device_logs_it_out_at_once(
    client: httpx.AsyncClient, user: Account
) -> None:
    phone = await second_login(client, user)
    phone_session = (await session_ids(client, phone))[True]

    response = await client.delete(f"{ME}/sessions/{phone_session}", headers=user.headers)

    assert response.status_code == 204
    assert response.content == b""
    assert_problem(await client.get(ME, headers=phone.headers), 401, "invalid_token")
    assert_problem(await refresh(client, phone.refresh_token), 401, "invalid_token")
    assert (await client.get(ME, headers=user.headers)).status_code == 200


async def test_ending_your_own_session_ends_this_login(
    client: httpx.AsyncClient, user: Account
) -> None:
    mine = (await session_ids(client, user))[True]

    response = await client.delete(f"{ME}/sessions/{mine}", headers=user.headers)

    assert response.status_code == 204
    assert_problem(await client.get(ME, headers=user.headers), 401, "invalid_token")


async def test_an_unknown_session_is_404(client: httpx.AsyncClient, user: Account) -> None:
    response = await client.delete(f"{ME}/sessions/{uuid.uuid4()}", headers=user.headers)

    assert_problem(response, 404, "session_not_found")


async def test_another_users_session_is_404_and_stays(
    client: httpx.AsyncClient, user: Account, other_user: Account
) -> None:
    theirs = (await session_ids(client, other_user))[True]

    response = await client.delete(f"{ME}/sessions/{theirs}", headers=user.headers)

    assert_problem(response, 404, "session_not_found")
    assert (await client.get(ME, headers=other_user.headers)).status_code == 200


async def test_an_admin_ends_a_users_session(
    client: httpx.AsyncClient, admin: Account, user: Account
) -> None:
    theirs = (await session_ids(client, user))[True]

    response = await client.delete(
        f"/api/v1/users/{user.id}/sessions/{theirs}", headers=admin.headers
    )

    assert response.status_code == 204
    assert_problem(await client.get(ME, headers=user.headers), 401, "invalid_token")


async def test_only_admins_end_other_users_sessions(
    client: httpx.AsyncClient, user: Account, other_user: Account
) -> None:
    theirs = (await session_ids(client, other_user))[True]

    response = await client.delete(
        f"/api/v1/users/{other_user.id}/sessions/{theirs}", headers=user.headers
    )

    assert_problem(response, 403, "forbidden")
    assert (await client.get(ME, headers=other_user.headers)).status_code == 200


async def test_an_admin_naming_the_wrong_user_for_a_session_gets_404(
    client: httpx.AsyncClient, admin: Account, user: Account, other_user: Account
) -> None:
    theirs = (await session_ids(client, other_user))[True]

    response = await client.delete(
        f"/api/v1/users/{user.id}/sessions/{theirs}", headers=admin.headers
    )

    assert_problem(response, 404, "session_not_found")
    assert (await client.get(ME, headers=other_user.headers)).status_code == 200
