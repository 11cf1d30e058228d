"""erasure: users.erased_at, outbox.forget_when_done, events that may lose personal fields

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 15:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# As in 0005, and one UPDATE more: erasure's (kernel.events.scrub_events). It may only
# take information away: the IP and user agent may become NULL and details may lose
# keys; the type, time and ids never change, and nothing is added.
APPEND_ONLY = """
CREATE OR REPLACE FUNCTION security_events_append_only() RETURNS trigger
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
    IF NEW.id = OLD.id AND NEW.type = OLD.type AND NEW.at = OLD.at
        AND NEW.actor_id IS NOT DISTINCT FROM OLD.actor_id
        AND NEW.user_id IS NOT DISTINCT FROM OLD.user_id
        AND (NEW.ip IS NULL OR NEW.ip = OLD.ip)
        AND (NEW.user_agent IS NULL OR NEW.user_agent = OLD.user_agent)
        AND OLD.details @> NEW.details THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'security events are never changed, only emptied of personal fields'
        USING ERRCODE = '42501';
END;
$$
"""

UPDATE_NEVER = """
CREATE OR REPLACE FUNCTION security_events_append_only() RETURNS trigger
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
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(sa.Column("erased_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("forget_when_done", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(APPEND_ONLY)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(UPDATE_NEVER)
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_column("forget_when_done")
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("erased_at")
