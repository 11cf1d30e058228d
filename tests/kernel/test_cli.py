"""The `userapi` command, run as an operator runs it: a subprocess configured by environment.

API.md "Running it": serve | migrate | create-admin (new-feature: see test_discovery.py).
"""

import signal
from pathlib import Path

import httpx

from kernel.settings import Settings
from tests.conftest import make_settings, migrate
from tests.factories import Account, assert_problem, login, register, serving
from tests.kernel.conftest import EmptyDatabase
from tests.servers import CliResult, cli_env, run_cli, serving_process

ADMIN_PASSWORD = "a long admin passphrase nobody else uses"


async def create_admin(
    database: EmptyDatabase, cwd: Path, email: str, *args: str, **env: str
) -> CliResult:
    return await run_cli(
        "create-admin",
        "--email",
        email,
        *args,
        env=cli_env(DATABASE_URL=database.operator_url, **env),
        cwd=cwd,
    )


async def migrated(database: EmptyDatabase) -> None:
    """Arrange the schema at head in this process, as `userapi migrate` does; the command
    itself is test_migrate_makes_a_fresh_database_ready's. (A subprocess costs a second.)"""
    await migrate(database.url)


def app_settings(database: EmptyDatabase, tmp_path: Path) -> Settings:
    return make_settings(database.url, tmp_path / "app-data")


# --- create-admin -----------------------------------------------------------------------


async def test_create_admin_makes_an_admin_who_can_list_users(
    empty_database: EmptyDatabase, tmp_path: Path
) -> None:
    result = await create_admin(
        empty_database, tmp_path, "root@example.com", "--password", ADMIN_PASSWORD
    )
    assert result.returncode == 0, result.stderr

    async with serving(app_settings(empty_database, tmp_path)) as (_, http):
        admin = await login(http, Account(id="", email="root@example.com", password=ADMIN_PASSWORD))
        response = await http.get("/api/v1/users", headers=admin.headers)

    assert response.status_code == 200, response.text
    [record] = response.json()["items"]
    assert record["email"] == "root@example.com"
    assert record["is_superuser"] is True
    assert record["email_verified"] is True  # the operator vouched for the address


async def test_create_admin_takes_the_password_from_the_environment(
    empty_database: EmptyDatabase, tmp_path: Path
) -> None:
    result = await create_admin(
        empty_database, tmp_path, "root@example.com", USERAPI_ADMIN_PASSWORD=ADMIN_PASSWORD
    )
    assert result.returncode == 0, result.stderr

    async with serving(app_settings(empty_database, tmp_path)) as (_, http):
        response = await http.post(
            "/api/v1/auth/login", json={"email": "root@example.com", "password": ADMIN_PASSWORD}
        )

    assert response.status_code == 200, response.text


async def test_create_admin_refuses_a_common_password(
    empty_database: EmptyDatabase, tmp_path: Path
) -> None:
    result = await create_admin(
        empty_database, tmp_path, "root@example.com", "--password", "password123"
    )

    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "commonly used" in result.stderr


