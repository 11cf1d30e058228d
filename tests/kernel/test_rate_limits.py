"""RATE_LIMIT_PER_IP (API.md, "Edge limits"): register, login, refresh and the email routes
share one budget per client IP, counted in the database so that every app and process on
it shares the count; past it, 429 too_many_requests with Retry-After, before any argon2.
"""

import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from kernel.settings import Settings, SettingsError, load_settings
from tests.conftest import make_settings
from tests.factories import DEFAULT_PASSWORD, assert_problem, client_from, make_user, serving
from tests.servers import running_server

ATTACKER = "198.51.100.7"
NEIGHBOUR = "203.0.113.20"


@asynccontextmanager
async def app_with_clients(
    settings: Settings, *ips: str
) -> AsyncIterator[tuple[FastAPI, list[httpx.AsyncClient]]]:
    """A fresh app, and one client per address in `ips`."""
    async with serving(settings) as (app, _), AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(client_from(app, ip)) for ip in ips]
        yield app, clients


def limited(database_url: str, data_dir: Path, rate: str, **overrides: Any) -> Settings:
    return make_settings(database_url, data_dir, rate_limit_per_ip=rate, **overrides)


def unknown_login() -> dict[str, str]:
    return {"email": f"nobody-{uuid.uuid4().hex[:8]}@example.com", "password": DEFAULT_PASSWORD}


def assert_rate_limited(response: httpx.Response, *, window_seconds: int) -> None:
    assert_problem(response, 429, "too_many_requests")
    assert 1 <= int(response.headers["retry-after"]) <= window_seconds


async def test_the_request_past_the_limit_gets_429_and_another_address_is_unaffected(
    database_url: str, tmp_path: Path
) -> None:
    settings = limited(database_url, tmp_path, "3/minute")
    async with app_with_clients(settings, ATTACKER, NEIGHBOUR) as (_, (attacker, other)):
        within = [await attacker.post("/api/v1/auth/login", json=unknown_login()) for _ in range(3)]
        past = await attacker.post("/api/v1/auth/login", json=unknown_login())
        neighbours = await other.post("/api/v1/auth/login", json=unknown_login())

    assert [response.status_code for response in within] == [401, 401, 401]
    assert_rate_limited(past, window_seconds=60)
    assert_problem(neighbours, 401, "invalid_credentials")


# Each route anyone may call with a password, token or address; bodies need not be valid:
# every request counts, a 422 too.
LIMITED_ROUTES = [
    ("/api/v1/auth/register", {"email": "x@example.com"}),
    ("/api/v1/auth/login", {"email": "x@example.com", "password": DEFAULT_PASSWORD}),
    ("/api/v1/auth/refresh", {"refresh_token": "not-a-token"}),
    ("/api/v1/auth/password-reset", {"email": "x@example.com"}),
    ("/api/v1/auth/password-reset/confirm", {"token": "x", "new_password": DEFAULT_PASSWORD}),
    ("/api/v1/auth/verify-email", {"token": "x"}),
]


@pytest.mark.parametrize(("path", "body"), LIMITED_ROUTES)
async def test_each_limited_route_answers_429_past_the_limit(
    database_url: str, tmp_path: Path, path: str, body: dict[str, str]
) -> None:
    settings = limited(database_url, tmp_path, "1/hour")
    async with app_with_clients(settings, ATTACKER) as (_, (attacker,)):
        first = await attacker.post(path, json=body)
        second = await attacker.post(path, json=body)

    assert first.status_code != 429, first.text
    assert_rate_limited(second, window_seconds=3600)


async def test_asking_for_a_verification_mail_counts_against_the_limit(
    database_url: str, tmp_path: Path
) -> None:
    # Two requests per address: the account is made from another address (register and
    # login); the per-mail limit is out of the way, so a 429 here is the per-IP limit.
    settings = limited(database_url, tmp_path, "2/hour", mail_send_limit=100)
    async with app_with_clients(settings, NEIGHBOUR, ATTACKER) as (_, (setup, caller)):
        account = await make_user(setup)
        path = "/api/v1/users/me/verification-email"
        answers = [await caller.post(path, headers=account.headers) for _ in range(3)]

    assert [response.status_code for response in answers[:2]] == [202, 202]
    assert_rate_limited(answers[2], window_seconds=3600)


async def test_the_routes_share_one_budget_per_address(database_url: str, tmp_path: Path) -> None:
    settings = limited(database_url, tmp_path, "2/minute")
    async with app_with_clients(settings, ATTACKER) as (_, (attacker,)):
        await attacker.post("/api/v1/auth/login", json=unknown_login())
        await attacker.post("/api/v1/auth/password-reset", json={"email": "x@example.com"})
        register = await attacker.post("/api/v1/auth/register", json={"email": "x"})

    assert_rate_limited(register, window_seconds=60)


async def test_other_routes_are_not_limited(database_url: str, tmp_path: Path) -> None:
    # The address spends its budget on register and login, then keeps reading.
    settings = limited(database_url, tmp_path, "2/hour")
    async with app_with_clients(settings, NEIGHBOUR) as (_, (caller,)):
        account = await make_user(caller)
        spent = await caller.post("/api/v1/auth/login", json=unknown_login())
        reads = [await caller.get("/api/v1/users/me", headers=account.headers) for _ in range(3)]

    assert_rate_limited(spent, window_seconds=3600)
    assert [response.status_code for response in reads] == [200, 200, 200]


