"""Does `GET /users` cost as much 50,000 users deep as on its first page? Per sort, both databases.

    .venv/bin/python bench/explain_pages.py [--users 100000] [--depth 50000] [--runs 300]
                                            [--databases sqlite,postgresql]
                                            [--postgres postgresql://postgres@127.0.0.1/test]

For each database (SQLite in a temporary folder; PostgreSQL in a scratch database on
--postgres, dropped afterwards): migrate to head, seed --users users (bench/seed.py) and
ANALYZE. For each sort, take the cursor --depth users in (the slice's own next_cursor
after --depth rows: what paging there through the API gives) and capture the SQL that
the list_users slice sends for the first page and for that deep one, at the API's
default limit (20), statement and parameters exactly as they reach the driver. Then:
- the plans: PostgreSQL EXPLAIN (ANALYZE, BUFFERS) of each, prepared as the driver
  prepares it (custom and generic plan, as bench/explain_search.py); SQLite EXPLAIN
  QUERY PLAN;
- the database's time, median of --runs: PostgreSQL's planning and execution times
  (EXPLAIN ANALYZE, custom plan); SQLite's, the statement run and fetched by sqlite3;
- the slice's time, median of --runs, first and deep pages interleaved: wall and CPU
  time of one list_users() call in its read session (cursor opened, query built, sent,
  rows made into the page). The route around it (the admin's token, the response) is
  the same for both pages.
Prints everything.
"""

import argparse
import asyncio
import re
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

import asyncpg
from sqlalchemy import event

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.explain_search import PLAN_MODES, Statement, explain
from bench.run import _postgres_database, _prepared, add_postgres_argument
from features.list_users.slice import Sort, list_users
from kernel.db import Database
from kernel.pages import CursorCodec
from kernel.settings import Settings, load_settings

LIMIT = 20  # the route's default
_TIMES = re.compile(r"Planning Time: ([\d.]+) ms.*Execution Time: ([\d.]+) ms", re.S)


@dataclass
class Page:
    """One page of one sort: its cursor, its SQL, and the slice's times (seconds)."""

    cursor: str | None
    statement: Statement = ("", ())
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)


def _median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000


async def _list(database: Database, codec: CursorCodec, sort: Sort, **page: Any) -> Any:
    async with database.session(writes=False) as session:
        return await list_users(
            session, codec, q=None, is_active=None, sort=sort, include_total=False, **page
        )


async def pages_of(settings: Settings, sort: Sort, depth: int, runs: int) -> dict[str, Page]:
    """The first and the deep page of `sort`: their SQL, and the slice timed on each."""
    database = Database(settings)
    codec = CursorCodec(settings.signing_key, "list_users")
    sent: list[Statement] = []

    def record(*args: Any) -> None:
        _, _, statement, parameters, _, _ = args
        sent.append((statement, tuple(parameters)))

    try:
        walked = await _list(database, codec, sort, limit=depth, cursor=None)
        pages = {"first": Page(None), "deep": Page(walked.next_cursor)}
        event.listen(database.engine.sync_engine, "before_cursor_execute", record)
        for page in pages.values():
            sent.clear()
            await _list(database, codec, sort, limit=LIMIT, cursor=page.cursor)
            page.statement = next(s for s in sent if s[0].lstrip().upper().startswith("SELECT"))
        event.remove(database.engine.sync_engine, "before_cursor_execute", record)
        for _ in range(runs):
            for page in pages.values():
                wall, cpu = time.perf_counter(), time.process_time()
                await _list(database, codec, sort, limit=LIMIT, cursor=page.cursor)
                page.wall.append(time.perf_counter() - wall)
                page.cpu.append(time.process_time() - cpu)
    finally:
        await database.dispose()
    return pages


