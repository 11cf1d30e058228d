"""security_events: the append-only audit trail, guarded on PostgreSQL by a trigger

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 13:34:06.029062
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Whatever the application sends, an event is never changed, and deleted only when it
# is older than the retention that `userapi purge-expired` sets for its own transaction
# (kernel.events.RETENTION_SETTING). 42501 (insufficient_privilege): a refusal, never
# mistaken for an outage or for a constraint a client could have violated.
APPEND_ONLY = """
CREATE FUNCTION security_events_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    retention_days integer;
BEGIN
    IF TG_OP = 'DELETE' THEN
        retention_days := NULLIF(current_setting('userapi.audit_retention_days', true), '')::integer;
        IF retention_days >= 1 AND OLD.at < now() - make_interval(days => retention_days) THEN
            RETURN OLD;
        END IF;
        RAISE EXCEPTION 'security events are deleted only past their retention'
            USING ERRCODE = '42501';
    END IF;
    RAISE EXCEPTION 'security events are never updated' USING ERRCODE = '42501';
END;
$$
"""


def upgrade() -> None:
    op.create_table(
        "security_events",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor_id", sa.Uuid(), nullable=True),
        sa.Column("user_id", sa.Uuid(), nullable=True),
        sa.Column("ip", sa.String(length=45), nullable=True),
        sa.Column("user_agent", sa.String(length=256), nullable=True),
        sa.Column(
            "details",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["actor_id"], ["users.id"], name=op.f("fk_security_events_actor_id_users")
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_security_events_user_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_security_events")),
    )
    with op.batch_alter_table("security_events", schema=None) as batch_op:
        batch_op.create_index("ix_security_events_at_id", ["at", "id"], unique=False)
        batch_op.create_index("ix_security_events_type_at_id", ["type", "at", "id"], unique=False)
        batch_op.create_index(
            "ix_security_events_user_id_at_id", ["user_id", "at", "id"], unique=False
        )

    if op.get_bind().dialect.name == "postgresql":
        op.execute(APPEND_ONLY)
        op.execute(
            "CREATE TRIGGER security_events_append_only BEFORE UPDATE OR DELETE "
            "ON security_events FOR EACH ROW EXECUTE FUNCTION security_events_append_only()"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER security_events_append_only ON security_events")
        op.execute("DROP FUNCTION security_events_append_only()")

    with op.batch_alter_table("security_events", schema=None) as batch_op:
        batch_op.drop_index("ix_security_events_user_id_at_id")
        batch_op.drop_index("ix_security_events_type_at_id")
        batch_op.drop_index("ix_security_events_at_id")

    op.drop_table("security_events")
