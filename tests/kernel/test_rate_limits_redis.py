"""RATE_LIMIT_PER_IP counted in Redis when REDIS_URL is set: the real Redis at
127.0.0.1:6379 (USERAPI_TEST_REDIS), shared by every app and process that uses it.

Other tests and workers share that Redis: each test counts for addresses of its own
(random ones), and the windows are a minute, so the keys expire soon after.
"""

import asyncio
import logging
import os
import random
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from redis.asyncio import Redis
from redis.exceptions import RedisError

from kernel.settings import SettingsError, load_settings
from tests.conftest import make_settings
from tests.factories import DEFAULT_PASSWORD, assert_problem, client_from, serving
from tests.servers import free_port, running_server

REDIS_URL = os.environ.get("USERAPI_TEST_REDIS", "redis://127.0.0.1:6379/0")
LOGIN = "/api/v1/auth/login"


async def _ping(url: str) -> None:
    client = Redis.from_url(url, socket_connect_timeout=5)
    try:
        await client.ping()
    finally:
        await client.aclose()


@pytest.fixture(scope="session")
def redis_url() -> str:
    try:
        asyncio.run(_ping(REDIS_URL))
    except (RedisError, OSError) as error:
        message = f"Redis at {REDIS_URL} is unreachable: {error}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)  # under CI a missing Redis fails the run
        pytest.skip(message)
    return REDIS_URL


def random_loopback() -> str:
    """An address of 127.0.0.0/8 nobody else counts for: the test can also bind it."""
    return f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.{random.randint(1, 254)}"


def random_documentation_ip() -> str:
    return f"2001:db8:{uuid.uuid4().hex[:4]}:{uuid.uuid4().hex[:4]}::1"


@asynccontextmanager
async def app_counting_in(
    database_url: str, data_dir: Path, redis_url: str, rate: str, **overrides: Any
) -> AsyncIterator[FastAPI]:
    settings = make_settings(
        database_url, data_dir, redis_url=redis_url, rate_limit_per_ip=rate, **overrides
    )
    async with serving(settings) as (app, _):
        yield app


def unknown_login() -> dict[str, str]:
    return {"email": f"nobody-{uuid.uuid4().hex[:8]}@example.com", "password": DEFAULT_PASSWORD}


async def test_the_request_past_the_limit_gets_429_and_another_address_is_unaffected(
    database_url: str, tmp_path: Path, redis_url: str
) -> None:
    attacker_ip, other_ip = random_documentation_ip(), random_documentation_ip()
    async with (
        app_counting_in(database_url, tmp_path, redis_url, "2/minute") as app,
        client_from(app, attacker_ip) as attacker,
        client_from(app, other_ip) as other,
    ):
        within = [await attacker.post(LOGIN, json=unknown_login()) for _ in range(2)]
        past = await attacker.post(LOGIN, json=unknown_login())
        neighbours = await other.post(LOGIN, json=unknown_login())

    assert [response.status_code for response in within] == [401, 401]
    assert_problem(past, 429, "too_many_requests")
    assert 1 <= int(past.headers["retry-after"]) <= 60
    assert_problem(neighbours, 401, "invalid_credentials")


async def test_apps_on_redis_share_the_count_and_the_database_holds_none_of_it(
    database_url: str, tmp_path: Path, redis_url: str
) -> None:
    ip = random_documentation_ip()
    async with (
        app_counting_in(database_url, tmp_path, redis_url, "2/minute") as first_app,
        app_counting_in(database_url, tmp_path, redis_url, "2/minute") as second_app,
        app_counting_in(database_url, tmp_path, "", "2/minute") as database_app,
        client_from(first_app, ip) as first,
        client_from(second_app, ip) as second,
        client_from(database_app, ip) as counted_in_the_database,
    ):
        within = [await client.post(LOGIN, json=unknown_login()) for client in (first, second)]
        past = await first.post(LOGIN, json=unknown_login())
        # Same database, same address, but counting there: it has seen no hit yet.
        apart = await counted_in_the_database.post(LOGIN, json=unknown_login())

    assert [response.status_code for response in within] == [401, 401]
    assert_problem(past, 429, "too_many_requests")
    assert_problem(apart, 401, "invalid_credentials")


async def test_a_server_process_and_an_app_share_the_count_through_redis(
    database_url: str, tmp_path: Path, redis_url: str
) -> None:
    ip = random_loopback()  # the test connects to the server from this address
    env = {"REDIS_URL": redis_url, "RATE_LIMIT_PER_IP": "3/minute"}
    async with (
        running_server(database_url, tmp_path, env=env) as server,
        httpx.AsyncClient(
            base_url=server.base_url,
            timeout=30,
            transport=httpx.AsyncHTTPTransport(local_address=ip),
        ) as over_tcp,
        app_counting_in(database_url, tmp_path, redis_url, "3/minute") as app,
        client_from(app, ip) as in_process,
    ):
        within = [
            await client.post(LOGIN, json=unknown_login())
            for client in (over_tcp, in_process, over_tcp)
        ]
        past_in_process = await in_process.post(LOGIN, json=unknown_login())
        past_over_tcp = await over_tcp.post(LOGIN, json=unknown_login())

    assert [response.status_code for response in within] == [401] * 3
    assert_problem(past_in_process, 429, "too_many_requests")
    assert_problem(past_over_tcp, 429, "too_many_requests")


async def test_an_unreachable_redis_lets_requests_through_and_is_logged_once(
    database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="userapi.rate_limits")
    nowhere = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    async with (
        app_counting_in(database_url, tmp_path, nowhere, "1/minute") as app,
        client_from(app, random_documentation_ip()) as client,
    ):
        answers = [await client.post(LOGIN, json=unknown_login()) for _ in range(3)]

    assert [response.status_code for response in answers] == [401] * 3
    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 1, warnings
    assert "redis unreachable" in warnings[0]


@pytest.mark.parametrize("value", ["http://127.0.0.1:6379", "127.0.0.1:6379"])
def test_a_bad_redis_url_stops_start_up_in_one_line(value: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(redis_url=value)

    message = str(caught.value)
    assert len(message.splitlines()) == 1
    assert "REDIS_URL" in message
    assert value not in message  # it may carry a password
