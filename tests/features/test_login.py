"""POST /api/v1/auth/login, through HTTP on SQLite and PostgreSQL (API.md, "login")."""

import asyncio
import base64
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import select

from kernel.db import Database
from kernel.settings import Settings
from kernel.users import User
from tests.conftest import make_settings
from tests.factories import Account, assert_problem, deactivate_self, register, serving
from tests.waiting import poll

LOGIN = "/api/v1/auth/login"
WRONG_PASSWORD = "definitely not the password"
TOKEN_FIELDS = {"access_token", "token_type", "expires_in", "refresh_token"}


async def attempt(client: httpx.AsyncClient, email: str, password: str) -> httpx.Response:
    return await client.post(LOGIN, json={"email": email, "password": password})


async def fail(client: httpx.AsyncClient, email: str, times: int) -> None:
    for _ in range(times):
        assert_problem(await attempt(client, email, WRONG_PASSWORD), 401, "invalid_credentials")


def assert_token_pair(response: httpx.Response, *, expires_in: int = 900) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    tokens: dict[str, Any] = response.json()
    assert set(tokens) == TOKEN_FIELDS
    assert tokens["token_type"] == "bearer"
    assert tokens["expires_in"] == expires_in
    assert tokens["access_token"]
    assert tokens["refresh_token"]
    return tokens


def assert_locked(response: httpx.Response) -> None:
    assert_problem(response, 429, "too_many_attempts")
    assert int(response.headers["retry-after"]) > 0


async def test_login_with_json_returns_a_token_pair(client: httpx.AsyncClient) -> None:
    account = await register(client)

    response = await attempt(client, account.email, account.password)

    assert_token_pair(response)


async def test_login_with_the_oauth2_password_form_returns_a_token_pair(
    client: httpx.AsyncClient,
) -> None:
    account = await register(client)

    response = await client.post(
        LOGIN, data={"username": account.email, "password": account.password}
    )

    assert_token_pair(response)


async def test_login_access_token_works_on_users_me(client: httpx.AsyncClient) -> None:
    account = await register(client)
    tokens = assert_token_pair(await attempt(client, account.email, account.password))

    me = await client.get(
        "/api/v1/users/me", headers={"Authorization": f"Bearer {tokens['access_token']}"}
    )

    assert me.status_code == 200, me.text
    assert me.json()["id"] == account.id


async def test_login_ignores_a_basic_authorization_header(client: httpx.AsyncClient) -> None:
    account = await register(client)
    basic = base64.b64encode(b"swagger-client:swagger-secret").decode()

    response = await client.post(
        LOGIN,
        data={"username": account.email, "password": account.password},
        headers={"Authorization": f"Basic {basic}"},
    )

    assert_token_pair(response)


async def test_login_email_is_case_insensitive_and_trimmed(client: httpx.AsyncClient) -> None:
    account = await register(client)

    response = await attempt(client, f"  {account.email.upper()} ", account.password)

    assert_token_pair(response)


async def test_wrong_password_returns_401_invalid_credentials(client: httpx.AsyncClient) -> None:
    account = await register(client)

    response = await attempt(client, account.email, WRONG_PASSWORD)

    assert_problem(response, 401, "invalid_credentials")


async def test_unknown_email_returns_401_invalid_credentials(client: httpx.AsyncClient) -> None:
    response = await attempt(client, "nobody-here@example.com", WRONG_PASSWORD)

    assert_problem(response, 401, "invalid_credentials")


async def test_unknown_email_and_wrong_password_get_identical_responses(
    client: httpx.AsyncClient,
) -> None:
    account = await register(client)

    wrong_password = await attempt(client, account.email, WRONG_PASSWORD)
    unknown_email = await attempt(client, "nobody-here@example.com", WRONG_PASSWORD)

    assert wrong_password.status_code == unknown_email.status_code == 401
    assert wrong_password.json() == unknown_email.json()
    varying = {"x-request-id", "content-length"}
    assert set(wrong_password.headers) - varying == set(unknown_email.headers) - varying


async def test_deactivated_account_with_right_password_returns_403_account_inactive(
    client: httpx.AsyncClient, user: Account
) -> None:
    await deactivate_self(client, user)

    response = await attempt(client, user.email, user.password)

    assert_problem(response, 403, "account_inactive")


async def test_deactivated_account_with_wrong_password_returns_401_invalid_credentials(
    client: httpx.AsyncClient, user: Account
) -> None:
    await deactivate_self(client, user)

    response = await attempt(client, user.email, WRONG_PASSWORD)

    assert_problem(response, 401, "invalid_credentials")


async def test_too_many_failures_return_429_even_with_the_right_password(
    client: httpx.AsyncClient,
) -> None:
    account = await register(client)
    await fail(client, account.email, 5)

    response = await attempt(client, account.email, account.password)

    assert_locked(response)