async def test_create_admin_checks_fields_as_register_does(
    empty_database: EmptyDatabase, tmp_path: Path
) -> None:
    result = await create_admin(
        empty_database, tmp_path, "not an address", "--password", ADMIN_PASSWORD
    )

    assert result.returncode == 1
    assert result.stderr.startswith("userapi: invalid email:"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


async def test_create_admin_with_a_common_password_creates_nobody(
    empty_database: EmptyDatabase, tmp_path: Path
) -> None:
    await migrated(empty_database)

    await create_admin(empty_database, tmp_path, "root@example.com", "--password", "password123")

    async with serving(app_settings(empty_database, tmp_path)) as (_, http):
        response = await http.post(
            "/api/v1/auth/login", json={"email": "root@example.com", "password": "password123"}
        )

    assert_problem(response, 401, "invalid_credentials")


async def test_create_admin_refuses_a_duplicate_email(
    empty_database: EmptyDatabase, tmp_path: Path
) -> None:
    first = await create_admin(
        empty_database, tmp_path, "root@example.com", "--password", ADMIN_PASSWORD
    )
    assert first.returncode == 0, first.stderr

    second = await create_admin(
        empty_database, tmp_path, "ROOT@example.com", "--password", ADMIN_PASSWORD + " two"
    )

    assert second.returncode == 1
    assert len(second.stderr.strip().splitlines()) == 1, second.stderr
    assert "root@example.com" in second.stderr


async def test_create_admin_without_a_password_exits_with_one_line(
    empty_database: EmptyDatabase, tmp_path: Path
) -> None:
    result = await create_admin(empty_database, tmp_path, "root@example.com")

    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "USERAPI_ADMIN_PASSWORD" in result.stderr


async def test_create_admin_promote_makes_a_registered_user_an_admin(
    empty_database: EmptyDatabase, tmp_path: Path
) -> None:
    await migrated(empty_database)
    async with serving(app_settings(empty_database, tmp_path)) as (_, http):
        account = await register(http, email="later-admin@example.com")
        before = await http.get("/api/v1/users", headers=(await login(http, account)).headers)

        result = await run_cli(
            "create-admin",
            "--promote",
            "Later-Admin@Example.com",
            env=cli_env(DATABASE_URL=empty_database.operator_url),
            cwd=tmp_path,
        )
        after = await http.get("/api/v1/users", headers=account.headers)

    assert result.returncode == 0, result.stderr
    assert_problem(before, 403, "forbidden")
    assert after.status_code == 200, after.text
    assert after.json()["items"][0]["is_superuser"] is True


async def test_create_admin_promote_of_an_unknown_email_exits_with_one_line(
    empty_database: EmptyDatabase, tmp_path: Path
) -> None:
    await migrated(empty_database)
    env = cli_env(DATABASE_URL=empty_database.operator_url)

    result = await run_cli("create-admin", "--promote", "nobody@example.com", env=env, cwd=tmp_path)

    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "nobody@example.com" in result.stderr


# --- migrate ----------------------------------------------------------------------------


async def test_migrate_makes_a_fresh_database_ready(
    empty_database: EmptyDatabase, tmp_path: Path
) -> None:
    env = cli_env(DATABASE_URL=empty_database.operator_url)
    result = await run_cli("migrate", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr

    async with serving(app_settings(empty_database, tmp_path)) as (_, http):
        response = await http.get("/ready")

    assert response.status_code == 200, response.text


# --- serve ------------------------------------------------------------------------------


def bare_env() -> dict[str, str]:
    """`userapi serve` in an empty working directory: no DATABASE_URL, no SECRET_KEY."""
    env = cli_env()
    del env["SECRET_KEY"]
    return env


async def test_serve_answers_over_http_with_a_database_in_the_working_directory(
    tmp_path: Path,
) -> None:
    async with (
        serving_process(tmp_path, bare_env()) as server,
        httpx.AsyncClient(base_url=server.base_url, timeout=30) as http,
    ):
        response = await http.post(
            "/api/v1/auth/register",
            json={
                "email": "served@example.com",
                "password": "correct horse battery staple",
                "first_name": "Ada",
                "last_name": "Lovelace",
            },
        )

    assert response.status_code == 201, response.text
    assert (tmp_path / "data" / "userapi.db").is_file()
    assert (tmp_path / "data" / "secret_key").is_file()


async def test_serve_shuts_down_gracefully_on_sigterm(tmp_path: Path) -> None:
    async with serving_process(tmp_path, bare_env()) as server:
        server.signal(signal.SIGTERM)
        returncode = await server.wait_exit()

    # uvicorn finishes the shutdown, then re-raises SIGTERM so the exit says why it stopped.
    assert returncode in {0, -signal.SIGTERM}
    assert "Application shutdown complete" in server.log_path.read_text()


# --- a database never migrated ----------------------------------------------------------


async def test_commands_on_a_database_never_migrated_say_to_migrate_in_one_line(
    empty_database: EmptyDatabase, tmp_path: Path
) -> None:
    env = cli_env(DATABASE_URL=empty_database.operator_url)
    for command in ("outbox", "purge-expired"):
        result = await run_cli(command, env=env, cwd=tmp_path)

        assert result.returncode == 1, (command, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr, (command, result.stderr)
        [line] = result.stderr.strip().splitlines()
        assert line.startswith("userapi: the database at "), line
        assert "run `userapi migrate`" in line, line
