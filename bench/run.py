"""The userapi benchmark: one command, one run, every ratio taken side by side.

    .venv/bin/python bench/run.py [--users 100000] [--rounds 3] [--seconds 5]
                                  [--databases sqlite,postgresql] [--workers 1,2]

For each database (SQLite in a temporary folder; PostgreSQL in a new database on
--postgres, dropped afterwards): migrate, seed --users users by bulk insert, start
`userapi serve` (argon2 at the production defaults unless ARGON2_* say otherwise) and,
beside it, the ceiling (bench/ceiling.py) under the same uvicorn settings. Load comes
from wrk, the server on CPU 0 and wrk on CPU 1 when one worker serves. Each measurement
is repeated --rounds times, targets interleaved within each round, and the medians are
reported:
- req/s, p50, p99 per endpoint (bench/endpoints.py), /users/me as a share of the ceiling,
  and the server's CPU time per /users/me request;
- p99 of /users/me at a steady low rate, idle and while 8 and 16 clients log in, and the
  login throughput then against argon2-cffi's own on the same core and thread count;
- peak memory during a burst of 200 concurrent logins; unknown-email vs wrong-password
  login medians.
Writes <out>/<date>.json, <out>/<date>.md and a chart, <out>/<date>.png (default
bench/results/, not committed: numbers belong to the machine and moment they were
measured on).
"""

import argparse
import asyncio
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import endpoints, report, wrk
from bench.chart import write_chart
from bench.seed import ADMIN_EMAIL, PASSWORD, seed, user_email
from bench.servers import BIN, Server, pinned, status_kib
from kernel.db import Database
from kernel.migrations import upgrade
from kernel.settings import load_settings

RESULTS = Path(__file__).resolve().parent / "results"
SERVER_CPUS, LOAD_CPUS = "0", "1"
STORM_SIZES = (8, 16)
STORM_WINDOWS = 3  # 1, 2 and 4 times --seconds
PROBE_INTERVAL_MS = 20  # two paced connections: about 100 requests/s


async def _postgres_database(admin_dsn: str, stack: AsyncExitStack) -> str:
    name = f"userapi_bench_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    connection = await asyncpg.connect(admin_dsn, timeout=5)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()

    async def drop() -> None:
        connection = await asyncpg.connect(admin_dsn, timeout=5)
        try:
            await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await connection.close()

    stack.push_async_callback(drop)
    return f"{admin_dsn.rsplit('/', 1)[0]}/{name}"


async def _prepared(url: str, users: int) -> None:
    settings = load_settings(database_url=url)
    database = Database(settings)
    try:
        await upgrade(database)
    finally:
        await database.dispose()
    await seed(settings, users)


async def _login(client: httpx.AsyncClient, base: str, email: str) -> dict[str, Any]:
    response = await client.post(
        f"{base}/api/v1/auth/login", json={"email": email, "password": PASSWORD}
    )
    if response.status_code != 200:
        raise RuntimeError(f"login as {email}: {response.status_code} {response.text}")
    tokens: dict[str, Any] = response.json()
    return tokens


class Target:
    """One userapi server on one database, and what its endpoints need."""

    def __init__(self, database: str, server: Server, users: int) -> None:
        self.database, self.server, self.users = database, server, users
        self.user_token = self.admin_token = self.other_id = ""
        self.deep_cursors: dict[str, str] = {}

    async def prepare(self, client: httpx.AsyncClient, depth: int) -> None:
        base = self.server.base
        self.user_token = (await _login(client, base, user_email(1)))["access_token"]
        self.admin_token = (await _login(client, base, ADMIN_EMAIL))["access_token"]
        other = await client.get(
            f"{base}/api/v1/users", params={"limit": 1, "sort": "email"}, headers=self.admin
        )
        self.other_id = other.json()["items"][0]["id"]
        for sort in endpoints.SORTS:
            self.deep_cursors[sort] = await endpoints.cursor_at(
                client, base, self.admin, sort, depth
            )

    @property
    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}

    async def refresh_tokens(self, client: httpx.AsyncClient, count: int) -> list[str]:
        logins = [_login(client, self.server.base, user_email(2 + n)) for n in range(count)]
        return [tokens["refresh_token"] for tokens in await asyncio.gather(*logins)]