async def test_too_many_failures_for_an_unknown_email_return_429(
    client: httpx.AsyncClient,
) -> None:
    await fail(client, "nobody-here@example.com", 5)

    response = await attempt(client, "nobody-here@example.com", WRONG_PASSWORD)

    assert_locked(response)


async def test_failures_are_counted_per_normalised_email(client: httpx.AsyncClient) -> None:
    account = await register(client)
    for variant in (account.email.upper(), f" {account.email} ", account.email.title()):
        assert_problem(await attempt(client, variant, WRONG_PASSWORD), 401, "invalid_credentials")
    await fail(client, account.email, 2)

    response = await attempt(client, account.email, account.password)

    assert_locked(response)


async def test_lockout_of_one_email_does_not_affect_another(client: httpx.AsyncClient) -> None:
    locked, other = await register(client), await register(client)
    await fail(client, locked.email, 5)

    response = await attempt(client, other.email, other.password)

    assert_token_pair(response)


async def test_successful_login_resets_the_failure_count(client: httpx.AsyncClient) -> None:
    account = await register(client)
    await fail(client, account.email, 4)
    assert_token_pair(await attempt(client, account.email, account.password))
    await fail(client, account.email, 4)

    response = await attempt(client, account.email, account.password)

    assert_token_pair(response)


async def test_a_burst_of_concurrent_guesses_gets_at_most_five_checked(
    client: httpx.AsyncClient,
) -> None:
    account = await register(client)

    responses = await asyncio.gather(
        *(attempt(client, account.email, WRONG_PASSWORD) for _ in range(20))
    )

    statuses = [response.status_code for response in responses]
    assert statuses.count(401) <= 5
    assert statuses.count(401) + statuses.count(429) == 20, statuses
    for response in responses:
        if response.status_code == 429:
            assert_locked(response)


async def test_login_works_again_once_the_lockout_window_passes(
    database_url: str, tmp_path: Path
) -> None:
    window = 1
    settings = make_settings(database_url, tmp_path, login_lockout_seconds=window)
    async with serving(settings) as (_, http):
        account = await register(http)
        await fail(http, account.email, 4)
        limit_reached = time.time()  # the lockout window starts at the fifth failure
        await fail(http, account.email, 1)

        async def right_password() -> tuple[httpx.Response, float]:
            response = await attempt(http, account.email, account.password)
            return response, time.time()

        tries = await poll(
            right_password,
            until=lambda answer: answer[0].status_code != 429,
            within=10 * window,
            what="login stops answering 429 once the lockout window has passed",
        )

    *locked, (response, unlocked) = tries
    assert locked, "the right password was refused while the account was locked out"
    for refused, _ in locked:
        assert_locked(refused)
    assert_token_pair(response)
    # Same clock as the server's: it let the login in no sooner than a window after.
    assert unlocked - limit_reached >= window


async def test_failure_count_holds_across_a_restart(settings: Settings) -> None:
    async with serving(settings) as (_, first):
        account = await register(first)
        await fail(first, account.email, 5)

    async with serving(settings) as (_, restarted):
        response = await attempt(restarted, account.email, account.password)

    assert_locked(response)


async def test_login_rehashes_a_password_hashed_with_weaker_parameters(
    database_url: str, tmp_path: Path
) -> None:
    weak = make_settings(database_url, tmp_path)
    strong = make_settings(database_url, tmp_path, argon2_time_cost=2, argon2_memory_kib=16)
    async with serving(weak) as (_, weak_client):
        account = await register(weak_client)

    async with serving(strong) as (application, strong_client):
        first = await attempt(strong_client, account.email, account.password)
        second = await attempt(strong_client, account.email, account.password)
        database: Database = application.state.database
        async with database.session(writes=False) as session:
            stored = await session.scalar(
                select(User.password_hash).where(User.email == account.email)
            )

    assert_token_pair(first)
    assert_token_pair(second)
    assert stored is not None
    assert "m=16,t=2," in stored


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        pytest.param(b"[]", "application/json", id="json-array"),
        pytest.param(b'["a@example.com", "pw"]', "application/json", id="json-list"),
        pytest.param(b'"a@example.com"', "application/json", id="json-string"),
        pytest.param(b'{"email": "a@example.com"}', "application/json", id="no-password"),
        pytest.param(b'{"password": "secret-pass"}', "application/json", id="no-email"),
        pytest.param(b'{"email": 5, "password": "pw"}', "application/json", id="email-not-string"),
        pytest.param(
            b"username=a%40example.com", "application/x-www-form-urlencoded", id="form-no-password"
        ),
        pytest.param(b"password=pw", "application/x-www-form-urlencoded", id="form-no-username"),
    ],
)
async def test_login_with_an_invalid_body_returns_422(
    client: httpx.AsyncClient, content: bytes, content_type: str
) -> None:
    response = await client.post(LOGIN, content=content, headers={"Content-Type": content_type})

    assert_problem(response, 422, "validation_error")
