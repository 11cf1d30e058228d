"""GET /api/v1/users: admins page, sort, search and filter users, on both databases."""

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from kernel.settings import Settings
from tests.conftest import make_settings
from tests.factories import (
    Account,
    assert_problem,
    login,
    register,
    serving,
    signed_cursor,
)
from tests.shared_app import IN_THE_MODULE_LOOP, SharedApp

PUBLIC_KEYS = {"id", "first_name", "last_name", "full_name", "bio", "avatar_url"}
PRIVATE_KEYS = PUBLIC_KEYS | {
    "email",
    "email_verified",
    "is_active",
    "is_superuser",
    "created_at",
    "updated_at",
}
SORTS = ["created_at", "-created_at", "email", "-email"]


async def page(client: httpx.AsyncClient, admin: Account, **params: Any) -> dict[str, Any]:
    response = await client.get("/api/v1/users", headers=admin.headers, params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def emails(client: httpx.AsyncClient, admin: Account, **params: Any) -> list[str]:
    return [item["email"] for item in (await page(client, admin, limit=100, **params))["items"]]


async def register_all(client: httpx.AsyncClient, *locals_: str) -> list[Account]:
    return [await register(client, email=f"{name}@example.com") for name in locals_]


def expected_order(admin: Account, accounts: list[Account], sort: str) -> list[str]:
    """Registration order is creation order; emails here sort the same under any collation."""
    everyone = [admin, *accounts]
    if sort.lstrip("-") == "email":
        everyone.sort(key=lambda account: account.email)
    return [account.id for account in (everyone[::-1] if sort.startswith("-") else everyone)]


async def test_non_admin_returns_403_forbidden(client: httpx.AsyncClient, user: Account) -> None:
    response = await client.get("/api/v1/users", headers=user.headers)

    assert_problem(response, 403, "forbidden")


async def test_items_are_private_users(client: httpx.AsyncClient, admin: Account) -> None:
    (account,) = await register_all(client, "amy")

    body = await page(client, admin)

    assert [set(item) for item in body["items"]] == [PRIVATE_KEYS, PRIVATE_KEYS]
    assert body["items"][1] == account.record
    assert body["next_cursor"] is None


async def test_default_limit_is_20(client: httpx.AsyncClient, admin: Account) -> None:
    await register_all(client, *(f"u{number:02d}" for number in range(20)))

    body = await page(client, admin)

    assert len(body["items"]) == 20
    assert body["next_cursor"] is not None


@pytest.mark.parametrize("limit", [1, 2])
async def test_limit_caps_the_page(client: httpx.AsyncClient, admin: Account, limit: int) -> None:
    await register_all(client, "amy", "bob")

    body = await page(client, admin, limit=limit)

    assert len(body["items"]) == limit
    assert body["next_cursor"] is not None


async def test_limit_100_is_accepted(client: httpx.AsyncClient, admin: Account) -> None:
    body = await page(client, admin, limit=100)

    assert [item["id"] for item in body["items"]] == [admin.id]


@IN_THE_MODULE_LOOP
@pytest.mark.parametrize("limit", ["0", "101", "-1", str(2**63), str(10**30), "ten", "1.5"])
async def test_out_of_range_limit_returns_422(shared_app: SharedApp, limit: str) -> None:
    client, admin = shared_app.client, shared_app.admin
    response = await client.get("/api/v1/users", headers=admin.headers, params={"limit": limit})

    assert_problem(response, 422, "validation_error")


@pytest.mark.parametrize("sort", [None, *SORTS])
async def test_sort_orders_the_items(
    client: httpx.AsyncClient, admin: Account, sort: str | None
) -> None:
    accounts = await register_all(client, "carol", "alice", "bob")
    params = {} if sort is None else {"sort": sort}

    body = await page(client, admin, **params)

    assert [item["id"] for item in body["items"]] == expected_order(
        admin, accounts, sort or "created_at"
    )


@IN_THE_MODULE_LOOP
@pytest.mark.parametrize("sort", ["name", "created", "+email", "--email", "EMAIL"])
async def test_invalid_sort_returns_422(shared_app: SharedApp, sort: str) -> None:
    client, admin = shared_app.client, shared_app.admin
    response = await client.get("/api/v1/users", headers=admin.headers, params={"sort": sort})

    assert_problem(response, 422, "validation_error")


@pytest.mark.parametrize("sort", SORTS)
async def test_walking_all_pages_returns_every_user_once_in_order(
    client: httpx.AsyncClient, admin: Account, sort: str
) -> None:
    accounts = await register_all(client, "fay", "cid", "gus", "amy", "eve", "bob", "dan")
    seen: list[str] = []
    cursor: str | None = None

    while True:
        params = {"sort": sort, "limit": 3} | ({"cursor": cursor} if cursor else {})
        body = await page(client, admin, **params)
        seen += [item["id"] for item in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break

    assert seen == expected_order(admin, accounts, sort)


@pytest.mark.parametrize("sort", SORTS)
async def test_a_cursor_at_a_users_own_sort_key_goes_on_by_id(
    client: httpx.AsyncClient, admin: Account, sort: str
) -> None:
    # Two users may share a sort key (a created_at to the microsecond): the id orders
    # them, so a cursor holding amy's key goes on from amy or just past her by its id.
    accounts = await register_all(client, "cid", "amy", "bob")
    amy, order = accounts[1], expected_order(admin, accounts, sort)
    key = amy.record[sort.lstrip("-")]
    lowest, highest = "0" * 32, "f" * 32
    before_amy, past_amy = (highest, lowest) if sort.startswith("-") else (lowest, highest)

    from_her = await page(
        client, admin, sort=sort, cursor=signed_cursor([sort, key, before_amy], "list_users")
    )
    after_her = await page(
        client, admin, sort=sort, cursor=signed_cursor([sort, key, past_amy], "list_users")
    )

    at = order.index(amy.id)
    assert [item["id"] for item in from_her["items"]] == order[at:]
    assert [item["id"] for item in after_her["items"]] == order[at + 1 :]


async def test_last_page_that_fills_exactly_has_no_next_cursor(
    client: httpx.AsyncClient, admin: Account
) -> None:
    await register_all(client, "amy", "bob", "cid")
    first = await page(client, admin, limit=2)

    second = await page(client, admin, limit=2, cursor=first["next_cursor"])

    assert len(second["items"]) == 2
    assert second["next_cursor"] is None


@pytest.mark.parametrize("sort", SORTS)
async def test_users_added_while_walking_never_repeat_or_skip_existing_ones(
    client: httpx.AsyncClient, admin: Account, sort: str
) -> None:
    accounts = await register_all(client, "fay", "cid", "gus", "amy", "eve", "bob", "dan")
    seen: list[str] = []
    cursor: str | None = None
    for round_ in range(20):
        params = {"sort": sort, "limit": 2} | ({"cursor": cursor} if cursor else {})
        body = await page(client, admin, **params)
        seen += [item["id"] for item in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
        if round_ < 3:  # one sorts before everyone, one after everyone, either direction
            await register_all(client, f"0new{round_}", f"znew{round_}")

    existing = set(expected_order(admin, accounts, sort))
    assert len(seen) == len(set(seen))
    assert [user_id for user_id in seen if user_id in existing] == expected_order(
        admin, accounts, sort
    )


async def test_cursor_from_another_sort_returns_422_invalid_cursor(
    client: httpx.AsyncClient, admin: Account
) -> None:
    await register_all(client, "amy", "bob")
    cursor = (await page(client, admin, sort="email", limit=1))["next_cursor"]

    response = await client.get(
        "/api/v1/users", headers=admin.headers, params={"sort": "created_at", "cursor": cursor}
    )

    assert_problem(response, 422, "invalid_cursor")


def edited(cursor: str, index: int) -> str:
    index = index if cursor[index] != "." else index + 1
    return cursor[:index] + ("B" if cursor[index] == "A" else "A") + cursor[index + 1 :]


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda cursor: edited(cursor, 0), id="edited-start"),
        pytest.param(lambda cursor: edited(cursor, len(cursor) // 2), id="edited-middle"),
        pytest.param(lambda cursor: cursor[:-4], id="truncated-end"),
        pytest.param(lambda cursor: cursor[: len(cursor) // 2], id="truncated-half"),
        pytest.param(lambda cursor: cursor + "AAAA", id="extended"),
        pytest.param(lambda cursor: cursor.split(".")[0], id="payload-only"),
    ],
)
async def test_tampered_cursor_returns_422_invalid_cursor(
    client: httpx.AsyncClient, admin: Account, tamper: Callable[[str], str]
) -> None:
    await register_all(client, "amy", "bob")
    cursor = (await page(client, admin, limit=1))["next_cursor"]

    response = await client.get(
        "/api/v1/users", headers=admin.headers, params={"cursor": tamper(cursor)}
    )

    assert_problem(response, 422, "invalid_cursor")


@IN_THE_MODULE_LOOP
@pytest.mark.parametrize(
    "cursor", ["", "garbage", "a.b", "a.b.c", ".", "e30.e30", "é.é", "\x00.\x00"]
)
async def test_garbage_cursor_returns_422_invalid_cursor(
    shared_app: SharedApp, cursor: str
) -> None:
    client, admin = shared_app.client, shared_app.admin
    response = await client.get("/api/v1/users", headers=admin.headers, params={"cursor": cursor})

    assert_problem(response, 422, "invalid_cursor")


@IN_THE_MODULE_LOOP
async def test_overlong_garbage_cursor_returns_422_invalid_cursor(shared_app: SharedApp) -> None:
    client, admin = shared_app.client, shared_app.admin
    response = await client.get(
        "/api/v1/users", headers=admin.headers, params={"cursor": "x" * 1001}
    )

    assert_problem(response, 422, "invalid_cursor")


async def test_cursor_signed_with_another_key_returns_422_invalid_cursor(
    client: httpx.AsyncClient, admin: Account, settings: Settings, tmp_path: Path
) -> None:
    await register_all(client, "amy", "bob")
    # HS256: the forger's own tokens then need no signing key sealed with our SECRET_KEY.
    forger = make_settings(
        settings.database_url, tmp_path / "forger", secret_key="f" * 64, jwt_algorithm="HS256"
    )
    async with serving(forger) as (_, forger_client):
        forger_admin = await login(forger_client, Account(admin.id, admin.email, admin.password))
        forged = (await page(forger_client, forger_admin, limit=1))["next_cursor"]

    response = await client.get("/api/v1/users", headers=admin.headers, params={"cursor": forged})

    assert_problem(response, 422, "invalid_cursor")


# Every value a cursor of this list holds is a string: any other JSON value, even under
# the server's own signature, must be refused like a forged cursor, never reach a query.
NOT_STRINGS: list[Any] = [["x"], {"a": 1}, 1, 1.5, True, None]


def cursor_values_with(sort: str, position: int, value: Any, user_id: str) -> list[Any]:
    values: list[Any] = [sort, "2026-12-01T00:00:00+00:00", uuid.UUID(user_id).hex]
    if sort.lstrip("-") == "email":
        values[1] = "amy@example.com"
    values[position] = value
    return values


@IN_THE_MODULE_LOOP
@pytest.mark.parametrize("value", NOT_STRINGS, ids=repr)
@pytest.mark.parametrize("position", [0, 1, 2], ids=["sort", "key", "id"])
@pytest.mark.parametrize("sort", ["created_at", "email"])
async def test_cursor_signed_with_the_real_key_but_holding_a_non_string_is_422(
    shared_app: SharedApp, sort: str, position: int, value: Any
) -> None:
    client, admin = shared_app.client, shared_app.admin
    cursor = signed_cursor(cursor_values_with(sort, position, value, admin.id), "list_users")

    response = await client.get(
        "/api/v1/users", headers=admin.headers, params={"sort": sort, "cursor": cursor}
    )

    assert_problem(response, 422, "invalid_cursor")


@pytest.mark.parametrize("sort", ["created_at", "email"])
async def test_a_cursor_signed_the_same_way_with_string_values_is_accepted(
    client: httpx.AsyncClient, admin: Account, sort: str
) -> None:
    # The control for the test above: the test signs cursors as the server does.
    (amy,) = await register_all(client, "amy")
    values = cursor_values_with(sort, 0, sort, admin.id)
    values[1] = "0" if sort == "email" else "2000-01-01T00:00:00+00:00"

    body = await page(client, admin, sort=sort, cursor=signed_cursor(values, "list_users"))

    assert {item["id"] for item in body["items"]} == {admin.id, amy.id}


@pytest.mark.parametrize(
    "q",
    [
        "\n",
        "example.com\nada",
        "com\nada\nlovelace",
        "ada\nlovelace",
        "\t",
        "\r",
        "\x1f",
        "\x7f",
        "\u202e",
    ],
)
async def test_q_never_matches_across_fields_a_control_character_is_422(
    client: httpx.AsyncClient, admin: Account, q: str
) -> None:
    # No email or name holds a control character, so no q holding one is a substring of
    # a field: refused like a NUL, rather than matching across email and names.
    await register(client, email="ada@example.com", first_name="Ada", last_name="Lovelace")

    response = await client.get("/api/v1/users", headers=admin.headers, params={"q": q})

    assert_problem(response, 422, "validation_error")


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        ("example.net", ["bob@example.org", "zq@example.net"]),
        ("zelda", ["zq@example.net"]),
        ("quux", ["zq@example.net"]),
        ("net zelda", []),
        ("netzelda", []),
        ("zeldaquux", []),
        ("zelda quux", []),
        ("bob smith", ["bob@example.org"]),
    ],
)
async def test_q_matches_within_one_field_only(
    client: httpx.AsyncClient, admin: Account, q: str, expected: list[str]
) -> None:
    await register(client, email="zq@example.net", first_name="Zelda", last_name="Quux")
    await register(client, email="bob@example.org", first_name="Bob Smith", last_name="example.net")

    assert await emails(client, admin, q=q, sort="email") == expected


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        ("ALICE@EXAMPLE", ["alice@example.com"]),
        ("smit", ["alice@example.com"]),
        ("émile", ["zed@example.com"]),
        ("ÉMILE", ["zed@example.com"]),
        ("ZOL", ["zed@example.com"]),
        ("%", ["pct@example.com"]),
        ("_", ["under@example.com"]),
        ("'", ["obrien@example.com"]),
        ("a%e", []),
        ("a_i", []),
        ("\\", []),
        ('"', []),
    ],
)
async def test_q_matches_case_insensitive_literal_substrings(
    client: httpx.AsyncClient, admin: Account, q: str, expected: list[str]
) -> None:
    for email, first, last in [
        ("alice@example.com", "Alice", "Smith"),
        ("zed@example.com", "Émile", "Zola"),
        ("pct@example.com", "Perry", "Hundred%"),
        ("under@example.com", "Under_score", "Jones"),
        ("obrien@example.com", "Pat", "O'Brien"),
    ]:
        await register(client, email=email, first_name=first, last_name=last)

    assert await emails(client, admin, q=q) == expected


