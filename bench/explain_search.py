"""Is `GET /users?q=` on PostgreSQL served by an index? The plans of its two queries.

    .venv/bin/python bench/explain_search.py [--users 100000] [--terms ada,number99999]
                                             [--postgres postgresql://postgres@127.0.0.1/test]

In a scratch database on --postgres (dropped afterwards): migrate to the revision before
the trigram index (--before), seed --users users (bench/seed.py: "ada" is in a tenth of
the names, "number99999" in one), and capture the SQL that the list_users slice sends
for each term (the first page, default sort, and include_total's count), statement and
parameters exactly as they reach asyncpg. Then EXPLAIN (ANALYZE, BUFFERS) each, prepared
as the driver prepares it: planned for the values (a custom plan, as for the first
executions of a prepared statement and for every one behind PgBouncer) and for any
values (the generic plan PostgreSQL may switch to after five). Then migrate to head (the
index), ANALYZE, and explain them again. Prints everything.
"""

import argparse
import asyncio
import sys
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import event

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.run import _postgres_database, add_postgres_argument
from bench.seed import seed
from features.list_users.slice import list_users
from kernel.db import Database
from kernel.migrations import upgrade
from kernel.pages import CursorCodec
from kernel.settings import Settings, load_settings

Statement = tuple[str, tuple[Any, ...]]
PLAN_MODES = ("force_custom_plan", "force_generic_plan")


async def issued_sql(settings: Settings, term: str) -> list[Statement]:
    """The statements one `GET /users?q=<term>&include_total=true` sends, in order."""
    database = Database(settings)
    sent: list[Statement] = []

    def record(*args: Any) -> None:
        _, _, statement, parameters, _, _ = args
        sent.append((statement, tuple(parameters)))

    event.listen(database.engine.sync_engine, "before_cursor_execute", record)
    try:
        async with database.session(writes=False) as session:
            codec = CursorCodec(settings.signing_key, "list_users")
            await list_users(
                session,
                codec,
                limit=20,
                cursor=None,
                q=term,
                is_active=None,
                sort="created_at",
                include_total=True,
            )
    finally:
        await database.dispose()
    return [(sql, values) for sql, values in sent if sql.lstrip().upper().startswith("SELECT")]


def _literal(value: Any) -> str:
    return "'" + str(value).replace("'", "''") + "'"


async def explain(dsn: str, statement: Statement, mode: str) -> str:
    sql, values = statement
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(f"SET plan_cache_mode = {mode}")
        await connection.execute(f"PREPARE listed AS {sql}")
        arguments = ", ".join(_literal(value) for value in values)
        rows = await connection.fetch(
            f"EXPLAIN (ANALYZE, BUFFERS) EXECUTE listed({arguments})" if values else sql
        )
    finally:
        await connection.close()
    return "\n".join(row[0] for row in rows)


async def report(dsn: str, settings: Settings, terms: list[str], heading: str) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute("ANALYZE users")
    finally:
        await connection.close()
    print(f"=== {heading}\n")
    for term in terms:
        for index, statement in enumerate(await issued_sql(settings, term)):
            kind = "page" if index == 0 else "count"
            print(f"--- q={term}, {kind} query:\n{statement[0]}\n-- parameters: {statement[1]}\n")
            for mode in PLAN_MODES:
                print(f"-- {mode}\n{await explain(dsn, statement, mode)}\n")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--terms", default="ada,number99999")
    parser.add_argument("--before", default="0006", help="the revision before the index")
    add_postgres_argument(parser)
    args = parser.parse_args()
    terms = [term.strip() for term in args.terms.split(",") if term.strip()]
    async with AsyncExitStack() as stack:
        url = await _postgres_database(args.postgres, stack)
        settings = load_settings(database_url=url)
        database = Database(settings)
        try:
            await upgrade(database, args.before)
            await seed(settings, args.users)
            await report(url, settings, terms, f"before: at {args.before}, {args.users} users")
            started = asyncio.get_running_loop().time()
            await upgrade(database)
            built = asyncio.get_running_loop().time() - started
            await report(url, settings, terms, f"after: at head (migrated in {built:.1f} s)")
        finally:
            await database.dispose()


if __name__ == "__main__":
    asyncio.run(main())
