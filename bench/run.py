"""The userapi benchmark: one command, a markdown and a JSON report.

    .venv/bin/python bench/run.py [--database-url URL] [--rounds 40] [--burst 200]

Starts a real `userapi serve` with production hashing parameters (argon2id 64 MiB, t=3,
p=4, the defaults) and measures, side by side in one run:
- login timing: unknown email vs wrong password (medians, interleaved, same process);
- a burst of concurrent logins: peak server memory (VmHWM), how many got 200 / 503,
  and /health latency while the burst runs;
- read paths: GET /users/me, and a list page deep in the table vs the first page.
Writes bench/results/report.md and bench/results/report.json.
"""

import argparse
import asyncio
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

RESULTS = Path(__file__).resolve().parent / "results"
USERAPI = str(Path(sys.executable).parent / "userapi")
PASSWORD = "benchmark passphrase 2026"
START_TIMEOUT_SECONDS = 120.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Server:
    def __init__(self, database_url: str, workdir: Path, env: dict[str, str]) -> None:
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        environment = {**os.environ, "SECRET_KEY": secrets.token_urlsafe(48), **env}
        if database_url:
            environment["DATABASE_URL"] = database_url
        environment.setdefault("LOG_LEVEL", "WARNING")
        self.log_path = workdir / "serve.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [USERAPI, "serve", "--port", str(self.port)],
                cwd=workdir,
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_bytes().decode("utf-8", "replace").rstrip()
        return "\n".join(text.splitlines()[-lines:]) or "(nothing)"

    async def wait_ready(self) -> None:
        """Until /ready answers 200; at once if the server exits, with its log either way."""
        try:
            async with asyncio.timeout(START_TIMEOUT_SECONDS), httpx.AsyncClient() as client:
                while self.process.poll() is None:
                    try:
                        if (await client.get(f"{self.base}/ready")).status_code == 200:
                            return
                    except httpx.TransportError:
                        pass
                    await asyncio.sleep(0.1)
            why = f"exited with status {self.process.returncode}"
        except TimeoutError:
            why = f"did not become ready within {START_TIMEOUT_SECONDS:.0f} s"
        raise RuntimeError(f"userapi serve {why}; the end of its log:\n{self.log_tail()}")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=30)


async def _timed(client: httpx.AsyncClient, method: str, url: str, **kw: Any) -> float:
    started = time.perf_counter()
    response = await client.request(method, url, **kw)
    response.raise_for_status()
    return (time.perf_counter() - started) * 1000


async def login_timing(client: httpx.AsyncClient, base: str, rounds: int) -> dict[str, Any]:
    """Unknown email vs wrong password, interleaved so machine noise hits both alike.

    Each round uses fresh emails so throttling never kicks in.
    """
    unknown: list[float] = []
    wrong: list[float] = []
    for index in range(rounds):
        email = f"timing-{index}-{secrets.token_hex(4)}@example.com"
        await client.post(f"{base}/api/v1/auth/register", json=_user(email))
        for bucket, target in ((unknown, f"nobody-{email}"), (wrong, email)):
            started = time.perf_counter()
            response = await client.post(
                f"{base}/api/v1/auth/login", json={"email": target, "password": "wrong guess"}
            )
            bucket.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 401, response.text
    unknown_median, wrong_median = statistics.median(unknown), statistics.median(wrong)
    return {
        "rounds": rounds,
        "unknown_email_median_ms": round(unknown_median, 2),
        "wrong_password_median_ms": round(wrong_median, 2),
        "ratio_unknown_to_wrong": round(unknown_median / wrong_median, 3),
    }


def _user(email: str) -> dict[str, str]:
    return {"email": email, "password": PASSWORD, "first_name": "Bench", "last_name": "User"}


async def burst(client: httpx.AsyncClient, server: Server, size: int) -> dict[str, Any]:
    email = f"burst-{secrets.token_hex(4)}@example.com"
    await client.post(f"{server.base}/api/v1/auth/register", json=_user(email))
    rss_before = _rss_kib(server.process.pid)
    health_ms: list[float] = []
    done = asyncio.Event()

    async def probe_health() -> None:
        while not done.is_set():
            health_ms.append(await _timed(client, "GET", f"{server.base}/health"))
            await asyncio.sleep(0.05)

    async def one_login() -> int:
        response = await client.post(
            f"{server.base}/api/v1/auth/login", json={"email": email, "password": PASSWORD}
        )
        return response.status_code

    prober = asyncio.create_task(probe_health())
    started = time.perf_counter()
    statuses = await asyncio.gather(*(one_login() for _ in range(size)))
    duration = time.perf_counter() - started
    done.set()
    await prober
    counts = {str(code): statuses.count(code) for code in sorted(set(statuses))}
    return {
        "concurrent_logins": size,
        "status_counts": counts,
        "duration_s": round(duration, 2),
        "server_rss_before_mib": round(rss_before / 1024, 1),
        "server_peak_rss_mib": round(_peak_rss_kib(server.process.pid) / 1024, 1),
        "health_probes": len(health_ms),
        "health_median_ms": round(statistics.median(health_ms), 2) if health_ms else None,
        "health_max_ms": round(max(health_ms), 2) if health_ms else None,
    }