async def _argon2_alone(threads: int, seconds: float) -> float:
    command = [str(BIN / "python"), str(Path(__file__).with_name("argon2_alone.py"))]
    process = await asyncio.create_subprocess_exec(
        *pinned(command, SERVER_CPUS), str(threads), str(seconds), stdout=asyncio.subprocess.PIPE
    )
    output, _ = await process.communicate()
    return float(output)


def _probe(target: Target, seconds: float, cpus: str | None) -> Awaitable[wrk.Load]:
    """/users/me at a steady low rate, for `seconds`."""
    return wrk.run(
        f"{target.server.base}/api/v1/users/me",
        seconds=seconds,
        connections=2,
        headers={"Authorization": f"Bearer {target.user_token}"},
        script=wrk.paced(PROBE_INTERVAL_MS),
        cpus=cpus,
    )


async def _storms(target: Target, seconds: float, cpus: str | None, pace_ms: int) -> dict[str, Any]:
    """p99 of /users/me at a steady low rate, idle and during login storms."""
    result: dict[str, Any] = {"idle": (await _probe(target, seconds, cpus)).as_dict()}
    for size in STORM_SIZES:
        result[f"storm_{size}"] = await _storm(target, size, seconds, cpus, pace_ms)
    return result


async def _storm(
    target: Target, size: int, seconds: float, cpus: str | None, pace_ms: int
) -> dict[str, Any]:
    """The probe while `size` clients log in. wrk counts only the logins that complete
    within its window, and in a storm each waits for the hashes queued ahead of it: on
    a loaded machine no login of a one-second window may complete, and 0 logins/s would
    be a wrong number, not a slow one. Such a window measured nothing, so it runs again,
    twice as long, up to STORM_WINDOWS times."""
    script = wrk.logins(endpoints.EMAIL_PATTERN, target.users, PASSWORD)
    window = seconds
    for _ in range(STORM_WINDOWS):
        probed, storm = await asyncio.gather(
            _probe(target, window, cpus),
            wrk.run(
                f"{target.server.base}/api/v1/auth/login",
                seconds=window,
                connections=size,
                script=script,
                cpus=cpus,
                pace_ms=pace_ms,
            ),
        )
        if storm.requests:
            return {"probe": probed.as_dict(), "logins": storm.as_dict(), "seconds": window}
        window *= 2
    raise RuntimeError(
        f"{target.database}: no login of a {size}-client storm completed in {window / 2:g} s"
    )


async def _burst(client: httpx.AsyncClient, target: Target, size: int) -> dict[str, Any]:
    """Peak server memory while `size` logins arrive at once (run before other load)."""
    pid = target.server.process.pid
    before = status_kib(pid, "VmRSS")
    started = time.perf_counter()
    answers = await asyncio.gather(
        *(
            client.post(
                f"{target.server.base}/api/v1/auth/login",
                json={"email": user_email(1 + n % target.users), "password": PASSWORD},
            )
            for n in range(size)
        )
    )
    codes = [answer.status_code for answer in answers]
    return {
        "concurrent_logins": size,
        "status_counts": {str(code): codes.count(code) for code in sorted(set(codes))},
        "duration_s": round(time.perf_counter() - started, 2),
        "rss_before_mib": round(before / 1024, 1),
        "peak_rss_mib": round(status_kib(pid, "VmHWM") / 1024, 1),
    }


