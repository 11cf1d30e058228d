"""Password-reset requests: does the answer's timing tell who has an account?

    .venv/bin/python bench/reset_timing.py [--database-url URL] [--rounds 15] [--per-round 20]
                                           [--no-sender]

Starts a real `userapi serve` (SQLite in a temporary folder unless --database-url), with
the in-process mail sender on (the development backend writes each mail to a file), and
times `POST /api/v1/auth/password-reset` for three kinds of address, requests of all
three shuffled together in each round so machine noise hits all alike: a known active account, an
unknown address, a deactivated account. Every request uses an address never asked for
before, so no send limit is reached (the per-IP limit is raised for the run). Prints
the medians per kind (median of the per-round medians) and their ratios to the known
kind; writes bench/results/reset_timing.json.
"""

import argparse
import asyncio
import json
import random
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.run import RESULTS
from bench.servers import Server  # the benchmark's own server runner

PASSWORD = "benchmark passphrase 2026"
KINDS = ("known", "unknown", "deactivated")


async def _seed(client: httpx.AsyncClient, count: int, *, deactivated: bool) -> list[str]:
    emails = []
    for _ in range(count):
        email = f"reset-{secrets.token_hex(6)}@example.com"
        body = {"email": email, "password": PASSWORD, "first_name": "B", "last_name": "U"}
        response = await client.post("/api/v1/auth/register", json=body)
        response.raise_for_status()
        if deactivated:
            tokens = await client.post(
                "/api/v1/auth/login", json={"email": email, "password": PASSWORD}
            )
            headers = {"Authorization": f"Bearer {tokens.json()['access_token']}"}
            response = await client.post(
                "/api/v1/users/me/deactivate", json={"current_password": PASSWORD}, headers=headers
            )
            response.raise_for_status()
        emails.append(email)
    return emails


async def measure(base: str, rounds: int, per_round: int) -> dict[str, Any]:
    needed = rounds * per_round
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        addresses = {
            "known": await _seed(client, needed, deactivated=False),
            "deactivated": await _seed(client, needed, deactivated=True),
            "unknown": [f"nobody-{secrets.token_hex(6)}@example.com" for _ in range(needed)],
        }
        # Warm-up: first requests pay for imports and caches.
        for _ in range(20):
            await client.post(
                "/api/v1/auth/password-reset", json={"email": f"w{secrets.token_hex(4)}@x.org"}
            )
        medians: dict[str, list[float]] = {kind: [] for kind in KINDS}
        for round_number in range(rounds):
            # Shuffled request by request: whatever the server does after answering one
            # request (sending its mail) lands on the next, whichever kind that is.
            batch = [
                (kind, addresses[kind][round_number * per_round + index])
                for kind in KINDS
                for index in range(per_round)
            ]
            random.shuffle(batch)
            timings: dict[str, list[float]] = {kind: [] for kind in KINDS}
            for kind, email in batch:
                started = time.perf_counter()
                response = await client.post("/api/v1/auth/password-reset", json={"email": email})
                timings[kind].append((time.perf_counter() - started) * 1000)
                assert response.status_code == 202, response.text
            for kind in KINDS:
                medians[kind].append(statistics.median(timings[kind]))
    result: dict[str, Any] = {"rounds": rounds, "per_round": per_round}
    known = statistics.median(medians["known"])
    for kind in KINDS:
        median = statistics.median(medians[kind])
        result[f"{kind}_median_ms"] = round(median, 3)
        result[f"{kind}_to_known"] = round(median / known, 3)
    return result


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default="", help="default: SQLite in a temp folder")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--per-round", type=int, default=20)
    parser.add_argument("--no-sender", action="store_true", help="MAIL_SENDER_ENABLED=false")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        env = {
            "ARGON2_TIME_COST": "1",  # the reset request hashes nothing; seeding stays quick
            "ARGON2_MEMORY_KIB": "8",
            "ARGON2_PARALLELISM": "1",
            "MAIL_SEND_LIMIT_PER_IP": "100000",
            "RATE_LIMIT_PER_IP": "1000000/hour",  # every request comes from one address
            "LOGIN_MAX_FAILURES": "1000",
            # Without the in-process sender: the request alone, nothing done after it.
            **({"MAIL_SENDER_ENABLED": "false"} if args.no_sender else {}),
        }
        server = Server(args.database_url, Path(folder), env)
        try:
            await server.wait_ready()
            result = await measure(server.base, args.rounds, args.per_round)
        finally:
            server.stop()
    result["database"] = "postgresql" if args.database_url.startswith("postgres") else "sqlite"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "reset_timing.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"| kind | median ms | ratio to known |  ({result['database']}, {args.rounds} rounds)")
    print("|---|---:|---:|")
    for kind in KINDS:
        print(f"| {kind} | {result[f'{kind}_median_ms']} | {result[f'{kind}_to_known']} |")


if __name__ == "__main__":
    asyncio.run(main())
