"""POST /api/v1/users/me/erase and POST /api/v1/users/{user_id}/erase, over HTTP, on
both databases, against a real SMTP server; and what a database dump holds afterwards."""

import asyncio
import signal
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from kernel.settings import Settings
from tests.conftest import make_settings
from tests.factories import (
    DEFAULT_PASSWORD,
    Account,
    all_events,
    assert_problem,
    login,
    make_admin,
    make_user,
    refresh,
    register,
    types_of,
)
from tests.mail import Mailbox, text_of
from tests.servers import running_server
from tests.waiting import wait_until

ME = "/api/v1/users/me"
# What the user typed, each distinctive enough that finding it anywhere in a dump means
# it was kept.
PERSONAL = {
    "first_name": "Zebediah",
    "last_name": "Quillfeather",
    "bio": "Collects antique barometers in Lyme Regis",
    "avatar_url": "https://pictures.example.org/zebediah-quillfeather.png",
}
USER_AGENT = "ErasureProbe/7.3 (Zebediah phone)"
ONLY_POSTGRESQL = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


@pytest.fixture
def settings(database_url: str, tmp_path: Path, mailbox: Mailbox) -> Settings:
    return make_settings(database_url, tmp_path, **mailbox.settings)


async def erase(
    client: httpx.AsyncClient, actor: Account, target: str = "me", password: str | None = None
) -> httpx.Response:
    body: dict[str, Any] | None = None if password is None else {"current_password": password}
    return await client.post(f"/api/v1/users/{target}/erase", headers=actor.headers, json=body)


async def erase_self(client: httpx.AsyncClient, account: Account) -> None:
    response = await erase(client, account, password=account.password)
    assert response.status_code == 204, response.text
    assert response.content == b""


# --- what a client sees ------------------------------------------------------------------


async def test_self_erasure_ends_every_session_and_the_login(
    client: httpx.AsyncClient, user: Account
) -> None:
    second = await login(client, Account(id=user.id, email=user.email, password=user.password))

    await erase_self(client, user)

    for account in (user, second):
        assert_problem(await client.get(ME, headers=account.headers), 401, "invalid_token")
        assert_problem(await refresh(client, account.refresh_token), 401, "invalid_token")
    credentials = {"email": user.email, "password": user.password}
    response = await client.post("/api/v1/auth/login", json=credentials)
    assert_problem(response, 401, "invalid_credentials")  # as for an address never registered


async def test_an_erased_id_is_404_everywhere(
    client: httpx.AsyncClient, app: FastAPI, user: Account
) -> None:
    admin = await make_admin(client, app)
    viewer = await make_user(client)
    await erase_self(client, user)

    path = f"/api/v1/users/{user.id}"
    for account in (admin, viewer):
        assert_problem(await client.get(path, headers=account.headers), 404, "user_not_found")
    for method, suffix, body in (
        ("PATCH", "", {"first_name": "Back"}),
        ("POST", "/deactivate", None),
        ("POST", "/erase", None),
    ):
        response = await client.request(method, path + suffix, headers=admin.headers, json=body)
        assert_problem(response, 404, "user_not_found")
    listed = await client.get(
        "/api/v1/users", headers=admin.headers, params={"limit": 100, "is_active": "false"}
    )
    assert user.id not in {item["id"] for item in listed.json()["items"]}
    everyone = await client.get(
        "/api/v1/users", headers=admin.headers, params={"limit": 100, "include_total": "true"}
    )
    assert user.id not in {item["id"] for item in everyone.json()["items"]}
    assert everyone.json()["total"] == 2  # the admin and the viewer


async def test_the_email_can_register_again_at_once_as_a_new_account(
    client: httpx.AsyncClient, user: Account
) -> None:
    await erase_self(client, user)

    again = await make_user(client, email=user.email)

    assert again.id != user.id
    me = (await client.get(ME, headers=again.headers)).json()
    assert (me["email"], me["email_verified"]) == (user.email, False)


async def test_a_wrong_password_returns_403_and_erases_nothing(
    client: httpx.AsyncClient, user: Account
) -> None:
    response = await erase(client, user, password="not my password at all")

    assert_problem(response, 403, "invalid_current_password")
    assert (await client.get(ME, headers=user.headers)).json() == user.record
    assert (await refresh(client, user.refresh_token)).status_code == 200


async def test_wrong_passwords_count_toward_the_guess_budget(
    client: httpx.AsyncClient, user: Account, settings: Settings
) -> None:
    for _ in range(settings.login_max_failures):
        assert (await erase(client, user, password="a wrong guess")).status_code == 403

    response = await erase(client, user, password=user.password)

    assert_problem(response, 429, "too_many_attempts")
    assert response.headers["Retry-After"].isdigit()
    assert (await client.get(ME, headers=user.headers)).status_code == 200


