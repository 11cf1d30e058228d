"""GET /api/v1/users/me/events and GET /api/v1/events, through HTTP on SQLite and
PostgreSQL (API.md, "Account lifecycle and audit trail"): what each change records, and
how the trail is paged and filtered.

The mail-driven events (password reset, email verification) are tested with their
slices, where the mails are read: tests/features/test_password_reset.py and
test_verify_email.py.
"""

import uuid
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.factories import (
    Account,
    all_events,
    assert_problem,
    login,
    make_admin,
    make_user,
    my_events,
    refresh,
    register,
    signed_cursor,
    types_of,
)
from tests.shared_app import IN_THE_MODULE_LOOP, SharedApp

ME = "/api/v1/users/me/events"
EVENTS = "/api/v1/events"
EVENT_KEYS = {"id", "type", "at", "actor_id", "user_id", "ip", "user_agent", "details"}
BROWSER = {"User-Agent": "Mozilla/5.0 (audit test)"}


async def log_in(client: httpx.AsyncClient, email: str, password: str) -> httpx.Response:
    return await client.post(
        "/api/v1/auth/login", json={"email": email, "password": password}, headers=BROWSER
    )


async def patch_me(client: httpx.AsyncClient, account: Account, **body: Any) -> httpx.Response:
    return await client.patch("/api/v1/users/me", json=body, headers=account.headers)


# --- the representation ------------------------------------------------------------------


async def test_register_and_login_are_the_users_first_events_newest_first(
    client: httpx.AsyncClient,
) -> None:
    account = await register(client)
    assert (await log_in(client, account.email, account.password)).status_code == 200
    await login(client, account)

    events = await my_events(client, account)

    assert types_of(events) == ["login_succeeded", "login_succeeded", "registered"]
    assert all(set(event) == EVENT_KEYS for event in events)
    assert all(event["user_id"] == account.id for event in events)
    assert all(event["actor_id"] == account.id for event in events)
    assert [event["at"] for event in events] == sorted((e["at"] for e in events), reverse=True)
    assert events[0]["at"].endswith("Z") or events[0]["at"].endswith("+00:00")


async def test_an_event_records_the_clients_ip_and_user_agent(client: httpx.AsyncClient) -> None:
    account = await register(client)
    assert (await log_in(client, account.email, account.password)).status_code == 200
    await login(client, account)

    events = await my_events(client, account)

    assert events[1]["user_agent"] == BROWSER["User-Agent"]
    assert events[1]["ip"] == "127.0.0.1"  # the test transport's peer address


async def test_a_login_event_names_its_session(client: httpx.AsyncClient, user: Account) -> None:
    sessions = await client.get("/api/v1/users/me/sessions", headers=user.headers)

    [succeeded] = [e for e in await my_events(client, user) if e["type"] == "login_succeeded"]

    assert succeeded["details"] == {"session_id": sessions.json()["items"][0]["id"]}


async def test_no_event_holds_a_password_or_a_token(
    client: httpx.AsyncClient, admin: Account, user: Account
) -> None:
    await log_in(client, user.email, "not the password at all")
    rotated = await refresh(client, user.refresh_token)
    await refresh(client, user.refresh_token)  # reused: revokes
    await patch_me(client, user, password="a new password for this test")

    dumped = str(await all_events(client, admin))

    for secret in (
        user.password,
        "not the password at all",
        "a new password for this test",
        user.refresh_token,
        user.access_token,
        rotated.json()["refresh_token"],
    ):
        assert secret not in dumped


async def test_users_see_only_their_own_events(
    client: httpx.AsyncClient, user: Account, other_user: Account
) -> None:
    events = await my_events(client, user)

    assert {event["user_id"] for event in events} == {user.id}


# --- logins ------------------------------------------------------------------------------


async def test_a_wrong_password_records_login_failed(
    client: httpx.AsyncClient, user: Account
) -> None:
    assert_problem(await log_in(client, user.email, "wrong password!"), 401, "invalid_credentials")

    failed = (await my_events(client, user))[0]

    assert failed["type"] == "login_failed"
    assert failed["actor_id"] is None
    assert failed["details"] == {"reason": "wrong_password"}
    assert failed["user_agent"] == BROWSER["User-Agent"]


