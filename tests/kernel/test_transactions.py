"""The kernel owns the transaction (DESIGN.md rule 6): a failed commit never follows a 2xx.

API.md "Limits": a 2xx is sent only after its change is committed.

A probe slice, in a temporary folder of slices, adds a user and
then a row of a probe table whose foreign key to users is DEFERRABLE INITIALLY DEFERRED, on
both databases. Pointing that row at a user that does not exist lets every statement and
flush succeed; only COMMIT fails. Pointing it at the new user commits normally (the control).
"""

import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, text
from sqlmodel import col

from kernel.db import Database
from kernel.settings import Settings
from kernel.users import User
from tests.factories import Account, assert_problem, make_user, registration, serving
from tests.kernel.helpers import slice_folder, unique_name

PROBE_SLICE = '''
"""Probe for tests/kernel/test_transactions.py: writes whose foreign key is checked at commit."""

import uuid

from fastapi import APIRouter
from sqlalchemy import Uuid, bindparam, text

from kernel.db import SessionDep, outside_transaction
from kernel.deps import CurrentUser
from kernel.users import User

router = APIRouter()
# Emails whose handler ran to its end, every flush having succeeded.
handled: list[str] = []


@router.post("/{path}", status_code=201)
async def probe(_: CurrentUser, session: SessionDep, email: str, dangling: bool) -> dict[str, str]:
    """Add a user, then a probe row pointing at it (or, if dangling, at nobody)."""
    user = User(email=email, password_hash="unused", first_name="Probe", last_name="Probe")
    session.add(user)
    await session.flush()
    statement = text("INSERT INTO {table} (user_id) VALUES (:user_id)").bindparams(
        bindparam("user_id", type_=Uuid())
    )
    await session.execute(statement, {{"user_id": uuid.uuid4() if dangling else user.id}})
    await session.flush()
    handled.append(email)
    return {{"email": email}}


@router.post("/{path}/slow-work-after-a-write", status_code=201)
async def slow_work_after_a_write(
    _: CurrentUser, session: SessionDep, email: str
) -> dict[str, str]:
    """Write, then leave the transaction for slow work: half a request would be committed."""
    session.add(User(email=email, password_hash="unused", first_name="Probe", last_name="Probe"))
    await session.flush()
    async with outside_transaction(session):
        pass
    return {{"email": email}}
'''

PROBE_TABLE = {
    "sqlite": "CREATE TABLE {table} (id INTEGER PRIMARY KEY, user_id CHAR(32) NOT NULL"
    " REFERENCES users (id) DEFERRABLE INITIALLY DEFERRED)",
    "postgresql": "CREATE TABLE {table} (id SERIAL PRIMARY KEY, user_id UUID NOT NULL"
    " REFERENCES users (id) DEFERRABLE INITIALLY DEFERRED)",
}


@dataclass(frozen=True)
class Probe:
    """The probe slice as a client calls it; `database` is our own engine, not the app's."""

    path: str
    table: str
    module: str
    http: httpx.AsyncClient
    database: Database
    caller: Account

    async def post(self, email: str, *, dangling: bool) -> httpx.Response:
        params: dict[str, Any] = {"email": email, "dangling": str(dangling).lower()}
        return await self.http.post(self.path, params=params, headers=self.caller.headers)

    @property
    def handled(self) -> list[str]:
        handled: list[str] = sys.modules[self.module].handled
        return handled

    async def users_with(self, email: str) -> int:
        async with self.database.session(writes=False) as session:
            count = await session.scalar(
                select(func.count()).select_from(User).where(col(User.email) == email)
            )
        return int(count or 0)

    async def rows(self) -> int:
        query = text(f"SELECT count(*) FROM {self.table}")  # noqa: S608 (the probe's own table)
        async with self.database.session(writes=False) as session:
            count = await session.scalar(query)
        return int(count or 0)


async def _execute(database: Database, statement: str) -> None:
    async with database.engine.begin() as connection:
        await connection.execute(text(statement))


@pytest.fixture
async def probe(settings: Settings, more_features: Path) -> AsyncIterator[Probe]:
    name = unique_name("kernel_commit_probe")
    table = f"{name}_rows"
    database = Database(settings)
    dialect = "sqlite" if database.is_sqlite else "postgresql"
    await _execute(database, PROBE_TABLE[dialect].format(table=table))
    source = PROBE_SLICE.format(path=name.replace("_", "-"), table=table)
    try:
        with slice_folder(more_features, name, source):
            async with serving(settings) as (_, http):
                yield Probe(
                    path=f"/api/v1/{name.replace('_', '-')}",
                    table=table,
                    module=f"features.{name}.slice",
                    http=http,
                    database=database,
                    caller=await make_user(http),
                )
    finally:
        await _execute(database, f"DROP TABLE IF EXISTS {table}")
        await database.dispose()


def new_email() -> str:
    return f"probe-{uuid.uuid4().hex[:10]}@example.com"


async def test_a_write_that_commits_answers_2xx(probe: Probe) -> None:
    # The control: the probe's writes are fine when the foreign key holds.
    response = await probe.post(new_email(), dangling=False)

    assert response.status_code == 201, response.text


async def test_a_write_that_commits_is_persisted(probe: Probe) -> None:
    email = new_email()
    await probe.post(email, dangling=False)

    again = await probe.http.post("/api/v1/auth/register", json=registration(email=email))

    assert_problem(again, 409, "email_taken")
    assert await probe.rows() == 1


async def test_a_failed_commit_answers_500_problem_not_2xx(probe: Probe) -> None:
    email = new_email()

    response = await probe.post(email, dangling=True)

    assert probe.handled == [email]  # the handler and its flushes succeeded ...
    assert_problem(response, 500, "internal_error")  # ... the commit did not


async def test_a_failed_commit_persists_nothing(probe: Probe) -> None:
    email = new_email()
    await probe.post(email, dangling=True)

    assert await probe.users_with(email) == 0
    assert await probe.rows() == 0


async def test_after_a_failed_commit_the_next_write_succeeds(probe: Probe) -> None:
    email = new_email()
    await probe.post(email, dangling=True)

    response = await probe.http.post("/api/v1/auth/register", json=registration(email=email))

    assert response.status_code == 201, response.text  # and the email was still free


async def test_a_failed_commit_reveals_no_sql(probe: Probe) -> None:
    response = await probe.post(new_email(), dangling=True)

    body = response.text.casefold()
    for leak in ("insert", "foreign key", probe.table, "traceback", "integrityerror"):
        assert leak not in body


async def test_slow_work_outside_the_transaction_after_a_write_is_refused_and_undone(
    probe: Probe,
) -> None:
    email = new_email()

    response = await probe.http.post(
        f"{probe.path}/slow-work-after-a-write",
        params={"email": email},
        headers=probe.caller.headers,
    )

    # outside_transaction() would have committed the write half-way: it refuses instead,
    # and the whole request rolls back.
    assert_problem(response, 500, "internal_error")
    assert await probe.users_with(email) == 0
