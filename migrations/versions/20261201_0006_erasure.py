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


def _trigger_function(on_update: str) -> str:
    """The trigger function of 0005: a DELETE only past the retention the purge sets;
    then `on_update`, the rule for an UPDATE."""
    return f"""
CREATE OR REPLACE FUNCTION security_events_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    retention_days integer;
    personal_keys text[] := ARRAY['email'];
BEGIN
    IF TG_OP = 'DELETE' THEN
        retention_days := NULLIF(current_setting('userapi.audit_retention_days', true), '')::integer;
        IF retention_days >= 1 AND OLD.at < now() - make_interval(days => retention_days) THEN
            RETURN OLD;
        END IF;
        RAISE EXCEPTION 'security events are deleted only past their retention'
            USING ERRCODE = '42501';
    END IF;
{on_update}
END;
$$
"""


# One UPDATE more than 0005: erasure's (kernel.events.scrub_events), and only for the
# events it empties. The account the event names must already be erased (its tombstone
# written first, in the same transaction), or the event holds a typed email; then the IP
# and user agent become NULL and the personal detail keys go (personal_keys: the
# personal names of kernel.events.DETAIL_NAMES; a test checks they agree). The type,
# time, ids and every other detail stay as they were.
APPEND_ONLY = _trigger_function("""
    IF NEW.id = OLD.id AND NEW.type = OLD.type AND NEW.at = OLD.at
        AND NEW.actor_id IS NOT DISTINCT FROM OLD.actor_id
        AND NEW.user_id IS NOT DISTINCT FROM OLD.user_id
        AND NEW.ip IS NULL AND NEW.user_agent IS NULL
        AND NEW.details = OLD.details - personal_keys
        AND (OLD.details ?| personal_keys OR EXISTS (
            SELECT 1 FROM users
            WHERE users.id IN (OLD.user_id, OLD.actor_id) AND users.erased_at IS NOT NULL
        )) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'security events are never changed, only emptied when their account is erased'
        USING ERRCODE = '42501';""")
# 0005's rule, for the downgrade.
UPDATE_NEVER = _trigger_function(
    "    RAISE EXCEPTION 'security events are never updated' USING ERRCODE = '42501';"
)


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
