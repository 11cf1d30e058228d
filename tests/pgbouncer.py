"""A real PgBouncer in transaction mode in front of the PostgreSQL test server.

Started as the test's own process on a free port with a config file in the test's
folder. Its pool holds few server connections, so consecutive transactions of one client
connection run on different server connections and several clients share each one:
what breaks a driver that keeps statements prepared between transactions.
"""

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

from tests.servers import START_TIMEOUT_SECONDS, STOP_TIMEOUT_SECONDS, free_port, log_tail

SERVER_CONNECTIONS = 2  # per database: fewer than the app's pool, so connections are shared


def pgbouncer_command() -> str:
    """The pgbouncer executable (Debian puts it in /usr/sbin); under CI its absence fails."""
    found = shutil.which("pgbouncer", path=f"{os.environ.get('PATH', '')}:/usr/sbin")
    if found:
        return found
    message = "pgbouncer is not installed (Debian: apt-get install pgbouncer)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def _config(folder: Path, port: int, postgres_dsn: str, database: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    server = urlsplit(postgres_dsn)
    users = folder / "pgbouncer-users.txt"
    # auth_type trust still wants the user listed; the test server trusts it too.
    users.write_text(f'"{server.username or "postgres"}" ""\n')
    config = folder / "pgbouncer.ini"
    config.write_text(
        "[databases]\n"
        f"{database} = host={server.hostname or '127.0.0.1'} port={server.port or 5432} "
        f"dbname={database}\n"
        "[pgbouncer]\n"
        "listen_addr = 127.0.0.1\n"
        f"listen_port = {port}\n"
        "unix_socket_dir =\n"
        "auth_type = trust\n"
        f"auth_file = {users}\n"
        "pool_mode = transaction\n"
        f"default_pool_size = {SERVER_CONNECTIONS}\n"
        "max_client_conn = 200\n"
    )
    # PgBouncer refuses to run as root; it then switches to `nobody`, who must read these.
    for path in (folder, users, config):
        path.chmod(path.stat().st_mode | 0o555 if path.is_dir() else 0o644)
    return config


async def _answers(url: str) -> bool:
    try:
        connection = await asyncpg.connect(url, timeout=2, statement_cache_size=0)
    except (OSError, asyncpg.PostgresError):
        return False
    try:
        return bool(await connection.fetchval("SELECT 1"))
    finally:
        await connection.close()


@asynccontextmanager
async def pgbouncer_running(folder: Path, postgres_dsn: str, database: str) -> AsyncIterator[str]:
    """PgBouncer in front of `database` on the server of `postgres_dsn`, answering; yields
    the URL an operator would put in DATABASE_URL. Stopped however the test ends."""
    port = free_port()
    config = _config(folder, port, postgres_dsn, database)
    log_path = folder / "pgbouncer.log"
    as_root = ["-u", "nobody"] if os.geteuid() == 0 else []
    with log_path.open("wb") as log:  # the child keeps its own copy of the descriptor
        process = await asyncio.create_subprocess_exec(
            pgbouncer_command(),
            *as_root,
            str(config),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
        )
    user = urlsplit(postgres_dsn).username or "postgres"
    url = f"postgresql://{user}@127.0.0.1:{port}/{database}"
    try:
        async with asyncio.timeout(START_TIMEOUT_SECONDS):
            while not await _answers(url):
                if process.returncode is not None:
                    raise AssertionError(
                        f"pgbouncer exited with status {process.returncode}:\n" + log_tail(log_path)
                    )
                await asyncio.sleep(0.05)
        yield url
    except Exception as error:
        error.add_note(f"--- pgbouncer's log ---\n{log_tail(log_path)}")
        raise
    finally:
        if process.returncode is None:
            process.terminate()
        try:
            async with asyncio.timeout(STOP_TIMEOUT_SECONDS):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()