@pytest.mark.parametrize("body", [None, {}, {"current_password": ""}, {"password": "x"}])
async def test_self_erasure_without_the_password_returns_422(
    client: httpx.AsyncClient, user: Account, body: dict[str, str] | None
) -> None:
    for target in ("me", user.id):
        response = await client.post(
            f"/api/v1/users/{target}/erase", headers=user.headers, json=body
        )
        assert_problem(response, 422, "validation_error")
    assert (await client.get(ME, headers=user.headers)).status_code == 200


async def test_an_admin_erases_anyone_without_a_body(
    client: httpx.AsyncClient, app: FastAPI, user: Account
) -> None:
    admin = await make_admin(client, app)

    response = await erase(client, admin, user.id)

    assert response.status_code == 204, response.text
    assert_problem(await client.get(ME, headers=user.headers), 401, "invalid_token")
    assert (await client.get(ME, headers=admin.headers)).status_code == 200


async def test_a_user_cannot_erase_someone_else(
    client: httpx.AsyncClient, user: Account, other_user: Account
) -> None:
    response = await erase(client, user, other_user.id, password=user.password)

    assert_problem(response, 403, "forbidden")
    assert (await client.get(ME, headers=other_user.headers)).status_code == 200


async def test_an_unknown_id_is_404(client: httpx.AsyncClient, app: FastAPI) -> None:
    admin = await make_admin(client, app)

    assert_problem(await erase(client, admin, str(uuid.uuid4())), 404, "user_not_found")


