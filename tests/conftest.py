"""Every test runs twice, on SQLite and on PostgreSQL, against the real app over HTTP.

Isolation: SQLite gets a fresh copy of a migrated database file per test; PostgreSQL
gets one migrated database per test session (per xdist worker), emptied before each
test. Both commit for real, so concurrency tests see what production would. A module's
tests whose requests must all be refused may share one app, on a database of its own,
instead (tests/shared_app.py says why that keeps them apart).
"""

import asyncio
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI

from kernel import migrations
from kernel.db import Database, metadata
from kernel.settings import Settings, load_settings
from kernel.slices import load_tables
from tests.compiled_statements import share_compiled_statements
from tests.factories import (
    FAST_HASHING,
    GENEROUS_RATE,
    TEST_SECRET,
    Account,
    make_admin,
    make_user,
    serving,
)
from tests.mail import Mailbox, mailbox_running
from tests.memory import collect_less_often, forget_finished_apps
from tests.shared_app import SharedApp, SharedAppKeeper

POSTGRES_ADMIN_DSN = os.environ.get(
    "USERAPI_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
)


@pytest.hookimpl(wrapper=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> Generator[None, int, int]:
    """`-n auto` (pyproject.toml) starts one worker more than there are CPUs, unless
    PYTEST_XDIST_AUTO_NUM_WORKERS says how many. Many tests wait on `userapi` processes,
    timeouts and mail rather than compute: on 2 CPUs, eleven such files took 88 s with 2
    workers, the CPUs 79% busy, and 78 s with 3 (93% busy); tests/features, which builds
    apps in process, took 67 s either way."""
    cpus: int = yield
    return cpus if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS") else cpus + 1


def pytest_collection_finish(session: pytest.Session) -> None:
    collect_less_often()
    share_compiled_statements()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Iterator[None]:
    try:
        return (yield)
    finally:
        forget_finished_apps()  # the test's app is torn down by now


def postgres_url(database: str) -> str:
    """The URL of this database on the test server, as an operator writes it."""
    return f"{POSTGRES_ADMIN_DSN.rsplit('/', 1)[0]}/{database}"


def async_url(url: str) -> str:
    """The URL with the async driver, as the kernel uses it."""
    return url.replace("postgresql://", "postgresql+asyncpg://", 1)


@asynccontextmanager
async def admin_connection() -> AsyncIterator[asyncpg.Connection]:
    """A connection to the PostgreSQL test server as its administrator."""
    connection = await asyncpg.connect(POSTGRES_ADMIN_DSN, timeout=5)
    try:
        yield connection
    finally:
        await connection.close()


async def admin_execute(*statements: str) -> None:
    """Run statements, one after another, on an admin connection."""
    async with admin_connection() as connection:
        for statement in statements:
            await connection.execute(statement)


@asynccontextmanager
async def _database(url: str) -> AsyncIterator[Database]:
    database = Database(load_settings(database_url=url, env="test", secret_key=TEST_SECRET))
    try:
        yield database
    finally:
        await database.dispose()


async def migrate(url: str) -> None:
    async with _database(url) as database:
        await migrations.upgrade(database)


# tmpfs: a SQLite file there is written and fsynced in memory, not on the disk.
MEMORY_FOLDER = Path("/dev/shm")  # noqa: S108 (only mkdtemp folders, mode 0700, in it)


@contextmanager
def scratch_folder(fallback: Path) -> Iterator[Path]:
    """A new empty folder in memory (MEMORY_FOLDER) where there is one, else `fallback`;
    the in-memory one is removed with everything in it (SQLite's -wal and -shm too)."""
    if not (MEMORY_FOLDER.is_dir() and os.access(MEMORY_FOLDER, os.W_OK | os.X_OK)):
        yield fallback
        return
    folder = Path(tempfile.mkdtemp(prefix=f"userapi-tests-{os.getpid()}-", dir=MEMORY_FOLDER))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def sqlite_folder(tmp_path: Path) -> Iterator[Path]:
    """Where this test's SQLite files go: in memory when the machine has tmpfs."""
    with scratch_folder(tmp_path) as folder:
        yield folder


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with scratch_folder(tmp_path_factory.mktemp("template")) as folder:
        path = folder / "userapi.db"
        asyncio.run(migrate(f"sqlite+aiosqlite:///{path}"))
        yield path


@contextmanager
def migrated_postgres_database() -> Iterator[str]:
    """A new migrated database on the test server, dropped afterwards; the test is
    skipped when the server is unreachable (failed under CI)."""
    name = f"userapi_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    try:
        asyncio.run(admin_execute(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError) as error:
        message = f"PostgreSQL at {POSTGRES_ADMIN_DSN} is unreachable: {error}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)  # under CI a missing PostgreSQL fails the run
        pytest.skip(message)
    url = async_url(postgres_url(name))
    try:
        asyncio.run(migrate(url))
        yield url
    finally:
        asyncio.run(admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    with migrated_postgres_database() as url:
        yield url


def sqlite_copy(template: Path, copy: Path) -> str:
    """The URL of a new copy of the migrated template."""
    shutil.copyfile(template, copy)
    return f"sqlite+aiosqlite:///{copy}"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str:
    if request.param == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        folder: Path = request.getfixturevalue("sqlite_folder")
        return sqlite_copy(template, folder / "userapi.db")
    url: str = request.getfixturevalue("postgres_database")
    postgres_emptier: Callable[[], None] = request.getfixturevalue("postgres_emptier")
    postgres_emptier()
    return url


@pytest.fixture(scope="session")
def postgres_emptier(postgres_database: str) -> Iterator[Callable[[], None]]:
    """What empties the worker's database (see `empty`) before each test: on one
    connection kept for the session, on an event loop of its own, where a connection per
    test cost the test 5 ms and PostgreSQL 3-4 ms of CPU."""
    with asyncio.Runner(loop_factory=asyncio.new_event_loop) as runner:
        connection = runner.run(_emptying_connection(postgres_database))
        try:
            yield lambda: runner.run(connection.execute(_emptying_statements()))
        finally:
            runner.run(connection.close())


@dataclass
class ModuleDatabase:
    """A migrated database for one module's shared app (tests/shared_app.py), apart from
    the per-test ones, which their tests copy or empty at will."""

    url: str
    template: Path | None  # SQLite: each reset is a new copy of the template
    folder: Path
    copies: int = 0

    async def reset(self) -> str:
        """Its URL, on a database as just migrated."""
        if self.template is None:
            await empty(self.url)
            return self.url
        self.copies += 1
        return sqlite_copy(self.template, self.folder / f"shared-{self.copies}.db")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def module_database(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ModuleDatabase]:
    with scratch_folder(tmp_path_factory.mktemp("module")) as folder:
        if request.param == "sqlite":
            template: Path = request.getfixturevalue("sqlite_template")
            yield ModuleDatabase(url="", template=template, folder=folder)
            return
        with migrated_postgres_database() as url:
            yield ModuleDatabase(url=url, template=None, folder=folder)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_app_keeper(module_database: ModuleDatabase) -> AsyncIterator[SharedAppKeeper]:
    async def fresh_settings() -> Settings:
        return app_settings(await module_database.reset(), module_database.folder)

    keeper = SharedAppKeeper(fresh_settings)
    yield keeper
    await keeper.close()


@pytest_asyncio.fixture(loop_scope="module")
async def shared_app(shared_app_keeper: SharedAppKeeper) -> SharedApp:
    """The module's shared app, as built: for tests marked IN_THE_MODULE_LOOP."""
    return await shared_app_keeper.fresh()


async def empty(url: str) -> None:
    """Delete every row of every table, referencing tables first, on one plain connection.

    The tables hold a few rows per test: DELETE costs about 2 ms where TRUNCATE, which
    swaps in new files for each table and its indexes, costs 25-50 ms, every test.
    Replication role `replica` skips the triggers, so the one keeping security events
    append-only lets this test-only cleanup through (the test server's user is a
    superuser, as that setting needs).
    """
    connection = await _emptying_connection(url)
    try:
        await connection.execute(_emptying_statements())
    finally:
        await connection.close()


async def _emptying_connection(url: str) -> asyncpg.Connection:
    connection = await asyncpg.connect(url.replace("+asyncpg", "", 1), timeout=5)
    await connection.execute("SET session_replication_role = replica")
    return connection


def _emptying_statements() -> str:
    load_tables()
    tables = [table.name for table in reversed(metadata.sorted_tables)]
    # The names come from our own table metadata, never from input.
    return "; ".join(f'DELETE FROM "{table}"' for table in tables)  # noqa: S608


def make_settings(database_url: str, data_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "env": "test",
        "database_url": database_url,
        "secret_key": TEST_SECRET,
        "data_dir": data_dir,
        "rate_limit_per_ip": GENEROUS_RATE,
        **FAST_HASHING,
        **overrides,
    }
    return load_settings(**values)


def app_settings(database_url: str, data_dir: Path) -> Settings:
    """The app as deployed with a separate mail worker (MAIL_SENDER_ENABLED=false): mail is
    queued in the outbox, and nobody delivers it. Delivering every registration's mail in
    the background was half of the CPU of each user a test made; the tests about mail
    override the `settings` fixture with a real SMTP server (the `mailbox` fixture), sender on."""
    return make_settings(database_url, data_dir, mail_sender_enabled=False)


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return app_settings(database_url, tmp_path)


@pytest.fixture
def mailbox() -> Iterator[Mailbox]:
    """A real SMTP server on a free loopback port, for the test's duration."""
    yield from mailbox_running()


@pytest.fixture
async def served(settings: Settings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    async with serving(settings) as app_and_client:
        yield app_and_client


@pytest.fixture
def app(served: tuple[FastAPI, httpx.AsyncClient]) -> FastAPI:
    return served[0]


@pytest.fixture
def client(served: tuple[FastAPI, httpx.AsyncClient]) -> httpx.AsyncClient:
    return served[1]


@pytest.fixture
async def user(client: httpx.AsyncClient) -> Account:
    return await make_user(client)


@pytest.fixture
async def other_user(client: httpx.AsyncClient) -> Account:
    return await make_user(client)


@pytest.fixture
async def admin(client: httpx.AsyncClient, app: FastAPI) -> Account:
    return await make_admin(client, app)
