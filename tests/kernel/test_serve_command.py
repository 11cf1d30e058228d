"""`userapi serve` as an operator meets it: where it listens, what --help says, and the one
line it prints when the database is not there or will not have us."""

import re
from pathlib import Path

import httpx
import pytest

from tests.factories import FAST_HASHING
from tests.servers import cli_env, free_port, log_tail, run_cli, server_env, serving_process

PASSWORD = "n0t-in-any-output"
# OWASP's floor: production refuses anything weaker (the test never hashes).
PRODUCTION_HASHING = {"ARGON2_TIME_COST": "2", "ARGON2_MEMORY_KIB": "19456"}


@pytest.mark.parametrize("command", ["serve", "migrate"])
@pytest.mark.parametrize("cause", ["nothing_listens", "no_such_host", "no_such_database"])
async def test_a_database_it_cannot_use_is_one_line_naming_it(
    tmp_path: Path, command: str, cause: str
) -> None:
    closed_port = free_port()
    where = {
        "nothing_listens": f"127.0.0.1:{closed_port}/userapi",
        "no_such_host": "no-such-host.invalid:5432/userapi",
        # The test server answers, and refuses a database it does not have.
        "no_such_database": "127.0.0.1:5432/userapi_no_such_database",
    }[cause]
    url = f"postgresql://postgres:{PASSWORD}@{where}"
    options = ["--port", str(free_port())] if command == "serve" else []

    result = await run_cli(
        command, *options, env=cli_env(DATABASE_URL=url, DB_TIMEOUT_SECONDS="5"), cwd=tmp_path
    )

    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("userapi: ")
    assert f"the database at {where} " in lines[0]
    assert PASSWORD not in result.stderr


async def test_serve_listens_where_host_and_port_say(tmp_path: Path, database_url: str) -> None:
    env = server_env(database_url, DATA_DIR=str(tmp_path))

    # 127.0.0.2: an address serve's default (127.0.0.1) would not listen on.
    async with serving_process(tmp_path, env, host_from_env="127.0.0.2") as server:
        assert server.base_url.startswith("http://127.0.0.2:")
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.get(f"{server.base_url}/ready")
            assert response.status_code == 200, response.text
            with pytest.raises(httpx.ConnectError):
                await client.get(f"http://127.0.0.1:{server.port}/health")


async def test_serve_help_gives_every_option_its_default(tmp_path: Path) -> None:
    result = await run_cli("serve", "--help", env=cli_env(), cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())  # argparse wraps long help lines
    options = set(re.findall(r"(--[a-z][a-z-]+) [A-Z]+", text))
    assert options == {"--host", "--port", "--workers"}
    assert "--host HOST the address to listen on (default: $HOST, else 127.0.0.1)" in text
    assert "--port PORT the TCP port to listen on (default: $PORT, else 8000)" in text
    assert "(default: $WEB_CONCURRENCY, else 1)" in text


@pytest.mark.parametrize("port", ["0", "65536", "eighty"])
async def test_serve_refuses_a_port_that_is_not_one_in_one_line(tmp_path: Path, port: str) -> None:
    result = await run_cli("serve", "--port", port, env=cli_env(), cwd=tmp_path)

    assert result.returncode == 2
    assert (
        result.stderr.strip().splitlines()[-1].endswith("a port is a whole number from 1 to 65535")
    )


async def test_production_on_sqlite_warns_that_it_is_one_machine_only(
    tmp_path: Path, database_url: str
) -> None:
    env = server_env(database_url, MAIL_BACKEND="log", DATA_DIR=str(tmp_path))
    for name in FAST_HASHING:
        env.pop(name.upper())
    env |= PRODUCTION_HASHING | {"ENV": "production"}

    async with serving_process(tmp_path, env) as server:
        log = log_tail(server.log_path, lines=1000)

    warned = "ENV=production on SQLite: this runs on one machine only" in log
    assert warned is database_url.startswith("sqlite"), log