async def postgres_times(dsn: str, statement: Statement, runs: int) -> tuple[float, float]:
    """Median planning and execution time (ms) of the statement planned for its values (a
    prepared EXPLAIN plans its query anew at each execution, with the parameters bound)."""
    sql, values = statement
    connection = await asyncpg.connect(dsn)
    planning, execution = [], []
    try:
        prepared = await connection.prepare(f"EXPLAIN (ANALYZE, SUMMARY, TIMING OFF) {sql}")
        for _ in range(runs):
            found = _TIMES.search("\n".join(row[0] for row in await prepared.fetch(*values)))
            assert found, "EXPLAIN ANALYZE printed no times"
            planning.append(float(found[1]))
            execution.append(float(found[2]))
    finally:
        await connection.close()
    return statistics.median(planning), statistics.median(execution)


def sqlite_plan_and_time(path: Path, statement: Statement, runs: int) -> tuple[str, float]:
    """EXPLAIN QUERY PLAN, and the median time (ms) to run and fetch the statement."""
    sql, values = statement
    connection = sqlite3.connect(path)
    try:
        plan = "\n".join(row[3] for row in connection.execute(f"EXPLAIN QUERY PLAN {sql}", values))
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            connection.execute(sql, values).fetchall()
            times.append(time.perf_counter() - started)
    finally:
        connection.close()
    return plan, _median_ms(times)


def _print_slice(sort: str, pages: dict[str, Page]) -> None:
    first, deep = pages["first"], pages["deep"]
    wall = _median_ms(deep.wall) / _median_ms(first.wall)
    cpu = _median_ms(deep.cpu) / _median_ms(first.cpu)
    print(
        f"-- slice, sort={sort}: first {_median_ms(first.wall):.3f} ms wall "
        f"{_median_ms(first.cpu):.3f} ms CPU; deep {_median_ms(deep.wall):.3f} ms wall "
        f"{_median_ms(deep.cpu):.3f} ms CPU; deep/first wall {wall:.2f} CPU {cpu:.2f}\n"
    )


async def report(
    settings: Settings, args: argparse.Namespace, database_report: Callable[[Statement], Any]
) -> None:
    for sort in get_args(Sort):
        pages = await pages_of(settings, sort, args.depth, args.runs)
        for name, page in pages.items():
            sql, values = page.statement
            print(f"--- sort={sort}, {name} page:\n{sql}\n-- parameters: {values}\n")
            await database_report(page.statement)
        _print_slice(sort, pages)


async def postgresql(args: argparse.Namespace) -> None:
    async with AsyncExitStack() as stack:
        url = await _postgres_database(args.postgres, stack)
        await _prepared(url, args.users)
        settings = load_settings(database_url=url)
        connection = await asyncpg.connect(url)
        try:
            await connection.execute("ANALYZE users")
        finally:
            await connection.close()

        async def database_report(statement: Statement) -> None:
            for mode in PLAN_MODES:
                print(f"-- {mode}\n{await explain(url, statement, mode)}\n")
            planning, execution = await postgres_times(url, statement, args.runs)
            print(f"-- median of {args.runs}: planning {planning:.3f} ms, ", end="")
            print(f"execution {execution:.3f} ms\n")

        print(f"=== postgresql, {args.users} users, depth {args.depth}\n")
        await report(settings, args, database_report)


async def sqlite(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "pages.db"
        url = f"sqlite:///{path}"
        await _prepared(url, args.users)
        settings = load_settings(database_url=url)
        with sqlite3.connect(path) as connection:
            connection.execute("ANALYZE")

        async def database_report(statement: Statement) -> None:
            plan, median = sqlite_plan_and_time(path, statement, args.runs)
            print(f"-- EXPLAIN QUERY PLAN\n{plan}\n-- median of {args.runs}: {median:.3f} ms\n")

        print(f"=== sqlite, {args.users} users, depth {args.depth}\n")
        await report(settings, args, database_report)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--depth", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--databases", default="sqlite,postgresql")
    add_postgres_argument(parser)
    args = parser.parse_args()
    for name in (name.strip() for name in args.databases.split(",")):
        await {"sqlite": sqlite, "postgresql": postgresql}[name](args)


if __name__ == "__main__":
    asyncio.run(main())