async def test_an_unknown_email_records_login_failed_with_the_address_typed(
    client: httpx.AsyncClient, admin: Account
) -> None:
    response = await log_in(client, "nobody-here@example.com", "whatever password")
    assert_problem(response, 401, "invalid_credentials")

    [failed] = await all_events(client, admin, type="login_failed")

    assert failed["user_id"] is None
    assert failed["details"] == {"email": "nobody-here@example.com", "reason": "unknown_email"}


async def test_a_login_to_a_deactivated_account_records_login_failed(
    client: httpx.AsyncClient, admin: Account, user: Account
) -> None:
    deactivated = await client.post(f"/api/v1/users/{user.id}/deactivate", headers=admin.headers)
    assert deactivated.status_code == 200

    assert_problem(await log_in(client, user.email, user.password), 403, "account_inactive")

    [failed] = await all_events(client, admin, type="login_failed")
    assert (failed["user_id"], failed["details"]) == (user.id, {"reason": "account_inactive"})


async def test_a_lockout_records_one_login_throttled_however_many_attempts_it_refuses(
    client: httpx.AsyncClient, admin: Account, user: Account
) -> None:
    for _ in range(5):  # LOGIN_MAX_FAILURES
        await log_in(client, user.email, "wrong password!")
    for _ in range(4):
        throttled = await log_in(client, user.email, user.password)
        assert_problem(throttled, 429, "too_many_attempts")
        assert throttled.headers["Retry-After"]

    events = await all_events(client, admin, user_id=user.id)

    assert types_of(events).count("login_failed") == 5
    assert types_of(events).count("login_throttled") == 1
    assert events[0]["type"] == "login_throttled"


async def test_an_unknown_email_is_throttled_and_recorded_like_a_known_one(
    client: httpx.AsyncClient, admin: Account
) -> None:
    for _ in range(8):
        await log_in(client, "stranger@example.com", "guess guess guess")

    events = await all_events(client, admin, since=_an_hour_ago())
    logins = [e for e in events if e["type"].startswith("login_") and e["user_id"] is None]

    assert types_of(logins) == ["login_throttled"] + ["login_failed"] * 5
    assert logins[0]["details"] == {"email": "stranger@example.com"}


# --- sessions ----------------------------------------------------------------------------


async def test_a_reused_refresh_token_records_refresh_reused(
    client: httpx.AsyncClient, user: Account
) -> None:
    assert (await refresh(client, user.refresh_token)).status_code == 200
    # Within the grace window the spent token answers; once two generations on, it is
    # an earlier token and revokes.
    newer = await refresh(
        client, (await refresh(client, user.refresh_token)).json()["refresh_token"]
    )
    assert newer.status_code == 200
    assert_problem(await refresh(client, user.refresh_token), 401, "invalid_token")

    [reused] = [
        e for e in await _events_of_fresh_login(client, user) if e["type"] == "refresh_reused"
    ]

    assert reused["actor_id"] is None
    assert set(reused["details"]) == {"session_id"}


async def test_logout_records_logged_out_once(client: httpx.AsyncClient, user: Account) -> None:
    body = {"refresh_token": user.refresh_token}
    assert (await client.post("/api/v1/auth/logout", json=body)).status_code == 204
    assert (await client.post("/api/v1/auth/logout", json=body)).status_code == 204

    events = await _events_of_fresh_login(client, user)

    assert types_of(events).count("logged_out") == 1


async def test_ending_a_session_records_session_revoked_naming_it(
    client: httpx.AsyncClient, user: Account
) -> None:
    second = await login(client, Account(id=user.id, email=user.email, password=user.password))
    sessions = (await client.get("/api/v1/users/me/sessions", headers=user.headers)).json()
    other = next(s["id"] for s in sessions["items"] if not s["current"])

    response = await client.delete(f"/api/v1/users/me/sessions/{other}", headers=user.headers)
    assert response.status_code == 204
    del second

    revoked = (await my_events(client, user))[0]
    assert (revoked["type"], revoked["details"]) == ("session_revoked", {"session_id": other})
    assert revoked["actor_id"] == user.id