async def test_q_of_100_characters_is_accepted(client: httpx.AsyncClient, admin: Account) -> None:
    assert await emails(client, admin, q="x" * 100) == []


@IN_THE_MODULE_LOOP
@pytest.mark.parametrize(
    "params",
    [{"q": "x" * 101}, {"q": "nul\x00"}, {"is_active": "maybe"}],
    ids=["long-q", "nul-q", "bad-is_active"],
)
async def test_invalid_filter_returns_422(shared_app: SharedApp, params: dict[str, str]) -> None:
    client, admin = shared_app.client, shared_app.admin
    response = await client.get("/api/v1/users", headers=admin.headers, params=params)

    assert_problem(response, 422, "validation_error")


async def test_is_active_true_lists_only_active_users(
    client: httpx.AsyncClient, admin: Account
) -> None:
    amy, bob, cid = await register_all(client, "amy", "bob", "cid")
    await client.post(f"/api/v1/users/{bob.id}/deactivate", headers=admin.headers)

    found = await emails(client, admin, is_active="true", sort="email")

    assert found == [amy.email, cid.email, admin.email]


async def test_is_active_false_lists_only_deactivated_users(
    client: httpx.AsyncClient, admin: Account
) -> None:
    _, bob, _ = await register_all(client, "amy", "bob", "cid")
    await client.post(f"/api/v1/users/{bob.id}/deactivate", headers=admin.headers)

    body = await page(client, admin, is_active="false")

    assert [item["id"] for item in body["items"]] == [bob.id]
    assert body["items"][0]["is_active"] is False


