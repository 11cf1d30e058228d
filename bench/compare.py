"""Before/after, side by side in one run: the code of a git revision against this tree.

    .venv/bin/python bench/compare.py main [--path /api/v1/users/me] [--rounds 3]
                                           [--seconds 5] [--users 1000] [--databases ...]

For each database: one seeded database, three servers on CPU 0 (the ceiling, userapi
at REVISION, run from a `git archive` copy, and userapi from this working tree), wrk on
CPU 1 against each in turn, interleaved within each round. Prints each one's median
req/s and p99 and the ratios: what a hot-path change's commit message quotes.
"""

import argparse
import asyncio
import io
import statistics
import subprocess
import sys
import tarfile
import tempfile
from contextlib import AsyncExitStack
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import report, wrk
from bench.endpoints import EMAIL_PATTERN
from bench.run import (
    PROBE_INTERVAL_MS,
    _login,
    add_postgres_argument,
    seeded_database,
    server_env,
)
from bench.seed import PASSWORD, user_email
from bench.servers import REPOSITORY, Server

SERVER_CPUS, LOAD_CPUS = "0", "1"


def _export(revision: str, folder: Path) -> Path:
    archive = subprocess.run(
        ["git", "-C", str(REPOSITORY), "archive", revision],
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    return folder


async def _compare(args: argparse.Namespace, database: str, base: Path, workdir: Path) -> None:
    async with AsyncExitStack() as stack:
        url = await seeded_database(
            database, workdir / "compare.db", args.postgres, args.users, stack
        )
        env = server_env()  # one SECRET_KEY, for both userapi servers on this database
        # The revision's code first on the path; no bytecode written into its copy or ours.
        old_env = env | {
            "PYTHONPATH": f"{base / 'src'}:{base}",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        # One after another: the first to start makes the first signing key, which the
        # others then read, rather than racing it.
        servers = {"ceiling": Server("", workdir, env, cpus=SERVER_CPUS, ceiling=True)}
        stack.callback(servers["ceiling"].stop)
        await servers["ceiling"].wait_ready("/health")
        headers: dict[str, dict[str, str]] = {"ceiling": {}}
        async with httpx.AsyncClient(timeout=60) as client:
            for name, its_env in ((args.revision, old_env), ("this tree", env)):
                servers[name] = Server(url, workdir, its_env, cpus=SERVER_CPUS)
                stack.callback(servers[name].stop)
                await servers[name].wait_ready()
                token = (await _login(client, servers[name].base, user_email(1)))["access_token"]
                headers[name] = {"Authorization": f"Bearer {token}"}
        if args.storm:
            await _storms(args, servers, headers)
            return
        runs: dict[str, list[wrk.Load]] = {name: [] for name in servers}
        cpu_ms: dict[str, list[float]] = {name: [] for name in servers}
        for _ in range(args.rounds):
            for name, server in servers.items():
                path = "/api/v1/users/me" if name == "ceiling" else args.path
                cpu = server.cpu_seconds()
                load = await wrk.run(
                    f"{server.base}{path}",
                    seconds=args.seconds,
                    connections=args.connections,
                    headers=headers[name],
                    cpus=LOAD_CPUS,
                )
                runs[name].append(load)
                cpu_ms[name].append((server.cpu_seconds() - cpu) * 1000 / max(load.requests, 1))
    rates = {
        n: statistics.median(r.requests_per_second for r in loads) for n, loads in runs.items()
    }
    p50s = {n: statistics.median(r.p50_ms for r in loads) for n, loads in runs.items()}
    p99s = {n: statistics.median(r.p99_ms for r in loads) for n, loads in runs.items()}
    errors = {n: sum(r.errors for r in loads) for n, loads in runs.items()}
    costs = {n: statistics.median(values) for n, values in cpu_ms.items()}
    print(f"{database} {args.path}, {args.rounds} rounds x {args.seconds:.0f} s, medians:")
    for name in servers:
        share = rates[name] / rates["ceiling"]
        print(
            f"  {name:>12}: {rates[name]:8.1f} req/s ({share:.1%} of ceiling), "
            f"p50 {p50s[name]:.2f} ms, p99 {p99s[name]:.1f} ms, "
            f"server CPU {costs[name]:.3f} ms/request, "
            f"errors {errors[name]}"
        )
    revision = args.revision
    print(
        f"  this tree / {revision}: {rates['this tree'] / rates[revision]:.2f}x req/s, "
        f"{costs['this tree'] / costs[revision]:.2f}x CPU per request"
    )


async def _storms(
    args: argparse.Namespace, servers: dict[str, Server], headers: dict[str, dict[str, str]]
) -> None:
    """/users/me p99 at ~100 req/s, idle and while --storm clients log in, per server."""
    found: dict[str, dict[str, list[float]]] = {}
    script = wrk.logins(EMAIL_PATTERN, args.users, PASSWORD)
    for _ in range(args.rounds):
        for name, server in servers.items():
            if name == "ceiling":
                continue
            me = f"{server.base}/api/v1/users/me"
            probe = {
                "seconds": args.seconds,
                "connections": 2,
                "headers": headers[name],
                "script": wrk.paced(PROBE_INTERVAL_MS),
                "cpus": LOAD_CPUS,
            }
            idle = await wrk.run(me, **probe)
            during, logins = await asyncio.gather(
                wrk.run(me, **probe),
                wrk.run(
                    f"{server.base}/api/v1/auth/login",
                    seconds=args.seconds,
                    connections=args.storm,
                    script=script,
                    cpus=LOAD_CPUS,
                ),
            )
            runs = found.setdefault(name, {"idle": [], "storm": [], "logins": []})
            runs["idle"].append(idle.p99_ms)
            runs["storm"].append(during.p99_ms)
            runs["logins"].append(logins.requests_per_second)
    print(f"/users/me p99 idle and during {args.storm} clients logging in, medians:")
    for name, runs in found.items():
        idle_p99, storm_p99 = statistics.median(runs["idle"]), statistics.median(runs["storm"])
        print(
            f"  {name:>12}: idle {idle_p99:.1f} ms, storm {storm_p99:.1f} ms "
            f"({storm_p99 / idle_p99:.2f}x), "
            f"{statistics.median(runs['logins']):.2f} logins/s"
        )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("revision")
    parser.add_argument("--path", default="/api/v1/users/me")
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--storm", type=int, default=0, help="N clients logging in instead")
    add_postgres_argument(parser)
    args = parser.parse_args()
    print(f"CPU pressure: {report.cpu_pressure()}")
    with tempfile.TemporaryDirectory() as folder:
        base = _export(args.revision, Path(folder) / "revision")
        for database in args.databases.split(","):
            await _compare(args, database.strip(), base, Path(folder))
    print(f"CPU pressure: {report.cpu_pressure()}")


if __name__ == "__main__":
    asyncio.run(main())
