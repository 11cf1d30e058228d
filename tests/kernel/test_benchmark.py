"""The benchmark (bench/run.py, README "Performance") runs from one command and measures
every endpoint on both databases, with tiny data and one-second runs, each connection
paced (--pace) so the run exercises every measurement without taking two CPUs from the
rest of the suite for a minute. Nothing here asserts a timing: only that every
measurement happened and no request failed.
"""

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from tests.conftest import POSTGRES_ADMIN_DSN
from tests.factories import FAST_HASHING
from tests.servers import run_program

# About forty one-second wrk runs, on a machine the rest of the suite also loads.
BENCHMARK_TIMEOUT_SECONDS = 600.0
# Each wrk connection's wait between requests: about ten requests per connection a run.
PACE_MS = 100
REPOSITORY = Path(__file__).resolve().parents[2]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Two empty panels of the chart's size make about 15 kB; this run's bars, about 80 kB.
MIN_CHART_BYTES = 40_000
ENDPOINTS = {
    "GET /users/me",
    "GET /users/{id}",
    "GET /users?q=grace",
    "PATCH /users/me",
    "POST /auth/login",
    "POST /auth/refresh",
    "POST /auth/register",
    *(
        f"GET /users sort={sort}{deep}"
        for sort in ("created_at", "-created_at", "email", "-email")
        for deep in ("", " deep")
    ),
}


def _require_wrk() -> None:
    if shutil.which("wrk"):
        return
    message = "wrk is not installed (Debian: apt-get install wrk)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


async def test_the_benchmark_measures_every_endpoint_on_both_databases(tmp_path: Path) -> None:
    _require_wrk()
    out = tmp_path / "results"
    env = dict(os.environ) | {name.upper(): str(value) for name, value in FAST_HASHING.items()}
    env |= {"ENV": "test", "USERAPI_TEST_POSTGRES": POSTGRES_ADMIN_DSN}
    finished = await run_program(
        sys.executable,
        str(REPOSITORY / "bench" / "run.py"),
        *("--users", "30", "--rounds", "1", "--seconds", "1", "--workers", "1"),
        *("--connections", "4", "--pace", str(PACE_MS)),
        *("--burst", "5", "--timing-rounds", "2", "--out", str(out)),
        env=env,
        cwd=tmp_path,
        within=BENCHMARK_TIMEOUT_SECONDS,
    )
    assert finished.returncode == 0, finished.stderr + finished.stdout

    [written] = out.glob("*.json")
    [series] = json.loads(written.read_text())["series"]
    assert series["ceiling"]["requests"] > 0
    assert series["ceiling"]["errors"] == 0
    assert set(series["databases"]) == {"sqlite", "postgresql"}
    for database, result in series["databases"].items():
        assert set(result["endpoints"]) == ENDPOINTS, database
        for name, load in result["endpoints"].items():
            assert load["requests"] > 0, (database, name)
            assert load["errors"] == 0, (database, name, load)
        for size in (8, 16):
            storm = result["storms"][f"storm_{size}"]
            assert storm["logins_per_second"] > 0, (database, storm)
            assert storm["errors"] == 0, (database, storm)
        assert result["burst"]["status_counts"] == {"200": 5}, database
    assert series["argon2_alone_per_second"] > 0
    [table] = out.glob("*.md")
    assert "| GET /users/me |" in table.read_text()
    [chart] = out.glob("*.png")
    assert chart.stem == table.stem
    assert chart.read_bytes().startswith(PNG_SIGNATURE)
    assert chart.stat().st_size > MIN_CHART_BYTES  # bars drawn, not empty axes
