"""Where a hot endpoint's server time goes: py-spy under wrk, summarised per function.

    .venv/bin/python bench/profile.py [--databases sqlite,postgresql] [--users 1000]
                                      [--seconds 10] [--endpoints me,user,list]

For each database: migrate and seed a scratch database (bench/run.py's), start
`userapi serve` on CPU 0 as the benchmark does, drive each endpoint with wrk -t1 -c32 on
CPU 1 while `py-spy record` samples the server, and write
bench/profiles/<endpoint>-<database>.txt: the share of samples whose stack holds each
function (inclusive), then the functions on top of the stack (self). Idle samples (the
loop waiting in select) are left out, so shares are of the time the server worked.
"""

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
from collections import Counter
from contextlib import AsyncExitStack
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import wrk
from bench.run import _login, add_postgres_argument, seeded_database, server_env
from bench.seed import ADMIN_EMAIL, user_email
from bench.servers import BIN, REPOSITORY, Server

PROFILES = Path(__file__).resolve().parent / "profiles"
SERVER_CPUS, LOAD_CPUS = "0", "1"
SAMPLES_PER_SECOND = 250
SHOWN = 60
# Frames of a loop with nothing to do: left out of the shares.
IDLE = ("select (selectors.py", "_run_once (asyncio/base_events.py")


def _summary(raw: Path, header: str) -> str:
    inclusive: Counter[str] = Counter()
    on_top: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if any(idle in frames[-1] for idle in IDLE):
            continue
        samples = int(count)
        total += samples
        for frame in dict.fromkeys(frame.rsplit(":", 1)[0] for frame in frames):
            inclusive[frame] += samples
        on_top[frames[-1].rsplit(":", 1)[0]] += samples
    lines = [header, f"# {total} samples of the server at work", "--- inclusive"]
    lines += [f"{100 * n / total:5.1f}% {frame}" for frame, n in inclusive.most_common(SHOWN)]
    lines += ["--- self"]
    lines += [f"{100 * n / total:5.1f}% {frame}" for frame, n in on_top.most_common(SHOWN // 2)]
    return "\n".join(lines) + "\n"


async def _profile(
    args: argparse.Namespace, database: str, workdir: Path, commit: str, pressure: str
) -> None:
    async with AsyncExitStack() as stack:
        file = workdir / "profile.db"
        url = await seeded_database(database, file, args.postgres, args.users, stack)
        server = Server(url, workdir, server_env(), cpus=SERVER_CPUS)
        stack.callback(server.stop)
        await server.wait_ready()
        async with httpx.AsyncClient(timeout=60) as client:
            user = await _login(client, server.base, user_email(1))
            admin = await _login(client, server.base, ADMIN_EMAIL)
            other = await client.get(
                f"{server.base}/api/v1/users?limit=1",
                headers={"Authorization": f"Bearer {admin['access_token']}"},
            )
        other_id = other.json()["items"][0]["id"]
        paths = {  # name: (path, its template, whose token)
            "me": ("/api/v1/users/me", "/api/v1/users/me", user["access_token"]),
            "user": (f"/api/v1/users/{other_id}", "/api/v1/users/{id}", user["access_token"]),
            "list": ("/api/v1/users", "/api/v1/users", admin["access_token"]),
        }
        for name in args.endpoints.split(","):
            path, template, token = paths[name]
            headers = {"Authorization": f"Bearer {token}"}
            url_ = f"{server.base}{path}"
            await wrk.run(url_, seconds=2, connections=32, headers=headers, cpus=LOAD_CPUS)
            raw = workdir / f"{name}.txt"
            spy = await asyncio.create_subprocess_exec(
                *(str(BIN / "py-spy"), "record", "-r", str(SAMPLES_PER_SECOND)),
                *("-d", str(args.seconds), "--nonblocking", "-f", "raw", "-o", str(raw)),
                *("-p", str(server.process.pid)),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            load = await wrk.run(
                url_, seconds=args.seconds, connections=32, headers=headers, cpus=LOAD_CPUS
            )
            await spy.wait()
            header = (
                f"# py-spy record -r {SAMPLES_PER_SECOND} --nonblocking on userapi serve (CPU 0)"
                f" under wrk -t1 -c32 GET {template} (CPU 1), {args.users} users, {database}\n"
                f"# code: {commit}; {load.requests_per_second:.0f} req/s while sampled\n"
                f"# machine: {os.cpu_count()} CPUs, /proc/pressure/cpu {pressure}\n"
                "# bench/profile.py; shares of samples whose stack holds each function"
            )
            target = PROFILES / f"users-{name}-{'pg' if database == 'postgresql' else database}.txt"
            target.write_text(_summary(raw, header))
            print(f"{target.relative_to(REPOSITORY)}: {load.requests_per_second:.0f} req/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--endpoints", default="me,user,list")
    add_postgres_argument(parser)
    args = parser.parse_args()
    commit = subprocess.run(
        ["git", "-C", str(REPOSITORY), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    pressure = Path("/proc/pressure/cpu").read_text().split("\n")[0]
    with tempfile.TemporaryDirectory() as folder:
        for database in args.databases.split(","):
            asyncio.run(_profile(args, database, Path(folder), commit, pressure))


if __name__ == "__main__":
    main()