async def test_the_last_active_admin_cannot_be_erased(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    admin = await make_admin(client, app)

    assert_problem(await erase(client, admin, password=admin.password), 409, "last_admin")
    assert_problem(await erase(client, admin, admin.id, password=admin.password), 409, "last_admin")
    assert (await client.get(ME, headers=admin.headers)).json()["is_superuser"] is True


async def test_an_admin_can_go_while_another_remains(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    first, second = await make_admin(client, app), await make_admin(client, app)

    await erase_self(client, first)

    assert_problem(await erase(client, second, password=second.password), 409, "last_admin")


async def test_concurrent_erasures_of_one_account_erase_it_once(
    client: httpx.AsyncClient, app: FastAPI, user: Account
) -> None:
    admin = await make_admin(client, app)

    responses = await asyncio.gather(
        erase(client, user, password=user.password), erase(client, admin, user.id)
    )

    assert sorted(response.status_code for response in responses) in ([204, 401], [204, 404])
    events = await all_events(client, admin, user_id=user.id, type="deleted")
    assert len(events) == 1


# --- the audit trail ---------------------------------------------------------------------


async def test_the_events_stay_without_their_personal_fields(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    admin = await make_admin(client, app)
    email = f"probe-{uuid.uuid4().hex[:8]}@example.com"
    headers = {"User-Agent": USER_AGENT}
    # A login to the address before it had an account: the event holds the typed email.
    typed = {"email": email, "password": "whatever it was"}
    await client.post("/api/v1/auth/login", json=typed, headers=headers)
    user = await register(client, email=email)
    body = {"email": email, "password": user.password}
    user.access_token = (
        await client.post("/api/v1/auth/login", json=body, headers=headers)
    ).json()["access_token"]
    before = await all_events(client, admin)
    assert any(event["user_agent"] == USER_AGENT for event in before)

    await erase_self(client, user)

    after = await all_events(client, admin)
    assert {event["id"] for event in before} <= {event["id"] for event in after}
    theirs = [e for e in after if user.id in (e["user_id"], e["actor_id"])]
    assert types_of(theirs) == ["deleted", "login_succeeded", "registered"]
    assert theirs[0]["actor_id"] == user.id
    unknown_login = next(
        e
        for e in after
        if e["type"] == "login_failed" and e["details"].get("reason") == "unknown_email"
    )
    assert "email" not in unknown_login["details"]
    for event in [*theirs, unknown_login]:
        assert (event["ip"], event["user_agent"]) == (None, None), event
    assert USER_AGENT not in str(after)
    assert email not in str(after)


async def test_an_admins_erasure_records_the_admin(
    client: httpx.AsyncClient, app: FastAPI, user: Account
) -> None:
    admin = await make_admin(client, app)

    response = await client.post(
        f"/api/v1/users/{user.id}/erase", headers=admin.headers | {"User-Agent": "AdminConsole/1"}
    )

    assert response.status_code == 204, response.text
    [deleted] = await all_events(client, admin, user_id=user.id, type="deleted")
    assert (deleted["actor_id"], deleted["user_agent"]) == (admin.id, "AdminConsole/1")


# --- the notice, and what the database keeps ---------------------------------------------


async def test_a_notice_goes_to_the_old_address_and_then_leaves_no_trace(
    client: httpx.AsyncClient,
    mailbox: Mailbox,
    user: Account,
    database_url: str,
    settings: Settings,
) -> None:
    await mailbox.wait_for(user.email)  # the verification mail of the registration

    await erase_self(client, user)

    [_, notice] = await mailbox.wait_for(user.email, count=2)
    assert notice["Subject"] == "Your account was deleted"
    assert "cannot be undone" in text_of(notice)
    await wait_until(
        lambda: user.email not in database_dump(database_url),
        within=10,
        what="the sent notice's row is deleted",
    )


async def test_a_database_dump_holds_nothing_personal_about_an_erased_account(
    client: httpx.AsyncClient, mailbox: Mailbox, database_url: str
) -> None:
    user = await make_user(client, **PERSONAL)
    # Leave a trace in every table: a session from the user's device, a mailed reset
    # token, mails, the guess and send counters, events with the device's agent.
    device = {"User-Agent": USER_AGENT}
    credentials = {"email": user.email, "password": user.password}
    signed_in = await client.post("/api/v1/auth/login", json=credentials, headers=device)
    headers = device | {"Authorization": f"Bearer {signed_in.json()['access_token']}"}
    await client.post("/api/v1/auth/login", json=credentials | {"password": "wrong"})
    await client.post("/api/v1/auth/password-reset", json={"email": user.email})
    await mailbox.wait_for(user.email, count=2)
    dump = database_dump(database_url)
    for value in (user.email, PERSONAL["last_name"], USER_AGENT):
        assert value in dump

    response = await client.post(
        f"{ME}/erase", json={"current_password": user.password}, headers=headers
    )
    assert response.status_code == 204, response.text
    await mailbox.wait_for(user.email, count=3)  # the notice

    async def clean() -> bool:
        return not personal_traces(database_dump(database_url), user)

    await wait_until(clean, within=10, what="nothing personal left in the dump")
    assert user.id.replace("-", "") in database_dump(database_url)  # the tombstone stays


def personal_traces(dump: str, user: Account) -> list[str]:
    found = [value for value in [user.email, USER_AGENT, *PERSONAL.values()] if value in dump]
    tombstone = [line for line in dump.splitlines() if user.id.replace("-", "") in line]
    tombstone += [line for line in dump.splitlines() if user.id in line]
    found += [line for line in tombstone if "$argon2" in line]
    return found


def database_dump(database_url: str) -> str:
    """What an operator's backup holds: `sqlite3 .dump`, or `pg_dump` of the database."""
    if database_url.startswith("sqlite"):
        path = database_url.split(":///", 1)[1]
        with sqlite3.connect(path) as connection:
            return "\n".join(connection.iterdump())
    import subprocess

    url = database_url.replace("+asyncpg", "", 1)
    return subprocess.run(
        ["pg_dump", "--data-only", url], capture_output=True, text=True, check=True, timeout=60
    ).stdout


# --- one transaction ---------------------------------------------------------------------


@ONLY_POSTGRESQL
async def test_a_crash_part_way_leaves_the_account_whole(database_url: str, tmp_path: Path) -> None:
    async with (
        running_server(database_url, tmp_path) as server,
        httpx.AsyncClient(base_url=server.base_url, timeout=30) as client,
    ):
        user = await make_user(client, **PERSONAL)
        profile = (await client.get(ME, headers=user.headers)).json()
        # Hold the user's events, which erasure updates after deleting the sessions
        # and mails: the erasure stops there, half done, until the server is killed.
        blocker = await asyncpg.connect(database_url.replace("+asyncpg", "", 1))
        try:
            holding = blocker.transaction()
            await holding.start()
            await blocker.execute(
                "SELECT 1 FROM security_events WHERE user_id = $1 FOR UPDATE",
                uuid.UUID(user.id),
            )
            erasing = asyncio.create_task(erase(client, user, password=user.password))

            async def erasure_waits() -> bool:
                # pg_stat_activity is a snapshot per transaction: read it afresh each time.
                await blocker.execute("SELECT pg_stat_clear_snapshot()")
                waiting = await blocker.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND query LIKE 'UPDATE security_events%'"
                )
                return bool(waiting)

            await wait_until(erasure_waits, within=20, what="the erasure reaches the events")
            server.signal(signal.SIGKILL)
            with pytest.raises(httpx.TransportError):
                await erasing
            await holding.rollback()
        finally:
            await blocker.close()

    async with (
        running_server(database_url, tmp_path) as restarted,
        httpx.AsyncClient(base_url=restarted.base_url, timeout=30) as client,
    ):
        await wait_until(
            lambda: _no_erasure_left(database_url), within=20, what="the killed erasure ends"
        )
        assert (await client.get(ME, headers=user.headers)).json() == profile
        assert (await refresh(client, user.refresh_token)).status_code == 200
        body = {"email": user.email, "password": DEFAULT_PASSWORD}
        assert (await client.post("/api/v1/auth/login", json=body)).status_code == 200


async def _no_erasure_left(database_url: str) -> bool:
    connection = await asyncpg.connect(database_url.replace("+asyncpg", "", 1))
    try:
        left = await connection.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'UPDATE security_events%'"
            " AND state <> 'idle' AND pid <> pg_backend_pid()"
        )
    finally:
        await connection.close()
    return not left
