"""GET /api/v1/users/me/sessions and /users/{user_id}/sessions, on SQLite and PostgreSQL."""

from pathlib import Path

import httpx

from tests.conftest import make_settings
from tests.factories import Account, assert_problem, login, make_user, refresh, serving

MINE = "/api/v1/users/me/sessions"
SESSION_FIELDS = {"id", "created_at", "last_used_at", "expires_at", "user_agent", "ip", "current"}


async def test_a_login_is_a_session_marked_current(
    client: httpx.AsyncClient, user: Account
) -> None:
    response = await client.get(MINE, headers=user.headers)

    assert response.status_code == 200, response.text
    [session] = response.json()["items"]
    assert set(session) == SESSION_FIELDS
    assert session["current"] is True
    assert session["created_at"].endswith("Z")


async def test_sessions_are_listed_newest_first_with_their_device(
    client: httpx.AsyncClient, user: Account
) -> None:
    phone = await client.post(
        "/api/v1/auth/login",
        json={"email": user.email, "password": user.password},
        headers={"User-Agent": "ExampleApp/2.1 (iPhone)"},
    )
    assert phone.status_code == 200

    items = (await client.get(MINE, headers=user.headers)).json()["items"]

    assert items[0]["user_agent"] == "ExampleApp/2.1 (iPhone)"
    assert [item["current"] for item in items] == [False, True]
    assert items[0]["ip"]


async def test_a_very_long_user_agent_is_capped(client: httpx.AsyncClient, user: Account) -> None:
    await client.post(
        "/api/v1/auth/login",
        json={"email": user.email, "password": user.password},
        headers={"User-Agent": "A" * 5000},
    )

    items = (await client.get(MINE, headers=user.headers)).json()["items"]

    assert len(items[0]["user_agent"]) == 256


async def test_refreshing_updates_last_used_and_keeps_one_session(
    client: httpx.AsyncClient, user: Account
) -> None:
    before = (await client.get(MINE, headers=user.headers)).json()["items"][0]
    pair = (await refresh(client, user.refresh_token)).json()

    after = await client.get(MINE, headers={"Authorization": f"Bearer {pair['access_token']}"})

    [session] = after.json()["items"]
    assert session["id"] == before["id"]
    assert session["last_used_at"] > before["last_used_at"]


async def test_a_logged_out_session_is_not_listed(client: httpx.AsyncClient, user: Account) -> None:
    other = await login(client, Account(id=user.id, email=user.email, password=user.password))
    await client.post("/api/v1/auth/logout", json={"refresh_token": other.refresh_token})

    items = (await client.get(MINE, headers=user.headers)).json()["items"]

    assert len(items) == 1
    assert items[0]["current"] is True


async def test_past_the_cap_a_new_login_evicts_the_least_recently_used(
    database_url: str, tmp_path: Path
) -> None:
    async with serving(make_settings(database_url, tmp_path, max_sessions_per_user=3)) as (
        _,
        client,
    ):
        first = await make_user(client)
        logins = [
            await login(client, Account(first.id, first.email, first.password)) for _ in range(2)
        ]
        # The first session is used again: the least recently used is now logins[0].
        used = await refresh(client, first.refresh_token)
        assert used.status_code == 200
        newest = await login(client, Account(first.id, first.email, first.password))

        evicted = await refresh(client, logins[0].refresh_token)
        kept = [await refresh(client, account.refresh_token) for account in (logins[1], newest)]
        items = (await client.get(MINE, headers=newest.headers)).json()["items"]

    assert_problem(evicted, 401, "invalid_token")
    assert [response.status_code for response in kept] == [200, 200]
    assert len(items) == 3


async def test_another_users_sessions_are_for_admins_only(
    client: httpx.AsyncClient, user: Account, other_user: Account
) -> None:
    response = await client.get(f"/api/v1/users/{other_user.id}/sessions", headers=user.headers)

    assert_problem(response, 403, "forbidden")


async def test_an_admin_lists_a_users_sessions(
    client: httpx.AsyncClient, admin: Account, user: Account
) -> None:
    response = await client.get(f"/api/v1/users/{user.id}/sessions", headers=admin.headers)

    assert response.status_code == 200, response.text
    [session] = response.json()["items"]
    assert session["current"] is False  # the admin's own session is not this one


async def test_an_admin_asking_for_an_unknown_user_gets_404(
    client: httpx.AsyncClient, admin: Account
) -> None:
    unknown = "00000000-0000-4000-8000-000000000000"

    response = await client.get(f"/api/v1/users/{unknown}/sessions", headers=admin.headers)

    assert_problem(response, 404, "user_not_found")
