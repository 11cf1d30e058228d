"""GET /api/v1/users/me/export: everything stored about the caller, never a secret."""

from pathlib import Path
from typing import Any

import httpx
import pytest

from kernel.db import metadata
from kernel.settings import Settings
from kernel.slices import load_tables
from tests.conftest import make_settings
from tests.factories import Account, assert_problem, login
from tests.mail import Mailbox, code_in, token_in

EXPORT = "/api/v1/users/me/export"


@pytest.fixture
def settings(database_url: str, tmp_path: Path, mailbox: Mailbox) -> Settings:
    return make_settings(database_url, tmp_path, **mailbox.settings)


async def export(client: httpx.AsyncClient, account: Account) -> dict[str, Any]:
    response = await client.get(EXPORT, headers=account.headers)
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()
    return document


def tables_holding_users_data() -> dict[str, set[str]]:
    """From the metadata, as the issue asks: each table naming a user, and its columns
    that are not marked secret."""
    load_tables()
    found = {}
    for table in metadata.sorted_tables:
        names_a_user = table.name == "users" or any(
            fk.column.table.name == "users" for fk in table.foreign_keys
        )
        if names_a_user:
            found[table.name] = {c.name for c in table.columns if not c.info.get("secret")}
    assert {"users", "sessions", "security_events", "outbox", "email_tokens"} <= set(found)
    return found


async def test_every_column_of_every_table_holding_the_users_data_is_exported(
    client: httpx.AsyncClient, mailbox: Mailbox, user: Account
) -> None:
    await mailbox.wait_for(user.email)  # the verification mail: an outbox row, a token row

    document = await export(client, user)

    expected = tables_holding_users_data()
    assert set(document["tables"]) == set(expected)
    for table, columns in expected.items():
        rows = document["tables"][table]
        assert rows, f"nothing exported from {table}"
        for row in rows:
            assert set(row) == columns, table


async def test_the_export_holds_the_profile_sessions_events_and_mails(
    client: httpx.AsyncClient, mailbox: Mailbox, user: Account
) -> None:
    second = await login(client, Account(id=user.id, email=user.email, password=user.password))
    await mailbox.wait_for(user.email)
    sessions = (await client.get("/api/v1/users/me/sessions", headers=user.headers)).json()

    tables = (await export(client, second))["tables"]

    [profile] = tables["users"]
    assert profile["id"] == user.id
    assert profile["email"] == user.email
    assert {row["id"] for row in tables["sessions"]} == {s["id"] for s in sessions["items"]}
    assert {"registered", "login_succeeded"} <= {row["type"] for row in tables["security_events"]}
    [mail] = tables["outbox"]
    assert (mail["kind"], mail["to_address"]) == ("email_verification", user.email)
    assert [row["purpose"] for row in tables["email_tokens"]] == ["email_verification"]


async def test_the_export_never_holds_a_hash_token_or_secret(
    client: httpx.AsyncClient, mailbox: Mailbox, user: Account
) -> None:
    [mail] = await mailbox.wait_for(user.email)

    response = await client.get(EXPORT, headers=user.headers)

    for secret in (user.password, user.refresh_token, token_in(mail), code_in(mail), "$argon2"):
        assert secret not in response.text
    for name in ("password_hash", "salt", "token_hash", "code_hash", "text_body", "html_body"):
        assert f'"{name}"' not in response.text


async def test_the_export_holds_nothing_of_another_user(
    client: httpx.AsyncClient, user: Account, other_user: Account
) -> None:
    response = await client.get(EXPORT, headers=user.headers)

    assert other_user.email not in response.text
    assert other_user.id not in response.text


async def test_the_export_is_a_download_nobody_caches(
    client: httpx.AsyncClient, user: Account
) -> None:
    response = await client.get(EXPORT, headers=user.headers)

    assert response.headers["content-type"] == "application/json"
    assert response.headers["content-disposition"] == (
        f'attachment; filename="userapi-export-{user.id}.json"'
    )
    assert response.headers["cache-control"] == "no-store"


async def test_the_export_needs_a_token(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get(EXPORT), 401, "not_authenticated")
