"""One address floods logins: does a real user's login from another address still work?

    .venv/bin/python bench/ip_flood.py [--database-url URL] [--rate 30] [--seconds 20]
                                       [--rate-limit-per-ip 60/minute]

Issue 12's attack, reproduced on loopback: a real `userapi serve` with production
hashing (argon2id 64 MiB, t=3, the defaults). After the user's idle login latency is
measured (median of 5), 127.0.0.2 sends `--rate` unknown-email logins a second for
`--seconds`, none waiting for the one before, while the user logs in from 127.0.0.1 once
a second. Prints the flood's statuses, the user's statuses and latencies and the ratio
of the user's median to its idle median (issue 12 asks for at most 2); writes
bench/results/ip_flood.json. `--rate-limit-per-ip 1000000/hour` takes the per-IP limit
out of the way, so that only the sharing of the hashing slots is measured. The server
inherits this environment (ARGON2_PARALLELISM=1, say); a --database-url must name an
empty database, as each run generates its own SECRET_KEY.
"""

import argparse
import asyncio
import json
import secrets
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.run import RESULTS
from bench.seed import PASSWORD
from bench.servers import Server  # the benchmark's own server runner

LOGIN = "/api/v1/auth/login"
FLOOD_ADDRESS, USER_ADDRESS = "127.0.0.2", "127.0.0.1"


async def _login_ms(client: httpx.AsyncClient, body: dict[str, str]) -> tuple[str, float]:
    """The answer ("200", or "503 server_busy") and how long it took."""
    started = time.perf_counter()
    response = await client.post(LOGIN, json=body)
    elapsed = (time.perf_counter() - started) * 1000
    if response.status_code == 200:
        return "200", elapsed
    return f"{response.status_code} {response.json().get('code')}", elapsed


async def measure(base: str, rate: float, seconds: float) -> dict[str, Any]:
    def client_from(address: str) -> httpx.AsyncClient:
        transport = httpx.AsyncHTTPTransport(
            local_address=address, limits=httpx.Limits(max_connections=1000)
        )
        return httpx.AsyncClient(base_url=base, timeout=120, transport=transport)

    async with client_from(USER_ADDRESS) as user, client_from(FLOOD_ADDRESS) as attacker:
        email = f"flood-victim-{secrets.token_hex(4)}@example.com"
        body = {"email": email, "password": PASSWORD, "first_name": "B", "last_name": "U"}
        (await user.post("/api/v1/auth/register", json=body)).raise_for_status()
        credentials = {"email": email, "password": PASSWORD}
        idle = [await _login_ms(user, credentials) for _ in range(5)]
        assert all(status == "200" for status, _ in idle), idle

        flood: list[asyncio.Task[tuple[str, float]]] = []
        user_logins: list[tuple[str, float]] = []

        async def spray() -> None:
            deadline = time.perf_counter() + seconds
            while time.perf_counter() < deadline:
                guess = {"email": f"nobody-{secrets.token_hex(6)}@example.com", "password": "x"}
                flood.append(asyncio.create_task(_login_ms(attacker, guess)))
                await asyncio.sleep(1 / rate)

        async def log_in_every_second() -> None:
            await asyncio.sleep(2)  # let the flood's queue build first
            deadline = time.perf_counter() + seconds - 2
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                user_logins.append(await _login_ms(user, credentials))
                await asyncio.sleep(max(0.0, 1 - (time.perf_counter() - started)))

        await asyncio.gather(spray(), log_in_every_second())
        flood_results = await asyncio.gather(*flood)

    idle_median = statistics.median(ms for _, ms in idle)
    user_ms = [ms for _, ms in user_logins]
    user_median = statistics.median(user_ms)
    return {
        "flood_rate_per_s": rate,
        "flood_seconds": seconds,
        "flood_statuses": dict(Counter(status for status, _ in flood_results)),
        "user_statuses": dict(Counter(status for status, _ in user_logins)),
        "user_idle_median_ms": round(idle_median, 1),
        "user_under_flood_median_ms": round(user_median, 1),
        "user_under_flood_max_ms": round(max(user_ms), 1),
        "ratio_to_idle": round(user_median / idle_median, 2),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default="", help="default: SQLite in a temp folder")
    parser.add_argument("--rate", type=float, default=30)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--rate-limit-per-ip", default="60/minute")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        env = {"RATE_LIMIT_PER_IP": args.rate_limit_per_ip}
        server = Server(args.database_url, Path(folder), env)
        try:
            await server.wait_ready()
            report = {
                "database": args.database_url.split("://")[0] or "sqlite",
                "rate_limit_per_ip": args.rate_limit_per_ip,
                **await measure(server.base, args.rate, args.seconds),
            }
        finally:
            server.stop()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ip_flood.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
