"""What users and sessions cost on disk in PostgreSQL: the capacity plan's table sizes.

    .venv/bin/python bench/table_sizes.py [--users 100000] [--postgres DSN]

Creates a scratch database, migrates it, seeds --users users (bench/seed.py) and one
session per user with a typical mobile User-Agent, VACUUMs, prints the heap and index
sizes of both tables and bytes per row, and drops the database.
"""

import argparse
import asyncio
import os
import secrets
import sys
import uuid
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.run import add_postgres_argument
from bench.seed import seed
from kernel.db import Database
from kernel.migrations import upgrade
from kernel.settings import load_settings

SIZES = """
SELECT pg_relation_size($1::regclass) AS heap, pg_indexes_size($1::regclass) AS indexes
"""
INDEXES = """
SELECT indexrelid::regclass::text AS name, pg_relation_size(indexrelid) AS size
FROM pg_index WHERE indrelid = $1::regclass ORDER BY name
"""
ONE_SESSION_EACH = """
INSERT INTO sessions (id, user_id, salt, generation, created_at, last_used_at, expires_at,
                      user_agent, ip)
SELECT gen_random_uuid(), id, md5(random()::text), 0, now(), now(), now() + interval '30 days',
       'Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15',
       '203.0.113.7'
FROM users
"""


async def _report(connection: asyncpg.Connection, table: str) -> None:
    rows = await connection.fetchval(f"SELECT count(*) FROM {table}")  # noqa: S608 (ours)
    sizes = await connection.fetchrow(SIZES, table)
    heap, indexes = sizes["heap"], sizes["indexes"]
    print(
        f"{table}: {rows} rows, heap {heap / 2**20:.1f} MiB, indexes {indexes / 2**20:.1f} MiB,"
        f" {(heap + indexes) / rows:.0f} bytes per row"
    )
    for index in await connection.fetch(INDEXES, table):
        print(f"  {index['name']}: {index['size'] / 2**20:.1f} MiB")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    add_postgres_argument(parser)
    args = parser.parse_args()
    os.environ.setdefault("SECRET_KEY", secrets.token_urlsafe(48))
    name = f"userapi_sizes_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(args.postgres)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = f"{args.postgres.rsplit('/', 1)[0]}/{name}"
    try:
        settings = load_settings(database_url=url.replace("postgresql://", "postgresql+asyncpg://"))
        database = Database(settings)
        try:
            await upgrade(database)
        finally:
            await database.dispose()
        await seed(settings, args.users)
        connection = await asyncpg.connect(url)
        try:
            await connection.execute(ONE_SESSION_EACH)
            await connection.execute("VACUUM ANALYZE users, sessions")
            for table in ("users", "sessions"):
                await _report(connection, table)
        finally:
            await connection.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
