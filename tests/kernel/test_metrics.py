"""/metrics: Prometheus text, off unless METRICS_ENABLED, by route template, every worker.

Through the ASGI app on both databases: request counts per route template and status,
the hashing gauges and the 503 count, connections in use, the outbox read from the
database. Through a real `userapi serve --workers 2`: one scrape sums what both workers
counted, and a worker killed and restarted does not count twice.
"""

import asyncio
import os
import re
import signal
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from kernel.db import Database
from tests.conftest import make_settings
from tests.factories import DEFAULT_PASSWORD, assert_problem, make_user, register, serving
from tests.mail import Mailbox
from tests.servers import Server, running_server
from tests.waiting import poll, wait_until

REQUESTS = "userapi_http_request_duration_seconds_count"
METRICS_TOKEN = "scraper-token-0123456789abcdef"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(exposition: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


async def scrape(client: httpx.AsyncClient, url: str = "/metrics", **headers: str) -> Samples:
    response = await client.get(url, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return parse(response.text)


async def test_requests_are_counted_by_route_template_and_status(
    database_url: str, tmp_path: Path
) -> None:
    settings = make_settings(
        database_url, tmp_path, metrics_enabled=True, mail_sender_enabled=False
    )
    async with serving(settings) as (_, client):
        account = await make_user(client)
        for _ in range(3):
            got = await client.get(f"/api/v1/users/{account.id}", headers=account.headers)
            assert got.status_code == 200, got.text
        unknown = await client.get(f"/api/v1/users/{uuid.uuid4()}", headers=account.headers)
        assert_problem(unknown, 404, "user_not_found")
        assert_problem(await client.get(f"/no/such/{account.id}"), 404, "not_found")
        response = await client.get("/metrics")

    samples = parse(response.text)
    route = "/api/v1/users/{user_id}"
    assert value(samples, REQUESTS, method="GET", route=route, status="200") == 3
    assert value(samples, REQUESTS, method="GET", route=route, status="404") == 1
    assert value(samples, REQUESTS, method="POST", route="/api/v1/auth/register", status="201")
    assert value(samples, REQUESTS, method="POST", route="/api/v1/auth/login", status="200")
    assert value(samples, REQUESTS, method="GET", route="unmatched", status="404") == 1
    # Never the path as sent: an id in a label would be one time series per user.
    assert account.id not in response.text
    # Registration queued a verification mail, and no sender runs here.
    assert value(samples, "userapi_outbox_mails", status="pending") == 1
    assert value(samples, "userapi_outbox_mails", status="failed") == 0
    assert value(samples, "userapi_hashing_slots") == settings.hashing_slots
    assert value(samples, "userapi_server_busy_total") == 0


async def test_metrics_are_a_404_unless_enabled(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/metrics"), 404, "not_found")
    assert "/metrics" not in (await client.get("/openapi.json")).text


async def test_with_a_token_only_its_bearer_may_scrape(database_url: str, tmp_path: Path) -> None:
    settings = make_settings(
        database_url, tmp_path, metrics_enabled=True, metrics_token=METRICS_TOKEN
    )
    async with serving(settings) as (_, client):
        assert_problem(await client.get("/metrics"), 401, "not_authenticated")
        wrong = {"Authorization": "Bearer not-the-token"}
        assert_problem(await client.get("/metrics", headers=wrong), 401, "invalid_token")
        samples = await scrape(client, Authorization=f"Bearer {METRICS_TOKEN}")
    assert value(samples, REQUESTS, method="GET", route="/metrics", status="401") == 2


async def test_hashing_slots_busy_waiting_and_503s_are_counted(
    database_url: str, tmp_path: Path
) -> None:
    settings = make_settings(
        database_url, tmp_path, metrics_enabled=True, hash_concurrency=1, hash_wait_seconds=3
    )
    async with serving(settings) as (app, client):
        account = await register(client)
        body = {"email": account.email, "password": DEFAULT_PASSWORD}
        # The test holds the one slot, so the login must wait for it, then give up.
        async with app.state.hashing.slot():
            login = asyncio.create_task(client.post("/api/v1/auth/login", json=body))
            seen = await poll(
                lambda: scrape(client),
                until=lambda samples: value(samples, "userapi_hashing_waiting") == 1,
                within=2.5,
                what="the login waits for a hashing slot",
            )
            assert value(seen[-1], "userapi_hashing_slots_busy") == 1
            assert_problem(await login, 503, "server_busy")
        samples = await scrape(client)
    assert value(samples, "userapi_server_busy_total") == 1
    assert value(samples, "userapi_hashing_waiting") == 0
    assert value(samples, "userapi_hashing_slots_busy") == 0


async def test_database_connections_in_use(database_url: str, tmp_path: Path) -> None:
    settings = make_settings(database_url, tmp_path, metrics_enabled=True)

    def in_use(count: int) -> Callable[[Samples], bool]:
        # Polled: a background task (the key refresh) may hold one for a moment too.
        return lambda samples: value(samples, "userapi_database_connections_in_use") == count

    async with serving(settings) as (app, client):
        database: Database = app.state.database
        async with database.session(writes=False) as first, database.session() as second:
            await first.execute(text("SELECT 1"))
            await second.execute(text("SELECT 1"))
            await poll(lambda: scrape(client), until=in_use(2), within=10, what="2 in use")
        await poll(lambda: scrape(client), until=in_use(0), within=10, what="none in use")


async def test_mail_given_up_shows_as_a_failed_attempt_and_a_failed_mail(
    database_url: str, tmp_path: Path, mailbox: Mailbox
) -> None:
    mailbox.refuse_always = "550 5.1.1 no such mailbox"
    settings = make_settings(
        database_url,
        tmp_path,
        metrics_enabled=True,
        mail_permanent_failure_attempts=1,
        **mailbox.settings,
    )
    async with serving(settings) as (_, client):
        await register(client)
        seen = await poll(
            lambda: scrape(client),
            until=lambda samples: value(samples, "userapi_outbox_mails", status="failed") == 1,
            within=30,
            what="the refused mail is given up",
        )
    assert value(seen[-1], "userapi_outbox_mails", status="pending") == 0
    assert value(seen[-1], "userapi_mail_delivery_attempts_total", outcome="failed") == 1
    assert mailbox.refusals == ["550 5.1.1 no such mailbox"]


# --- a real server with two workers ------------------------------------------------------


def workers_started(server: Server) -> list[int]:
    """The process ids of the workers the server started, in order (from its log)."""
    return [int(pid) for pid in re.findall(rb"Started server process \[(\d+)\]", server.log())]


async def count_at(client: httpx.AsyncClient, server: Server, route: str) -> float:
    samples = await scrape(client, f"{server.base_url}/metrics")
    return value(samples, REQUESTS, method="GET", route=route, status="401") or 0


async def test_two_workers_are_summed_and_a_killed_one_is_not_counted_twice(
    database_url: str, tmp_path: Path
) -> None:
    folder = tmp_path / "tmp"  # where `serve` makes its PROMETHEUS_MULTIPROC_DIR
    folder.mkdir()
    env: Mapping[str, str] = {"METRICS_ENABLED": "true", "HASH_CONCURRENCY": "1"}
    route = "/api/v1/users/{user_id}"
    requests = 40
    # A new connection per request: the workers share the listening socket, and each
    # connection goes to whichever worker accepts it first.
    fresh = httpx.Limits(max_keepalive_connections=0)
    async with (
        running_server(
            database_url, tmp_path, env={**env, "TMPDIR": str(folder)}, args=["--workers", "2"]
        ) as server,
        httpx.AsyncClient(timeout=30, limits=fresh) as client,
    ):
        await wait_until(lambda: len(workers_started(server)) == 2, within=60, what="2 workers")
        answers = await asyncio.gather(
            *(client.get(f"{server.base_url}/api/v1/users/{uuid.uuid4()}") for _ in range(requests))
        )
        assert {answer.status_code for answer in answers} == {401}
        # Whichever worker answers the scrape, it reports both workers' requests.
        for _ in range(4):
            assert await count_at(client, server, route) == requests
        samples = await scrape(client, f"{server.base_url}/metrics")
        assert value(samples, "userapi_hashing_slots") == 2  # one per worker, summed
        assert len(os.listdir(next(folder.iterdir()))) > 0

        os.kill(workers_started(server)[0], signal.SIGKILL)
        await wait_until(
            lambda: len(workers_started(server)) == 3,
            within=60,
            what="uvicorn starts a worker in place of the killed one",
        )

        # The new worker's capacity replaces the dead one's; its requests still count.
        async def capacity_and_count() -> tuple[float | None, float | None]:
            samples = await scrape(client, f"{server.base_url}/metrics")
            count = value(samples, REQUESTS, method="GET", route=route, status="401")
            return value(samples, "userapi_hashing_slots"), count

        await poll(
            capacity_and_count,
            until=lambda seen: seen == (2, requests),
            within=60,
            interval=0.2,
            what="the restarted worker counts, the dead one's gauges are gone, its counts stay",
        )

        server.signal(signal.SIGTERM)
        await server.wait_exit()
    assert list(folder.iterdir()) == [], "the metrics folder outlived the server"
