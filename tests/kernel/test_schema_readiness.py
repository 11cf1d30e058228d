"""/ready tells whether this code can run on the database's schema, through real servers.

- A slice whose table no migration creates: /ready names the table, start-up logs it,
  and the slice's route is a 500 (a fault of the deploy), never 503 database_unavailable,
  which tells clients to retry an outage that will not pass.
- A rolling deploy: a database migrated ahead of a process's code (a later release added
  a column and a table) keeps that process ready, and `userapi serve` of the older code
  starts on it without trying to migrate. A database behind the code is not ready
  (tests/kernel/test_health.py, in-process).

The newer code, and the slice, live in a temporary copy of the repository.
"""

import sys
from pathlib import Path

import httpx

from kernel import migrations
from tests.factories import assert_problem, registration
from tests.kernel.conftest import EmptyDatabase
from tests.kernel.helpers import add_slice, copy_repository, running_in
from tests.servers import Server, log_tail, run_program, running_server, server_env, serving_process

ALEMBIC = str(Path(sys.executable).parent / "alembic")

BOOKMARKS_SLICE = '''
from fastapi import APIRouter
from sqlalchemy import select
from sqlmodel import Field, SQLModel

from kernel.db import SessionDep
from kernel.deps import CurrentUser

router = APIRouter(tags=["bookmarks"])


class Bookmark(SQLModel, table=True):
    __tablename__ = "bookmarks"

    id: int | None = Field(default=None, primary_key=True)
    url: str = Field(max_length=2048)


@router.get("/bookmarks")
async def list_bookmarks(_: CurrentUser, session: SessionDep) -> list[str]:
    """The bookmarks' URLs."""
    return list(await session.scalars(select(Bookmark.url)))
'''

LATER_RELEASE_MIGRATION = '''"""A later release: a nullable column on users, and a table."""

import sqlalchemy as sa
from alembic import op

revision = "9001"
down_revision = "{head}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("users", sa.Column("nickname", sa.String(length=50), nullable=True))
    op.create_table("later_things", sa.Column("id", sa.Integer(), primary_key=True))


def downgrade() -> None:
    op.drop_table("later_things")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("nickname")
'''


async def signed_in(client: httpx.AsyncClient, server: Server) -> dict[str, str]:
    body = registration()
    registered = await client.post(f"{server.base_url}/api/v1/auth/register", json=body)
    assert registered.status_code == 201, registered.text
    credentials = {"email": body["email"], "password": body["password"]}
    tokens = await client.post(f"{server.base_url}/api/v1/auth/login", json=credentials)
    assert tokens.status_code == 200, tokens.text
    return {"Authorization": f"Bearer {tokens.json()['access_token']}"}


async def test_a_slice_table_without_a_migration_is_named_by_ready_and_is_no_outage(
    empty_database: EmptyDatabase, tmp_path: Path
) -> None:
    project = copy_repository(tmp_path / "repository")
    add_slice(project, "bookmarks", BOOKMARKS_SLICE)
    env = running_in(project, server_env(empty_database.url, DATA_DIR=str(tmp_path)))

    async with (
        serving_process(tmp_path, env) as server,  # migrates to the newest migration first
        httpx.AsyncClient(timeout=30) as client,
    ):
        ready = await client.get(f"{server.base_url}/ready")
        bookmarks = await client.get(
            f"{server.base_url}/api/v1/bookmarks", headers=await signed_in(client, server)
        )
        log = log_tail(server.log_path, lines=1000)

    assert_problem(ready, 503, "schema_not_ready")
    assert "(no migration creates them): table bookmarks." in ready.json()["detail"]
    assert (
        "not ready: missing from the database (no migration creates them): table bookmarks" in log
    )
    assert_problem(bookmarks, 500, "internal_error")


async def test_a_database_migrated_ahead_of_the_code_keeps_it_ready(
    empty_database: EmptyDatabase, tmp_path: Path
) -> None:
    newer = copy_repository(tmp_path / "newer-release")
    head = migrations.head_revision()
    (newer / "migrations" / "versions" / "9001_later_release.py").write_text(
        LATER_RELEASE_MIGRATION.format(head=head)
    )
    newer_env = running_in(newer, server_env(empty_database.url, DATA_DIR=str(tmp_path)))
    upgraded = await run_program(ALEMBIC, "upgrade", "head", env=newer_env, cwd=newer)
    assert upgraded.returncode == 0, upgraded.stderr

    # This repository's code, one release older; serve would migrate (AUTO_MIGRATE=true).
    async with (
        running_server(empty_database.url, tmp_path, env={"DATA_DIR": str(tmp_path)}) as server,
        httpx.AsyncClient(timeout=30) as client,
    ):
        ready = await client.get(f"{server.base_url}/ready")
        me = await client.get(
            f"{server.base_url}/api/v1/users/me", headers=await signed_in(client, server)
        )
        log = log_tail(server.log_path, lines=1000)

    assert ready.status_code == 200, ready.text
    assert me.status_code == 200, me.text
    assert "the database is at 9001, ahead of this code: not migrating" in log