async def reads(client: httpx.AsyncClient, base: str, admin_token: str) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {admin_token}"}
    me = [
        await _timed(client, "GET", f"{base}/api/v1/users/me", headers=headers) for _ in range(200)
    ]
    first: list[float] = []
    deep: list[float] = []
    cursor = None
    for _ in range(30):  # walk to a deep page, timing the first and the last pages
        params = {"limit": 5, **({"cursor": cursor} if cursor else {})}
        started = time.perf_counter()
        page = (await client.get(f"{base}/api/v1/users", headers=headers, params=params)).json()
        (first if cursor is None else deep).append((time.perf_counter() - started) * 1000)
        cursor = page["next_cursor"] or cursor
    return {
        "users_me_median_ms": round(statistics.median(me), 2),
        "list_first_page_ms": round(first[0], 2),
        "list_deep_pages_median_ms": round(statistics.median(deep[-10:]), 2),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default="", help="default: SQLite in a temp folder")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--burst", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        # One address sends everything: the per-IP limit would answer the burst with 429s
        # (bench/ip_flood.py measures that limit).
        env = {"LOGIN_MAX_FAILURES": "1000", "RATE_LIMIT_PER_IP": "1000000/hour"}
        server = Server(args.database_url, Path(workdir), env)
        try:
            await server.wait_ready()
            limits = httpx.Limits(max_connections=args.burst + 10)
            async with httpx.AsyncClient(timeout=120, limits=limits) as client:
                report: dict[str, Any] = {
                    "database": args.database_url.split("://")[0] or "sqlite",
                    "cpus": os.cpu_count(),
                    "login_timing": await login_timing(client, server.base, args.rounds),
                    "burst": await burst(client, server, args.burst),
                }
                token = await _admin_token(client, server, Path(workdir), args.database_url)
                report["reads"] = await reads(client, server.base, token)
        finally:
            server.stop()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "report.json").write_text(json.dumps(report, indent=2))
    (RESULTS / "report.md").write_text(_markdown(report))
    print(_markdown(report))


async def _admin_token(
    client: httpx.AsyncClient, server: Server, workdir: Path, database_url: str
) -> str:
    email = f"admin-{secrets.token_hex(4)}@example.com"
    env = {**os.environ, "USERAPI_ADMIN_PASSWORD": PASSWORD}
    if database_url:
        env["DATABASE_URL"] = database_url
    creating = await asyncio.create_subprocess_exec(
        USERAPI,
        "create-admin",
        "--email",
        email,
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(creating.communicate(), timeout=120)
    if creating.returncode != 0:
        raise RuntimeError(f"userapi create-admin failed:\n{output.decode(errors='replace')}")
    response = await client.post(
        f"{server.base}/api/v1/auth/login", json={"email": email, "password": PASSWORD}
    )
    token: str = response.json()["access_token"]
    return token


def _markdown(report: dict[str, Any]) -> str:
    timing, burst_result, read = report["login_timing"], report["burst"], report["reads"]
    return "\n".join(
        [
            f"# userapi benchmark ({report['database']}, {report['cpus']} CPUs)",
            "",
            "## Login: unknown email vs wrong password (medians, interleaved)",
            f"- unknown email: {timing['unknown_email_median_ms']} ms",
            f"- wrong password: {timing['wrong_password_median_ms']} ms",
            f"- ratio: {timing['ratio_unknown_to_wrong']} over {timing['rounds']} rounds each",
            "",
            f"## Burst of {burst_result['concurrent_logins']} concurrent logins",
            f"- statuses: {burst_result['status_counts']} in {burst_result['duration_s']} s",
            f"- server RSS before: {burst_result['server_rss_before_mib']} MiB, "
            f"peak: {burst_result['server_peak_rss_mib']} MiB",
            f"- /health during the burst: {burst_result['health_probes']} probes, median "
            f"{burst_result['health_median_ms']} ms, max {burst_result['health_max_ms']} ms",
            "",
            "## Reads",
            f"- GET /users/me median: {read['users_me_median_ms']} ms",
            f"- list users, first page: {read['list_first_page_ms']} ms; "
            f"deep pages median: {read['list_deep_pages_median_ms']} ms",
            "",
        ]
    )


if __name__ == "__main__":
    asyncio.run(main())
