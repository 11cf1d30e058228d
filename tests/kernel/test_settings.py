"""Settings: validated once at start-up, one line per bad value, strict in production.

API.md "Running it"; DESIGN.md "settings.py".
"""

import secrets
from pathlib import Path

import pytest

from kernel.settings import (
    FD_RESERVE,
    Settings,
    SettingsError,
    load_settings,
    open_files_limit,
    usable_cpus,
)
from tests.conftest import make_settings
from tests.factories import TEST_SECRET, assert_problem, make_user, serving
from tests.servers import cli_env, run_cli

STRONG_SECRET = "production-secret-key-of-plenty-of-characters-0123456789"


def settings_error(**overrides: object) -> str:
    with pytest.raises(SettingsError) as caught:
        load_settings(**overrides)
    return str(caught.value)


# --- bad values -------------------------------------------------------------------------


def test_a_connection_cap_that_does_not_fit_under_ulimit_is_refused() -> None:
    fits = open_files_limit() - load_settings().listen_backlog - FD_RESERVE

    message = settings_error(max_connections=fits + 1)

    assert "MAX_CONNECTIONS" in message
    assert f"at most {fits}" in message
    assert load_settings(max_connections=fits).connection_cap == fits


def test_bad_value_as_an_override_names_the_setting() -> None:
    message = settings_error(login_max_failures="abc")

    assert len(message.splitlines()) == 1
    assert "LOGIN_MAX_FAILURES" in message


def test_bad_value_in_the_environment_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOGIN_MAX_FAILURES", "abc")

    message = settings_error()

    assert len(message.splitlines()) == 1
    assert "LOGIN_MAX_FAILURES" in message


def test_unsupported_database_scheme_names_database_url() -> None:
    message = settings_error(database_url="mysql://x")

    assert len(message.splitlines()) == 1
    assert "DATABASE_URL" in message


def test_each_bad_value_gets_its_own_line() -> None:
    message = settings_error(
        login_max_failures="abc", database_url="mysql://x", access_token_ttl_seconds=-1
    )

    lines = message.splitlines()
    assert len(lines) == 3
    assert sum("LOGIN_MAX_FAILURES" in line for line in lines) == 1
    assert sum("DATABASE_URL" in line for line in lines) == 1
    assert sum("ACCESS_TOKEN_TTL_SECONDS" in line for line in lines) == 1


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("LOGIN_MAX_FAILURES", "abc"),
        ("DATABASE_URL", "mysql://x"),
        ("RATE_LIMIT_PER_IP", "60/day"),
        ("TRUSTED_PROXIES", "10.0.0.1/8"),
    ],
)
@pytest.mark.parametrize("command", ["migrate", "serve"])
async def test_cli_with_a_bad_setting_exits_with_a_one_line_message(
    tmp_path: Path, command: str, variable: str, value: str
) -> None:
    env = cli_env(DATABASE_URL=f"sqlite:///{tmp_path / 'x.db'}") | {variable: value}

    result = await run_cli(command, env=env, cwd=tmp_path)

    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert variable in result.stderr
    assert not (tmp_path / "x.db").exists()


@pytest.mark.parametrize("command", ["migrate", "serve"])
async def test_an_unusable_data_dir_stops_start_up_with_a_one_line_message(
    tmp_path: Path, command: str
) -> None:
    env = {
        name: value
        for name, value in cli_env(DATA_DIR="/proc/no-such-dir/data").items()
        if name not in {"SECRET_KEY", "DATABASE_URL"}
    }

    result = await run_cli(command, env=env, cwd=tmp_path)

    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "DATA_DIR" in result.stderr


def test_hashing_slots_are_one_per_cpu_when_memory_allows() -> None:
    # 19 MiB a hash: any machine that runs this suite has room for one per CPU.
    settings = load_settings(argon2_memory_kib=19 * 1024, argon2_parallelism=1)

    assert settings.hashing_slots == usable_cpus()


