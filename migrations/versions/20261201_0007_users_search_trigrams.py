"""users.search_key: a trigram index on PostgreSQL, so a search (`q`) reads no whole table

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 17:45:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # SQLite: nothing. It has no trigram index, and none of its own indexes serves a LIKE
    # whose pattern starts with '%'; a search there reads the table, as before.
    if op.get_bind().dialect.name != "postgresql":
        return
    # pg_trgm is a trusted extension since PostgreSQL 13: a role with CREATE on the
    # database (its owner) may create it without being a superuser.
    op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    # IF NOT EXISTS: on a large table an operator may build it first, without blocking
    # writes, by CREATE INDEX CONCURRENTLY (which cannot run in this transaction).
    op.create_index(
        "ix_users_search_key",
        "users",
        ["search_key"],
        postgresql_using="gin",
        postgresql_ops={"search_key": "gin_trgm_ops"},
        if_not_exists=True,
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.drop_index("ix_users_search_key", table_name="users")
    # The extension stays: it may have been there before (IF NOT EXISTS), and dropping
    # it would drop whatever else uses it.