async def test_an_admin_ending_a_session_is_the_events_actor(
    client: httpx.AsyncClient, admin: Account, user: Account
) -> None:
    sessions = await client.get(f"/api/v1/users/{user.id}/sessions", headers=admin.headers)
    session_id = sessions.json()["items"][0]["id"]

    response = await client.delete(
        f"/api/v1/users/{user.id}/sessions/{session_id}", headers=admin.headers
    )
    assert response.status_code == 204

    [revoked] = await all_events(client, admin, type="session_revoked")
    assert (revoked["user_id"], revoked["actor_id"]) == (user.id, admin.id)


async def test_revoking_the_other_sessions_records_one_event_per_session(
    client: httpx.AsyncClient, user: Account
) -> None:
    for _ in range(3):
        await login(client, Account(id=user.id, email=user.email, password=user.password))
    before = (await client.get("/api/v1/users/me/sessions", headers=user.headers)).json()

    response = await client.post("/api/v1/users/me/sessions/revoke-others", headers=user.headers)
    assert response.status_code == 204

    revoked = [e for e in await my_events(client, user) if e["type"] == "session_revoked"]
    others = {s["id"] for s in before["items"] if not s["current"]}
    assert {e["details"]["session_id"] for e in revoked} == others
    assert len(revoked) == 3


# --- account changes ---------------------------------------------------------------------


async def test_a_password_change_records_password_changed(
    client: httpx.AsyncClient, user: Account
) -> None:
    changed = await patch_me(
        client, user, password="another long passphrase", current_password=user.password
    )
    assert changed.status_code == 200, changed.text
    user.password = "another long passphrase"
    await login(client, user)

    events = await my_events(client, user)

    assert types_of(events)[:2] == ["login_succeeded", "password_changed"]
    assert events[1]["details"] == {}


async def test_an_email_change_records_email_changed_without_the_addresses(
    client: httpx.AsyncClient, user: Account
) -> None:
    new_email = f"changed-{uuid.uuid4().hex[:8]}@example.com"
    changed = await patch_me(client, user, email=new_email, current_password=user.password)
    assert changed.status_code == 200, changed.text

    [event] = [e for e in await my_events(client, user) if e["type"] == "email_changed"]

    assert event["details"] == {}
    assert new_email not in str(event)
    assert user.email not in str(event)


async def test_a_refused_change_records_nothing(
    client: httpx.AsyncClient, user: Account, other_user: Account
) -> None:
    taken = await patch_me(client, user, email=other_user.email, current_password=user.password)
    assert_problem(taken, 409, "email_taken")

    assert "email_changed" not in types_of(await my_events(client, user))


async def test_admin_changes_record_their_actor(
    client: httpx.AsyncClient, admin: Account, user: Account
) -> None:
    path = f"/api/v1/users/{user.id}"
    for body in (
        {"is_superuser": True},
        {"is_superuser": False},
        {"is_active": False},
        {"is_active": True},
    ):
        response = await client.patch(path, json=body, headers=admin.headers)
        assert response.status_code == 200, response.text

    events = await all_events(client, admin, user_id=user.id)

    assert types_of(events)[:4] == ["reactivated", "deactivated", "demoted", "promoted"]
    assert {event["actor_id"] for event in events[:4]} == {admin.id}


async def test_a_patch_that_changes_nothing_records_nothing(
    client: httpx.AsyncClient, admin: Account, user: Account
) -> None:
    path = f"/api/v1/users/{user.id}"
    response = await client.patch(path, json={"is_active": True}, headers=admin.headers)
    assert response.status_code == 200

    assert "reactivated" not in types_of(await all_events(client, admin, user_id=user.id))


async def test_deactivation_records_deactivated_once(
    client: httpx.AsyncClient, admin: Account, user: Account
) -> None:
    for _ in range(2):  # idempotent: the second changes nothing
        response = await client.post(f"/api/v1/users/{user.id}/deactivate", headers=admin.headers)
        assert response.status_code == 200

    events = await all_events(client, admin, type="deactivated")

    assert [(e["user_id"], e["actor_id"]) for e in events] == [(user.id, admin.id)]