async def test_filters_combine_with_include_total(
    client: httpx.AsyncClient, admin: Account
) -> None:
    _, bob, cid, _ = await register_all(client, "amy", "bob", "cid", "cidra")
    for account in (bob, cid):
        await client.post(f"/api/v1/users/{account.id}/deactivate", headers=admin.headers)

    body = await page(client, admin, is_active="false", q="CID", include_total="true")

    assert [item["id"] for item in body["items"]] == [cid.id]
    assert body["total"] == 1


async def test_include_total_counts_all_matching_users_not_just_the_page(
    client: httpx.AsyncClient, admin: Account
) -> None:
    await register_all(client, "amy", "bob", "cid", "dan", "eve")
    await register(client, email="zed@example.com", last_name="Other")

    body = await page(client, admin, limit=2, q="lovelace", include_total="true")

    assert len(body["items"]) == 2
    assert body["total"] == 6


@pytest.mark.parametrize("params", [{}, {"include_total": "false"}])
async def test_total_is_absent_unless_asked(
    client: httpx.AsyncClient, admin: Account, params: dict[str, str]
) -> None:
    body = await page(client, admin, **params)

    assert set(body) == {"items", "next_cursor"}


async def test_q_matches_emails_and_names_by_full_case_folding(
    client: httpx.AsyncClient, admin: Account
) -> None:
    await register(client, email="Straße@example.com", first_name="ǅemal", last_name="Çelik")

    by_sharp_s = await client.get("/api/v1/users", headers=admin.headers, params={"q": "STRASSE"})
    by_digraph = await client.get("/api/v1/users", headers=admin.headers, params={"q": "ǆemal"})
    by_cedilla = await client.get("/api/v1/users", headers=admin.headers, params={"q": "ÇELI"})

    for response in (by_sharp_s, by_digraph, by_cedilla):
        assert [item["email"] for item in response.json()["items"]] == ["strasse@example.com"]
