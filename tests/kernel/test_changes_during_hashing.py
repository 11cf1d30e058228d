"""argon2 runs outside any transaction; what changes meanwhile is honoured, not overwritten.

Each test makes a request wait for the single hashing slot (other logins hold it), and
while it waits an admin deactivates the account. When the waiting request resumes it
must see the deactivation: its stale token is refused, its login is refused.
"""

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import make_settings
from tests.factories import Account, assert_problem, make_admin, make_user, serving

# One slot and real argon2 cost, so requests queue for hashing.
SLOW_ONE_SLOT = {
    "hash_concurrency": 1,
    "hash_wait_seconds": 60,
    "argon2_time_cost": 3,
    "argon2_memory_kib": 64 * 1024,
    "login_max_failures": 1000,
}
QUEUED_AHEAD = 3
NEW_PASSWORD = "a completely new passphrase"


async def queued_behind_a_deactivation(
    client: httpx.AsyncClient,
    admin: Account,
    victim: Account,
    request: Coroutine[Any, Any, httpx.Response],
) -> httpx.Response:
    """Send `request` while the hashing slot is busy; deactivate `victim` while it queues."""
    body = {"email": admin.email, "password": admin.password}
    ahead = [
        asyncio.create_task(client.post("/api/v1/auth/login", json=body))
        for _ in range(QUEUED_AHEAD)
    ]
    await asyncio.sleep(0.05)  # let them take the slot first
    queued = asyncio.create_task(request)
    await asyncio.sleep(0.05)  # the request is now queued for hashing
    deactivated = await client.post(f"/api/v1/users/{victim.id}/deactivate", headers=admin.headers)
    assert deactivated.status_code == 200
    response = await queued
    await asyncio.gather(*ahead)
    return response


async def test_a_password_change_queued_behind_a_deactivation_is_refused(
    database_url: str, tmp_path: Path
) -> None:
    async with serving(make_settings(database_url, tmp_path, **SLOW_ONE_SLOT)) as (app, client):
        admin = await make_admin(client, app)
        victim = await make_user(client)
        change = client.patch(
            "/api/v1/users/me",
            headers=victim.headers,
            json={"password": NEW_PASSWORD, "current_password": victim.password},
        )
        changed = await queued_behind_a_deactivation(client, admin, victim, change)
        old_password = await client.post(
            "/api/v1/auth/login", json={"email": victim.email, "password": victim.password}
        )

    assert_problem(changed, 401, "invalid_token")
    # The password stayed as it was: the old one is still right (for an inactive account).
    assert_problem(old_password, 403, "account_inactive")


async def test_a_login_queued_behind_a_deactivation_is_refused(
    database_url: str, tmp_path: Path
) -> None:
    async with serving(make_settings(database_url, tmp_path, **SLOW_ONE_SLOT)) as (app, client):
        admin = await make_admin(client, app)
        victim = await make_user(client)
        login = client.post(
            "/api/v1/auth/login", json={"email": victim.email, "password": victim.password}
        )
        logged_in = await queued_behind_a_deactivation(client, admin, victim, login)

    assert_problem(logged_in, 403, "account_inactive")
