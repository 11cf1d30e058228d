"""What is measured on each userapi server: the endpoints, and how each is driven by wrk."""

import argparse
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

import httpx

from bench import wrk
from bench.seed import PASSWORD

if TYPE_CHECKING:
    from bench.run import Target

SORTS = ("created_at", "-created_at", "email", "-email")
EMAIL_PATTERN = "user-%d@bench.example"
HASHING_CONNECTIONS = 8  # login and register hash: a few clients keep the core busy
REFRESH_CHAINS = 4
PAGE = 100  # the largest page: fewest requests to walk to depth


async def cursor_at(
    client: httpx.AsyncClient, base: str, headers: dict[str, str], sort: str, depth: int
) -> str:
    """The cursor of the page that starts `depth` users into `sort` (walked page by page)."""
    cursor, size = "", min(PAGE, max(1, depth))
    for _ in range(depth // size):
        params: dict[str, str | int] = {
            "limit": size,
            "sort": sort,
            **({"cursor": cursor} if cursor else {}),
        }
        page = (await client.get(f"{base}/api/v1/users", params=params, headers=headers)).json()
        if not page["next_cursor"]:
            break
        cursor = page["next_cursor"]
    return cursor


Measure = Callable[[], Awaitable[dict[str, Any]]]


def plan(
    target: "Target", client: httpx.AsyncClient, args: argparse.Namespace, cpus: str | None
) -> Iterator[tuple[str, Measure]]:
    """(name, measurement) for every endpoint, in the order they run within a round."""
    base, seconds, connections = target.server.base, args.seconds, args.connections
    pace_ms: int = args.pace
    user = {"Authorization": f"Bearer {target.user_token}"}

    def get(path: str, headers: dict[str, str]) -> Measure:
        async def measure() -> dict[str, Any]:
            cpu = target.server.cpu_seconds()
            load = await wrk.run(
                f"{base}{path}",
                seconds=seconds,
                connections=connections,
                headers=headers,
                cpus=cpus,
                pace_ms=pace_ms,
            )
            spent = target.server.cpu_seconds() - cpu
            return load.as_dict() | {
                "cpu_ms_per_request": round(spent * 1000 / max(load.requests, 1), 4)
            }

        return measure

    def scripted(script: Callable[[], str], *, clients: int, threads: int = 1) -> Measure:
        async def measure() -> dict[str, Any]:
            load = await wrk.run(
                base,
                seconds=seconds,
                connections=clients,
                threads=threads,
                script=script(),
                cpus=cpus,
                pace_ms=pace_ms,
            )
            return load.as_dict()

        return measure

    async def refresh() -> dict[str, Any]:
        tokens = await target.refresh_tokens(client, REFRESH_CHAINS)
        load = await wrk.run(
            base,
            seconds=seconds,
            connections=len(tokens),
            threads=len(tokens),
            script=wrk.refresh_chains(tokens),
            cpus=cpus,
            pace_ms=pace_ms,
        )
        return load.as_dict()

    yield "GET /users/me", get("/api/v1/users/me", user)
    yield "GET /users/{id}", get(f"/api/v1/users/{target.other_id}", user)
    for sort in SORTS:
        yield f"GET /users sort={sort}", get(f"/api/v1/users?sort={sort}", target.admin)
        cursor = target.deep_cursors[sort]
        yield (
            f"GET /users sort={sort} deep",
            get(f"/api/v1/users?sort={sort}&cursor={cursor}", target.admin),
        )
    yield "GET /users?q=grace", get("/api/v1/users?q=grace", target.admin)
    yield (
        "PATCH /users/me",
        scripted(
            lambda: wrk.patch_json("/api/v1/users/me", '{"bio":"benchmarked"}', user),
            clients=connections,
        ),
    )
    yield (
        "POST /auth/login",
        scripted(
            lambda: wrk.logins(EMAIL_PATTERN, target.users, PASSWORD), clients=HASHING_CONNECTIONS
        ),
    )
    yield "POST /auth/refresh", refresh
    yield (
        "POST /auth/register",
        scripted(
            lambda: wrk.registrations(uuid.uuid4().hex[:8], PASSWORD), clients=HASHING_CONNECTIONS
        ),
    )