async def _login_timing(client: httpx.AsyncClient, target: Target, rounds: int) -> dict[str, Any]:
    """Unknown email vs wrong password, interleaved so machine noise hits both alike;
    a different seeded user each round, so no guess budget runs out."""
    unknown: list[float] = []
    wrong: list[float] = []
    for index in range(rounds):
        email = user_email(1 + index % target.users)
        for bucket, address in ((unknown, f"nobody-{index}-{email}"), (wrong, email)):
            started = time.perf_counter()
            answer = await client.post(
                f"{target.server.base}/api/v1/auth/login",
                json={"email": address, "password": "wrong guess"},
            )
            bucket.append((time.perf_counter() - started) * 1000)
            assert answer.status_code == 401, answer.text
    return {
        "rounds": rounds,
        "unknown_email_median_ms": round(statistics.median(unknown), 2),
        "wrong_password_median_ms": round(statistics.median(wrong), 2),
        "ratio_unknown_to_wrong": round(statistics.median(unknown) / statistics.median(wrong), 3),
    }


def _median_loads(loads: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("requests_per_second", "p50_ms", "p99_ms")
    merged: dict[str, Any] = {
        key: round(statistics.median(load[key] for load in loads), 3) for key in keys
    }
    merged["errors"] = sum(load["errors"] for load in loads)
    merged["requests"] = sum(load["requests"] for load in loads)
    if all("cpu_ms_per_request" in load for load in loads):
        merged["cpu_ms_per_request"] = round(
            statistics.median(load["cpu_ms_per_request"] for load in loads), 4
        )
    return merged


def add_postgres_argument(parser: argparse.ArgumentParser) -> None:
    """--postgres: where scratch databases are made (USERAPI_TEST_POSTGRES by default, as
    the test suite)."""
    parser.add_argument(
        "--postgres",
        default=os.environ.get(
            "USERAPI_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
        ),
        help="a server where a scratch database may be created",
    )


def server_env(log_level: str = "WARNING") -> dict[str, str]:
    """The settings of every benchmarked server (one SECRET_KEY: servers of one run that
    share a database must share it, as it seals their signing key)."""
    return {
        # Production unless told otherwise (the smoke test runs ENV=test with cheap argon2).
        "ENV": os.environ.get("ENV", "production"),
        "MAIL_BACKEND": "log",
        "LOGIN_MAX_FAILURES": "1000",
        # wrk sends everything from one address: the per-IP limit would answer 429s.
        "RATE_LIMIT_PER_IP": "1000000/second",
        # The tokens taken before the rounds must outlast them.
        "ACCESS_TOKEN_TTL_SECONDS": str(24 * 3600),
        "LOG_LEVEL": log_level,
        "SECRET_KEY": secrets.token_urlsafe(48),
    }


async def seeded_database(
    database: str, file: Path, postgres: str, users: int, stack: AsyncExitStack
) -> str:
    """A migrated database seeded with `users` users: SQLite at `file`, or a scratch
    PostgreSQL database on `postgres`, dropped when `stack` closes."""
    if database == "sqlite":
        url = f"sqlite:///{file}"
    else:
        url = await _postgres_database(postgres, stack)
    await _prepared(url, users)
    return url


async def series(args: argparse.Namespace, workers: int, workdir: Path) -> dict[str, Any]:
    """Every measurement with `workers` workers per server."""
    cpus = SERVER_CPUS if workers == 1 else None
    load_cpus = LOAD_CPUS if workers == 1 else None
    env = server_env(args.log_level)
    out: dict[str, Any] = {"workers": workers, "databases": {}}
    async with AsyncExitStack() as stack:
        ceiling = Server("", workdir, env, workers=workers, cpus=cpus, ceiling=True)
        stack.callback(ceiling.stop)
        targets: list[Target] = []
        for database in args.databases:
            file = workdir / f"bench-{workers}.db"
            url = await seeded_database(database, file, args.postgres, args.users, stack)
            server = Server(url, workdir, env, workers=workers, cpus=cpus)
            stack.callback(server.stop)
            targets.append(Target(database, server, args.users))
        await ceiling.wait_ready("/health")
        depth = min(50_000, args.users // 2)
        limits = httpx.Limits(max_connections=args.burst + 10)
        async with httpx.AsyncClient(timeout=120, limits=limits) as client:
            for target in targets:
                await target.server.wait_ready()
                if workers == 1:
                    out["databases"][target.database] = {
                        "burst": await _burst(client, target, args.burst),
                        "login_timing": await _login_timing(client, target, args.timing_rounds),
                    }
                else:
                    out["databases"][target.database] = {}
                await target.prepare(client, depth)
            loads: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(
                lambda: defaultdict(list)
            )
            storms: dict[str, list[dict[str, Any]]] = defaultdict(list)
            argon2: list[float] = []
            for _ in range(args.rounds):
                ceiling_load = await wrk.run(
                    f"{ceiling.base}/api/v1/users/me",
                    seconds=args.seconds,
                    connections=args.connections,
                    cpus=load_cpus,
                    pace_ms=args.pace,
                )
                loads["ceiling"]["GET /users/me"].append(ceiling_load.as_dict())
                for target in targets:
                    for name, measure in endpoints.plan(target, client, args, load_cpus):
                        loads[target.database][name].append(await measure())
                if workers == 1:
                    # The ceiling at the probes' low steady rate: what idle p99 is held to.
                    ceiling_idle = await wrk.run(
                        f"{ceiling.base}/api/v1/users/me",
                        seconds=args.seconds,
                        connections=2,
                        script=wrk.paced(PROBE_INTERVAL_MS),
                        cpus=load_cpus,
                    )
                    loads["ceiling"]["idle"].append(ceiling_idle.as_dict())
                    for target in targets:
                        storms[target.database].append(
                            await _storms(target, args.seconds, load_cpus, args.pace)
                        )
                    slots = load_settings(**{"web_concurrency": workers}).hashing_slots
                    argon2.append(await _argon2_alone(slots, args.seconds))
    out["ceiling"] = _median_loads(loads["ceiling"]["GET /users/me"])
    if loads["ceiling"]["idle"]:
        out["ceiling_idle"] = _median_loads(loads["ceiling"]["idle"])
    for database in args.databases:
        result = out["databases"][database]
        result["endpoints"] = {name: _median_loads(runs) for name, runs in loads[database].items()}
        if storms[database]:
            result["storms"] = report.storm_medians(storms[database])
    if argon2:
        out["argon2_alone_per_second"] = round(statistics.median(argon2), 3)
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="per wrk run")
    parser.add_argument("--connections", type=int, default=32, help="for the read endpoints")
    parser.add_argument(
        "--pace",
        type=int,
        default=0,
        metavar="MS",
        help="each wrk connection waits MS between requests: a smoke run that exercises "
        "every measurement without loading the machine (its numbers mean nothing)",
    )
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--workers", default="1,2", help="one series per worker count")
    parser.add_argument("--burst", type=int, default=200)
    parser.add_argument("--timing-rounds", type=int, default=20)
    parser.add_argument("--log-level", default="WARNING", help="the servers' LOG_LEVEL")
    add_postgres_argument(parser)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    args.databases = [name.strip() for name in args.databases.split(",") if name.strip()]
    if args.users < 2 or args.rounds < 1:
        parser.error("--users must be at least 2 and --rounds at least 1")
    wrk.wrk_command()  # fail before any set-up when wrk is missing
    started = datetime.now(UTC)
    results: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"),
        "machine": report.machine(),
        "command": " ".join(sys.argv),
        "settings": {
            key: getattr(args, key)
            for key in ("users", "rounds", "seconds", "connections", "burst", "log_level")
        },
        "series": [],
    }
    with tempfile.TemporaryDirectory() as folder:
        for workers in (int(count) for count in args.workers.split(",")):
            results["series"].append(await series(args, workers, Path(folder)))
    results["machine"]["cpu_pressure_after"] = report.cpu_pressure()
    args.out.mkdir(parents=True, exist_ok=True)
    stem = started.strftime("%Y-%m-%dT%H%M%S")
    (args.out / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
    markdown = report.markdown(results)
    (args.out / f"{stem}.md").write_text(markdown)
    write_chart(results, args.out / f"{stem}.png")
    print(markdown)


if __name__ == "__main__":
    asyncio.run(main())
