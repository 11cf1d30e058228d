"""argon2 runs outside any transaction (kernel.db.outside_transaction).

What that buys: a request hashing a password holds no database lock, so other writers go
on meanwhile (on SQLite every writer takes the database-wide write lock up front).
What it costs, and how the kernel pays it: anything can change while the hash runs, so
the caller is confirmed again afterwards; a token revoked meanwhile is refused.

Each test waits on the hashing slots' own state (busy, queued), never on a fixed sleep.
The queue is made of unknown-email logins, which hash at the slow cost like any login;
the accounts a test needs are made before, at the suite's fast cost (`accounts`): only
the queue has to be slow, and each slow hash is a third of a second of CPU.
"""

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from kernel.hashing import PasswordHashing
from kernel.settings import Settings
from tests.conftest import make_settings
from tests.factories import Account, assert_problem, make_admin, make_user, register, serving
from tests.waiting import wait_until

NEW_PASSWORD = "a completely new passphrase"
QUEUED_AHEAD = 5  # at t=6, 64 MiB: a queue of a second or more


def one_slow_slot(database_url: str, data_dir: Path) -> Settings:
    """One hashing slot at a cost high enough (64 MiB, t=6) that a queue forms behind it."""
    return make_settings(
        database_url,
        data_dir,
        hash_concurrency=1,
        hash_wait_seconds=120,
        argon2_time_cost=6,
        argon2_memory_kib=64 * 1024,
        login_max_failures=1000,
    )


async def accounts(
    database_url: str, data_dir: Path, *, admins: int, users: int
) -> tuple[list[Account], list[Account]]:
    """Admins and users, logged in, made on the same database by an app at the suite's
    fast argon2 cost; their tokens hold in the slow app (one signing key, in the database)."""
    async with serving(make_settings(database_url, data_dir)) as (app, client):
        made_admins = [await make_admin(client, app) for _ in range(admins)]
        made_users = [await make_user(client) for _ in range(users)]
    return made_admins, made_users


def hashing(app: FastAPI) -> PasswordHashing:
    slots: PasswordHashing = app.state.hashing
    return slots


def login(client: httpx.AsyncClient, account: Account) -> Coroutine[Any, Any, httpx.Response]:
    body = {"email": account.email, "password": account.password}
    return client.post("/api/v1/auth/login", json=body)


async def test_other_writers_go_on_while_a_login_is_hashing(
    database_url: str, tmp_path: Path
) -> None:
    _, [writer] = await accounts(database_url, tmp_path, admins=0, users=1)
    async with serving(one_slow_slot(database_url, tmp_path)) as (app, client):
        someone = await register(client)  # at the slow cost: its login is the slow hash
        hashing_login = asyncio.create_task(login(client, someone))
        await wait_until(lambda: hashing(app).slots_busy == 1, within=30, what="a hash started")

        written = await client.patch(
            "/api/v1/users/me", json={"bio": "written meanwhile"}, headers=writer.headers
        )
        login_still_hashing = not hashing_login.done()
        logged_in = await hashing_login

    assert written.status_code == 200, written.text
    assert logged_in.status_code == 200, logged_in.text
    # The write did not wait for the hash: no lock was held while it ran.
    assert login_still_hashing


def unknown_email_login(client: httpx.AsyncClient, n: int) -> Coroutine[Any, Any, httpx.Response]:
    # Hashed like any login (against a decoy at the configured cost), then refused.
    body = {"email": f"nobody-{n}@example.com", "password": "not anyone's password"}
    return client.post("/api/v1/auth/login", json=body)


async def queue_behind_slow_logins(
    app: FastAPI,
    client: httpx.AsyncClient,
    request: Coroutine[Any, Any, httpx.Response],
) -> tuple["asyncio.Task[httpx.Response]", list["asyncio.Task[httpx.Response]"]]:
    """Start QUEUED_AHEAD slow logins, then `request` behind them for the slot.

    Returns once `request` is waiting for (or holding) the slot: every login ahead is
    then counted in the slots, or finished, and one more is there.
    """
    ahead = [asyncio.create_task(unknown_email_login(client, n)) for n in range(QUEUED_AHEAD)]

    def in_the_slots() -> int:
        slots = hashing(app)
        return slots.slots_busy + slots.requests_waiting + sum(task.done() for task in ahead)

    await wait_until(lambda: in_the_slots() >= QUEUED_AHEAD, within=60, what="logins queued")
    queued = asyncio.create_task(request)
    await wait_until(lambda: in_the_slots() > QUEUED_AHEAD, within=60, what="request queued")
    return queued, ahead


async def queued_behind_a_deactivation(
    app: FastAPI,
    client: httpx.AsyncClient,
    admin: Account,
    victim: Account,
    request: Coroutine[Any, Any, httpx.Response],
) -> httpx.Response:
    """Send `request` while the hashing slot is busy; deactivate `victim` while it queues."""
    queued, ahead = await queue_behind_slow_logins(app, client, request)
    deactivated = await client.post(f"/api/v1/users/{victim.id}/deactivate", headers=admin.headers)
    assert deactivated.status_code == 200
    # The deactivation landed while the request still waited for its hash.
    assert not queued.done()
    response = await queued
    await asyncio.gather(*ahead)
    return response


async def test_a_password_change_queued_behind_a_deactivation_is_refused(
    database_url: str, tmp_path: Path
) -> None:
    [admin], [victim] = await accounts(database_url, tmp_path, admins=1, users=1)
    async with serving(one_slow_slot(database_url, tmp_path)) as (app, client):
        change = client.patch(
            "/api/v1/users/me",
            headers=victim.headers,
            json={"password": NEW_PASSWORD, "current_password": victim.password},
        )
        changed = await queued_behind_a_deactivation(app, client, admin, victim, change)
        old_password = await login(client, victim)

    assert_problem(changed, 401, "invalid_token")
    # The password stayed as it was: the old one is still right (for an inactive account).
    assert_problem(old_password, 403, "account_inactive")


async def test_a_login_queued_behind_a_deactivation_is_refused(
    database_url: str, tmp_path: Path
) -> None:
    [admin], [victim] = await accounts(database_url, tmp_path, admins=1, users=1)
    async with serving(one_slow_slot(database_url, tmp_path)) as (app, client):
        logged_in = await queued_behind_a_deactivation(
            app, client, admin, victim, login(client, victim)
        )

    assert_problem(logged_in, 403, "account_inactive")


async def test_an_admin_demoted_while_queued_cannot_act_as_one(
    database_url: str, tmp_path: Path
) -> None:
    [admin, other_admin], [victim] = await accounts(database_url, tmp_path, admins=2, users=1)
    async with serving(one_slow_slot(database_url, tmp_path)) as (app, client):
        # An admin's change that needs a hash (a new password for the victim) waits for
        # the slot; meanwhile another admin demotes them. Admin status is checked again
        # after the hash, so the change is refused and nothing of it is applied.
        queued, ahead = await queue_behind_slow_logins(
            app,
            client,
            client.patch(
                f"/api/v1/users/{victim.id}",
                headers=admin.headers,
                json={"password": NEW_PASSWORD, "is_active": False},
            ),
        )
        demoted = await client.patch(
            f"/api/v1/users/{admin.id}", headers=other_admin.headers, json={"is_superuser": False}
        )
        assert demoted.status_code == 200, demoted.text
        refused = await queued
        await asyncio.gather(*ahead)
        victim_now = await client.get(f"/api/v1/users/{victim.id}", headers=other_admin.headers)

    assert_problem(refused, 403, "forbidden")
    assert victim_now.json()["is_active"] is True