async def test_self_deactivation_is_its_own_actor(
    client: httpx.AsyncClient, admin: Account, user: Account
) -> None:
    response = await client.post(
        "/api/v1/users/me/deactivate",
        json={"current_password": user.password},
        headers=user.headers,
    )
    assert response.status_code == 200

    [event] = await all_events(client, admin, type="deactivated")
    assert event["actor_id"] == user.id


async def test_the_last_admin_refused_leaves_no_deactivated_event(
    client: httpx.AsyncClient, admin: Account
) -> None:
    response = await client.post(
        "/api/v1/users/me/deactivate",
        json={"current_password": admin.password},
        headers=admin.headers,
    )
    assert_problem(response, 409, "last_admin")

    assert await all_events(client, admin, type="deactivated") == []


# --- paging and filters ------------------------------------------------------------------


async def test_walking_the_pages_returns_every_event_once_newest_first(
    client: httpx.AsyncClient, user: Account
) -> None:
    for _ in range(6):
        await login(client, Account(id=user.id, email=user.email, password=user.password))
    everything = await my_events(client, user)
    assert len(everything) == 8

    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        response = await client.get(ME, headers=user.headers, params=params)
        assert response.status_code == 200, response.text
        body = response.json()
        assert len(body["items"]) <= 3
        seen += [event["id"] for event in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break

    assert seen == [event["id"] for event in everything]


async def test_the_default_page_is_twenty_events(client: httpx.AsyncClient, user: Account) -> None:
    for _ in range(21):
        await log_in(client, user.email, user.password)

    body = (await client.get(ME, headers=user.headers)).json()

    assert len(body["items"]) == 20
    assert body["next_cursor"] is not None


@IN_THE_MODULE_LOOP
@pytest.mark.parametrize("limit", [0, 101, -1])
async def test_a_limit_outside_1_to_100_is_422(shared_app: SharedApp, limit: int) -> None:
    client, admin = shared_app.client, shared_app.admin
    for path in (ME, EVENTS):
        response = await client.get(path, headers=admin.headers, params={"limit": limit})
        assert_problem(response, 422, "validation_error")


@pytest.mark.parametrize("path", [ME, EVENTS])
async def test_an_altered_cursor_is_422_invalid_cursor(
    client: httpx.AsyncClient, admin: Account, path: str
) -> None:
    await login(client, admin)
    cursor = (await client.get(path, headers=admin.headers, params={"limit": 1})).json()[
        "next_cursor"
    ]
    payload, signature = cursor.split(".")

    for altered in (f"{payload}.{signature[::-1]}", f"{payload[:-2]}AA.{signature}", "garbage"):
        response = await client.get(path, headers=admin.headers, params={"cursor": altered})
        assert_problem(response, 422, "invalid_cursor")


@IN_THE_MODULE_LOOP
@pytest.mark.parametrize("value", [["x"], {"a": 1}, 1, True, None], ids=repr)
@pytest.mark.parametrize("position", [0, 1], ids=["at", "id"])
@pytest.mark.parametrize("path", [ME, EVENTS])
async def test_a_cursor_signed_with_the_real_key_holding_a_non_string_is_422(
    shared_app: SharedApp, path: str, position: int, value: Any
) -> None:
    client, admin = shared_app.client, shared_app.admin
    values: list[Any] = ["2026-12-01T00:00:00+00:00", uuid.uuid4().hex]
    values[position] = value

    response = await client.get(
        path,
        headers=admin.headers,
        params={"cursor": signed_cursor(values, "security_events")},
    )

    assert_problem(response, 422, "invalid_cursor")


@pytest.mark.parametrize("path", [ME, EVENTS])
async def test_a_cursor_signed_the_same_way_with_string_values_is_accepted(
    client: httpx.AsyncClient, admin: Account, path: str
) -> None:
    # The control for the test above: the test signs cursors as the server does, and
    # a position after the newest event (a far-future time) shows them all.
    values = ["2999-01-01T00:00:00+00:00", uuid.uuid4().hex]

    response = await client.get(
        path,
        headers=admin.headers,
        params={"cursor": signed_cursor(values, "security_events")},
    )

    assert response.status_code == 200, response.text
    assert "registered" in types_of(response.json()["items"])


async def test_a_users_list_cursor_is_not_an_events_cursor(
    client: httpx.AsyncClient, admin: Account, user: Account
) -> None:
    users = await client.get("/api/v1/users", headers=admin.headers, params={"limit": 1})
    cursor = users.json()["next_cursor"]

    response = await client.get(EVENTS, headers=admin.headers, params={"cursor": cursor})

    assert_problem(response, 422, "invalid_cursor")


async def test_the_admin_view_is_for_admins_only(client: httpx.AsyncClient, user: Account) -> None:
    assert_problem(await client.get(EVENTS, headers=user.headers), 403, "forbidden")


async def test_admins_see_everyones_events(
    client: httpx.AsyncClient, admin: Account, user: Account, other_user: Account
) -> None:
    users = {event["user_id"] for event in await all_events(client, admin)}

    assert {admin.id, user.id, other_user.id} <= users


async def test_admins_filter_by_user_and_type(
    client: httpx.AsyncClient, admin: Account, user: Account, other_user: Account
) -> None:
    by_user = await all_events(client, admin, user_id=user.id)
    by_type = await all_events(client, admin, type="registered")
    both = await all_events(client, admin, user_id=other_user.id, type="login_succeeded")

    assert {e["user_id"] for e in by_user} == {user.id}
    assert set(types_of(by_type)) == {"registered"}
    assert {e["user_id"] for e in by_type} == {admin.id, user.id, other_user.id}
    assert [(e["user_id"], e["type"]) for e in both] == [(other_user.id, "login_succeeded")]


async def test_an_unknown_type_is_422(client: httpx.AsyncClient, admin: Account) -> None:
    response = await client.get(EVENTS, headers=admin.headers, params={"type": "hacked"})

    assert_problem(response, 422, "validation_error")


async def test_since_is_inclusive_and_until_exclusive(
    client: httpx.AsyncClient, admin: Account, user: Account
) -> None:
    events = await all_events(client, admin, user_id=user.id)
    registered, logged_in = events[-1]["at"], events[-2]["at"]

    from_login = await all_events(client, admin, user_id=user.id, since=logged_in)
    before_login = await all_events(client, admin, user_id=user.id, until=logged_in)
    window = await all_events(client, admin, user_id=user.id, since=registered, until=logged_in)

    assert types_of(from_login) == types_of(events)[:-1]
    assert types_of(before_login) == ["registered"]
    assert types_of(window) == ["registered"]


async def test_filters_page_like_the_unfiltered_view(
    client: httpx.AsyncClient, admin: Account, app: FastAPI
) -> None:
    accounts = [await make_user(client) for _ in range(3)]
    del app

    first = await client.get(
        EVENTS, headers=admin.headers, params={"type": "registered", "limit": 2}
    )
    second = await client.get(
        EVENTS,
        headers=admin.headers,
        params={"type": "registered", "limit": 2, "cursor": first.json()["next_cursor"]},
    )

    ids = [e["user_id"] for e in first.json()["items"] + second.json()["items"]]
    assert ids == [a.id for a in reversed(accounts)] + [admin.id]
    assert second.json()["next_cursor"] is None


# --- helpers -----------------------------------------------------------------------------


def _an_hour_ago() -> str:
    return (datetime.now().astimezone() - timedelta(hours=1)).isoformat()


async def _events_of_fresh_login(client: httpx.AsyncClient, user: Account) -> list[Any]:
    """The user's events, read with a new login (the old sessions may have ended)."""
    await login(client, user)
    return await my_events(client, user)


_ = make_admin  # the admin fixture comes from tests/conftest.py


@IN_THE_MODULE_LOOP
@pytest.mark.parametrize("value", ["0.5", "1733011200", "yesterday", "2026-13-01T00:00:00Z"])
@pytest.mark.parametrize("parameter", ["since", "until"])
async def test_a_time_filter_is_an_rfc3339_date_time_or_422(
    shared_app: SharedApp, parameter: str, value: str
) -> None:
    client, admin = shared_app.client, shared_app.admin
    # A number is not a time here, though lax parsing would read it as a Unix timestamp.
    response = await client.get("/api/v1/events", params={parameter: value}, headers=admin.headers)

    assert_problem(response, 422, "validation_error")
