"""Revocation holds across processes: two real servers on one database.

Log in through one server, deactivate, erase, change the password, end a session or log out
through the other: the first server rejects the old tokens on the very next request (no
shared memory, only the database's sessions). A refresh retried on the other server
within the grace window keeps the session.
"""

from pathlib import Path

import httpx

from tests.factories import DEFAULT_PASSWORD, assert_problem, registration
from tests.servers import Server, run_cli, running_servers, server_env

ADMIN_PASSWORD = "administrator passphrase 2026"


async def _login(
    client: httpx.AsyncClient, server: Server, email: str, password: str
) -> dict[str, str]:
    response = await client.post(
        f"{server.base_url}/api/v1/auth/login", json={"email": email, "password": password}
    )
    assert response.status_code == 200, response.text
    tokens: dict[str, str] = response.json()
    return tokens


async def _register(client: httpx.AsyncClient, server: Server, email: str) -> str:
    response = await client.post(
        f"{server.base_url}/api/v1/auth/register", json=registration(email=email)
    )
    assert response.status_code == 201, response.text
    user_id: str = response.json()["id"]
    return user_id


async def test_deactivation_or_erasure_on_one_server_revokes_tokens_on_the_other(
    database_url: str, tmp_path: Path
) -> None:
    created = await run_cli(
        "create-admin",
        "--email",
        "root@example.com",
        "--password",
        ADMIN_PASSWORD,
        env=server_env(database_url),
        cwd=tmp_path,
    )
    assert created.returncode == 0, created.stderr
    async with (
        running_servers(2, database_url, tmp_path) as (first, second),
        httpx.AsyncClient(timeout=30) as client,
    ):
        user_id = await _register(client, first, "walker@example.com")
        tokens = await _login(client, first, "walker@example.com", DEFAULT_PASSWORD)
        bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
        me = await client.get(f"{first.base_url}/api/v1/users/me", headers=bearer)
        assert me.status_code == 200
        await _register(client, first, "leaver@example.com")
        leaver = await _login(client, first, "leaver@example.com", DEFAULT_PASSWORD)
        leaver_bearer = {"Authorization": f"Bearer {leaver['access_token']}"}
        on_second = await _login(client, second, "leaver@example.com", DEFAULT_PASSWORD)
        erased = await client.post(
            f"{second.base_url}/api/v1/users/me/erase",
            headers={"Authorization": f"Bearer {on_second['access_token']}"},
            json={"current_password": DEFAULT_PASSWORD},
        )
        assert erased.status_code == 204, erased.text
        after_erasure = await client.get(f"{first.base_url}/api/v1/users/me", headers=leaver_bearer)
        assert_problem(after_erasure, 401, "invalid_token")

        admin = await _login(client, second, "root@example.com", ADMIN_PASSWORD)
        deactivated = await client.post(
            f"{second.base_url}/api/v1/users/{user_id}/deactivate",
            headers={"Authorization": f"Bearer {admin['access_token']}"},
        )
        assert deactivated.status_code == 200, deactivated.text

        after = await client.get(f"{first.base_url}/api/v1/users/me", headers=bearer)
        assert_problem(after, 401, "invalid_token")
        refreshed = await client.post(
            f"{first.base_url}/api/v1/auth/refresh",
            json={"refresh_token": tokens["refresh_token"]},
        )
        assert_problem(refreshed, 401, "invalid_token")


async def test_password_change_on_one_server_revokes_tokens_on_the_other(
    database_url: str, tmp_path: Path
) -> None:
    async with (
        running_servers(2, database_url, tmp_path) as (first, second),
        httpx.AsyncClient(timeout=30) as client,
    ):
        await _register(client, first, "mover@example.com")
        on_first = await _login(client, first, "mover@example.com", DEFAULT_PASSWORD)
        on_second = await _login(client, second, "mover@example.com", DEFAULT_PASSWORD)

        changed = await client.patch(
            f"{second.base_url}/api/v1/users/me",
            headers={"Authorization": f"Bearer {on_second['access_token']}"},
            json={"password": "a brand new passphrase", "current_password": DEFAULT_PASSWORD},
        )
        assert changed.status_code == 200, changed.text

        stale = await client.get(
            f"{first.base_url}/api/v1/users/me",
            headers={"Authorization": f"Bearer {on_first['access_token']}"},
        )
        assert_problem(stale, 401, "invalid_token")
        fresh = await _login(client, first, "mover@example.com", "a brand new passphrase")
        me = await client.get(
            f"{first.base_url}/api/v1/users/me",
            headers={"Authorization": f"Bearer {fresh['access_token']}"},
        )
        assert me.status_code == 200


async def test_sessions_hold_across_two_servers(database_url: str, tmp_path: Path) -> None:
    async with (
        running_servers(2, database_url, tmp_path) as (first, second),
        httpx.AsyncClient(timeout=30) as client,
    ):
        await _register(client, first, "phone@example.com")
        login = await _login(client, first, "phone@example.com", DEFAULT_PASSWORD)

        # A refresh answered by one server, whose response was lost, retried on the other.
        lost = await client.post(
            f"{first.base_url}/api/v1/auth/refresh",
            json={"refresh_token": login["refresh_token"]},
        )
        retried = await client.post(
            f"{second.base_url}/api/v1/auth/refresh",
            json={"refresh_token": login["refresh_token"]},
        )
        assert lost.status_code == 200, lost.text
        assert retried.status_code == 200, retried.text
        assert retried.json()["refresh_token"] == lost.json()["refresh_token"]
        phone = {"Authorization": f"Bearer {retried.json()['access_token']}"}

        # A session ended through one server is refused by the other on its next request.
        tablet = await _login(client, second, "phone@example.com", DEFAULT_PASSWORD)
        tablet_bearer = {"Authorization": f"Bearer {tablet['access_token']}"}
        sessions = await client.get(
            f"{second.base_url}/api/v1/users/me/sessions", headers=tablet_bearer
        )
        tablet_session = next(item["id"] for item in sessions.json()["items"] if item["current"])
        ended = await client.delete(
            f"{first.base_url}/api/v1/users/me/sessions/{tablet_session}", headers=phone
        )
        assert ended.status_code == 204, ended.text
        tablet_after = await client.get(f"{second.base_url}/api/v1/users/me", headers=tablet_bearer)
        assert_problem(tablet_after, 401, "invalid_token")

        # Logout through one server kills that session's access token on the other.
        logout = await client.post(
            f"{second.base_url}/api/v1/auth/logout",
            json={"refresh_token": retried.json()["refresh_token"]},
        )
        assert logout.status_code == 204
        phone_after = await client.get(f"{first.base_url}/api/v1/users/me", headers=phone)
        assert_problem(phone_after, 401, "invalid_token")