def test_a_hash_with_several_lanes_takes_as_many_cpus_from_the_slots() -> None:
    # 16 lanes: one slot per 16 CPUs, and at least one.
    settings = load_settings(argon2_memory_kib=19 * 1024, argon2_parallelism=16)

    assert settings.hashing_slots == max(1, usable_cpus() // 16)


def test_the_workers_of_one_machine_share_its_cpus_for_hashing() -> None:
    # Two workers, one lane a hash: each takes half the CPUs (and at least one).
    settings = load_settings(argon2_memory_kib=19 * 1024, argon2_parallelism=1, web_concurrency=2)

    assert settings.hashing_slots == max(1, usable_cpus() // 2)


def test_hashing_slots_shrink_with_the_memory_cost_and_the_workers() -> None:
    # 4 GiB a hash shared by 256 workers: far beyond a quarter of memory, so one each.
    crowded = load_settings(argon2_memory_kib=4 * 1024 * 1024, web_concurrency=256)

    assert crowded.hashing_slots == 1


def test_an_explicit_hash_concurrency_wins() -> None:
    assert load_settings(hash_concurrency=3, web_concurrency=8).hashing_slots == 3


# --- production -------------------------------------------------------------------------


def production(**overrides: object) -> dict[str, object]:
    values: dict[str, object] = {
        "env": "production",
        "secret_key": STRONG_SECRET,
        "database_url": "postgresql://app@db/userapi",
        "smtp_host": "smtp.example.com",
    }
    return values | overrides


def test_production_accepts_a_strong_configuration() -> None:
    # The control for the refusals below.
    settings = load_settings(**production())

    assert settings.env == "production"


@pytest.mark.parametrize("secret_key", ["", "x" * 31])
def test_production_refuses_a_missing_or_short_secret_key(secret_key: str) -> None:
    message = settings_error(**production(secret_key=secret_key))

    assert len(message.splitlines()) == 1
    assert "SECRET_KEY" in message


# Long enough, yet guessable: repeats, sequences, keyboard runs and dictionary phrases.
WEAK_SECRETS = [
    "a" * 32,
    "a" * 200,
    "password" * 4,
    "passwordpassword" * 2 + "x",
    "0123456789" * 4,
    "abcdefghijklmnopqrstuvwxyzABCDEF",
    "qwertyuiopasdfghjklzxcvbnm123456",
    "P@ssw0rdP@ssw0rdP@ssw0rdP@ssw0rd",
    "userapi-production-2026-secret-key",
]


@pytest.mark.parametrize("secret_key", WEAK_SECRETS)
@pytest.mark.parametrize("setting", ["SECRET_KEY", "SECRET_KEY_PREVIOUS"])
def test_production_refuses_a_guessable_key_and_says_what_is_needed(
    setting: str, secret_key: str
) -> None:
    message = settings_error(**production(**{setting.lower(): secret_key}))

    assert len(message.splitlines()) == 1
    assert f"invalid setting {setting}:" in message
    assert "secrets.token_urlsafe(32)" in message
    assert secret_key not in message


@pytest.mark.parametrize("setting", ["secret_key", "secret_key_previous"])
def test_production_accepts_every_generated_key(setting: str) -> None:
    # The margin is wide (see MIN_SECRET_GUESSES_LOG10): a few fresh keys of each kind.
    generated = [secrets.token_urlsafe(32) for _ in range(20)]
    generated += [secrets.token_hex(32) for _ in range(5)]

    for key in generated:
        assert getattr(load_settings(**production(**{setting: key})), setting) == key


def test_outside_production_any_key_is_accepted() -> None:
    settings = load_settings(env="test", secret_key="a" * 32, secret_key_previous="b" * 32)

    assert settings.secret_key == "a" * 32


@pytest.mark.parametrize("setting", ["SECRET_KEY", "SECRET_KEY_PREVIOUS"])
async def test_production_start_up_with_a_guessable_key_stops_with_one_line(
    tmp_path: Path, setting: str
) -> None:
    env = cli_env(
        ENV="production",
        DATABASE_URL=f"sqlite:///{tmp_path / 'x.db'}",
        SMTP_HOST="smtp.example.com",
        SECRET_KEY=secrets.token_urlsafe(32),
    ) | {setting: "passwordpassword" * 2}

    result = await run_cli("serve", env=env, cwd=tmp_path)

    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert f"invalid setting {setting}:" in result.stderr
    assert "secrets.token_urlsafe(32)" in result.stderr
    assert "password" not in result.stderr.replace("token_urlsafe", "")
    assert not (tmp_path / "x.db").exists()


def test_production_refuses_argon2_memory_below_owasp() -> None:
    message = settings_error(**production(argon2_memory_kib=19455))

    assert len(message.splitlines()) == 1
    assert "ARGON2_MEMORY_KIB" in message


def test_production_refuses_argon2_time_cost_below_owasp() -> None:
    message = settings_error(**production(argon2_time_cost=1))

    assert len(message.splitlines()) == 1
    assert "ARGON2_TIME_COST" in message


def test_production_accepts_argon2_at_the_owasp_minimum() -> None:
    settings = load_settings(**production(argon2_memory_kib=19456, argon2_time_cost=2))

    assert (settings.argon2_memory_kib, settings.argon2_time_cost) == (19456, 2)


# --- the generated development key -------------------------------------------------------


def keyless(database_url: str, data_dir: Path) -> Settings:
    """Settings without SECRET_KEY: the app generates one in data_dir, or reuses it."""
    return make_settings(database_url, data_dir, secret_key="")


async def test_generated_key_is_kept_in_the_data_dir_and_reused(
    database_url: str, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    async with serving(keyless(database_url, data_dir)) as (_, first):
        account = await make_user(first)

    async with serving(keyless(database_url, data_dir)) as (_, second):
        response = await second.get("/api/v1/users/me", headers=account.headers)

    assert response.status_code == 200, response.text
    assert (data_dir / "secret_key").is_file()


async def test_generated_key_differs_between_data_dirs(database_url: str, tmp_path: Path) -> None:
    # The control for the test above: the key really is generated, not a constant.
    async with serving(keyless(database_url, tmp_path / "one")) as (_, first):
        account = await make_user(first)

    async with serving(keyless(database_url, tmp_path / "two")) as (_, second):
        response = await second.get("/api/v1/users/me", headers=account.headers)

    assert_problem(response, 401, "invalid_token")


def test_generated_key_is_never_the_test_key(tmp_path: Path) -> None:
    settings = load_settings(env="development", secret_key="", data_dir=tmp_path)

    assert len(settings.signing_key) >= 32
    assert settings.signing_key != TEST_SECRET


# --- database URLs ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "used"),
    [
        ("postgresql://app@db:5432/userapi", "postgresql+asyncpg://app@db:5432/userapi"),
        ("postgresql+asyncpg://app@db/userapi", "postgresql+asyncpg://app@db/userapi"),
        ("sqlite:///data/app.db", "sqlite+aiosqlite:///data/app.db"),
        ("sqlite+aiosqlite:///data/app.db", "sqlite+aiosqlite:///data/app.db"),
    ],
)
def test_database_urls_are_mapped_to_the_async_drivers(given: str, used: str) -> None:
    settings = load_settings(database_url=given, secret_key=TEST_SECRET)

    assert settings.resolved_database_url == used


def test_without_database_url_the_database_is_a_sqlite_file_in_the_data_dir(
    tmp_path: Path,
) -> None:
    settings = load_settings(database_url="", data_dir=tmp_path, secret_key=TEST_SECRET)

    assert settings.resolved_database_url == f"sqlite+aiosqlite:///{tmp_path / 'userapi.db'}"


# --- mail -------------------------------------------------------------------------------


def test_production_without_an_smtp_host_stops_start_up_in_one_line() -> None:
    message = settings_error(**production(smtp_host=""))

    assert (
        message
        == "invalid setting SMTP_HOST: required in production (or set MAIL_BACKEND=log on purpose)"
    )


def test_production_may_log_mail_when_told_to_on_purpose() -> None:
    settings = load_settings(**production(smtp_host="", mail_backend="log"))

    assert settings.resolved_mail_backend == "log"


def test_development_without_an_smtp_host_logs_mail_and_with_one_sends_it() -> None:
    assert load_settings(secret_key=TEST_SECRET).resolved_mail_backend == "log"
    with_host = load_settings(secret_key=TEST_SECRET, smtp_host="mail.example.com")
    assert with_host.resolved_mail_backend == "smtp"


def test_smtp_backend_needs_a_host() -> None:
    assert "SMTP_HOST" in settings_error(secret_key=TEST_SECRET, mail_backend="smtp")


@pytest.mark.parametrize(("tls", "port"), [("tls", 465), ("starttls", 587), ("none", 25)])
def test_the_smtp_port_follows_the_tls_mode_unless_set(tls: str, port: int) -> None:
    assert load_settings(secret_key=TEST_SECRET, smtp_tls=tls).resolved_smtp_port == port
    assert (
        load_settings(secret_key=TEST_SECRET, smtp_tls=tls, smtp_port=2525).resolved_smtp_port
        == 2525
    )


@pytest.mark.parametrize("setting", ["password_reset_url", "email_verification_url"])
@pytest.mark.parametrize("url", ["https://app.example.com/reset", "no-scheme/{token}"])
def test_link_templates_must_be_absolute_and_hold_the_token(setting: str, url: str) -> None:
    message = settings_error(secret_key=TEST_SECRET, **{setting: url})

    assert message.startswith(f"invalid setting {setting.upper()}:"), message


def test_link_templates_may_use_an_apps_own_scheme() -> None:
    settings = load_settings(secret_key=TEST_SECRET, password_reset_url="myapp://reset?t={token}")

    assert settings.password_reset_url == "myapp://reset?t={token}"


# --- the connection pooler (test_pgbouncer.py runs through one) --------------------------


def test_a_pooler_needs_a_postgresql_database() -> None:
    message = settings_error(database_pooler="pgbouncer", database_url="sqlite:///x.db")

    assert len(message.splitlines()) == 1
    assert "DATABASE_POOLER" in message


def test_an_unknown_pooler_names_the_setting() -> None:
    message = settings_error(database_pooler="pgpool", database_url="postgresql://h/db")

    assert "DATABASE_POOLER" in message


def test_pgbouncer_is_accepted_with_postgresql() -> None:
    settings = load_settings(database_pooler="pgbouncer", database_url="postgresql://h/db")

    assert settings.database_pooler == "pgbouncer"