async def test_the_limit_answers_before_any_password_hashing(
    database_url: str, tmp_path: Path
) -> None:
    # The one hashing slot is held: a login that reached argon2 would wait for it and get
    # 503 server_busy. A login past the limit gets its 429 without waiting for a slot.
    settings = limited(database_url, tmp_path, "1/hour", hash_concurrency=1, hash_wait_seconds=0.2)
    async with (
        app_with_clients(settings, ATTACKER) as (app, (attacker,)),
        app.state.hashing.slot(),
    ):
        within = await attacker.post("/api/v1/auth/login", json=unknown_login())
        past = await attacker.post("/api/v1/auth/login", json=unknown_login())

    assert_problem(within, 503, "server_busy")
    assert_rate_limited(past, window_seconds=3600)


async def test_ipv6_addresses_of_one_64_share_a_budget(database_url: str, tmp_path: Path) -> None:
    settings = limited(database_url, tmp_path, "1/hour")
    addresses = ("2001:db8:1:2::10", "2001:db8:1:2:ffff::99", "2001:db8:1:3::10")
    async with app_with_clients(settings, *addresses) as (_, (first, same_64, next_64)):
        await first.post("/api/v1/auth/login", json=unknown_login())
        neighbour = await same_64.post("/api/v1/auth/login", json=unknown_login())
        elsewhere = await next_64.post("/api/v1/auth/login", json=unknown_login())

    assert_rate_limited(neighbour, window_seconds=3600)
    assert_problem(elsewhere, 401, "invalid_credentials")


async def test_the_mail_limit_per_ip_counts_an_ipv6_64_as_one_client_too(
    database_url: str, tmp_path: Path
) -> None:
    settings = make_settings(database_url, tmp_path, mail_send_limit_per_ip=1)
    reset = "/api/v1/auth/password-reset"
    addresses = ("2001:db8:5:6::1", "2001:db8:5:6::2", "2001:db8:5:7::1")
    async with app_with_clients(settings, *addresses) as (_, (first, same_64, next_64)):
        sent = await first.post(reset, json={"email": "a@example.com"})
        neighbour = await same_64.post(reset, json={"email": "b@example.com"})
        elsewhere = await next_64.post(reset, json={"email": "c@example.com"})

    assert sent.status_code == elsewhere.status_code == 202
    assert_problem(neighbour, 429, "too_many_requests")


async def test_two_apps_on_one_database_share_the_count(database_url: str, tmp_path: Path) -> None:
    settings = limited(database_url, tmp_path, "4/minute")
    async with (
        app_with_clients(settings, ATTACKER) as (_, (first,)),
        app_with_clients(settings, ATTACKER) as (_, (second,)),
    ):
        within = [
            await client.post("/api/v1/auth/login", json=unknown_login())
            for client in (first, second, first, second)
        ]
        past = await first.post("/api/v1/auth/login", json=unknown_login())

    assert [response.status_code for response in within] == [401] * 4
    assert_rate_limited(past, window_seconds=60)


async def test_a_server_process_and_an_app_on_one_database_share_the_count(
    database_url: str, tmp_path: Path
) -> None:
    # The server sees this test's loopback address; so does the app, told so.
    env = {"RATE_LIMIT_PER_IP": "3/minute"}
    settings = limited(database_url, tmp_path, "3/minute")
    async with (
        running_server(database_url, tmp_path, env=env) as server,
        httpx.AsyncClient(base_url=server.base_url, timeout=30) as over_tcp,
        serving(settings) as (app, _),
        client_from(app, "127.0.0.1") as in_process,
    ):
        within = [
            await client.post("/api/v1/auth/login", json=unknown_login())
            for client in (over_tcp, in_process, over_tcp)
        ]
        past_in_process = await in_process.post("/api/v1/auth/login", json=unknown_login())
        past_over_tcp = await over_tcp.post("/api/v1/auth/login", json=unknown_login())

    assert [response.status_code for response in within] == [401] * 3
    assert_rate_limited(past_in_process, window_seconds=60)
    assert_rate_limited(past_over_tcp, window_seconds=60)


@pytest.mark.parametrize(
    "value", ["abc", "60", "0/minute", "60/day", "-1/second", "1000001/hour", "60 per minute"]
)
def test_a_bad_rate_stops_start_up_in_one_line(value: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(rate_limit_per_ip=value)

    message = str(caught.value)
    assert len(message.splitlines()) == 1
    assert "RATE_LIMIT_PER_IP" in message
    assert "N/minute" in message


@pytest.mark.parametrize(
    ("value", "limit", "window"),
    [("60/minute", 60, 60), ("5/second", 5, 1), (" 100 / hour ", 100, 3600)],
)
def test_rates_read_as_requests_per_second_minute_or_hour(
    value: str, limit: int, window: int
) -> None:
    assert load_settings(rate_limit_per_ip=value).rate_limit_per_ip == (limit, window)


def test_the_default_rate_is_60_a_minute() -> None:
    assert load_settings().rate_limit_per_ip == (60, 60)
