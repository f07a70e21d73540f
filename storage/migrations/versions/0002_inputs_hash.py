"""Executions remember a hash of their inputs: an idempotency key is bound to the inputs it was first
used with (reusing it with different inputs is refused instead of returning the first result).

Revision ID: 0002_inputs_hash
Revises: 0001_initial
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0002_inputs_hash'
down_revision: str | None = '0001_initial'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Existing rows keep NULL: their inputs were never hashed, so their keys are not checked.
    with op.batch_alter_table('executions', schema=None, recreate='never') as batch_op:
        batch_op.add_column(sa.Column('inputs_hash', sa.String(length=64), nullable=True))


def downgrade() -> None:
    # Never rebuild the table: on SQLite a rebuild drops ``executions``, and with foreign keys on that
    # deletes the trace steps and status history (ON DELETE CASCADE). SQLite >= 3.35 drops a column
    # in place.
    with op.batch_alter_table('executions', schema=None, recreate='never') as batch_op:
        batch_op.drop_column('inputs_hash')
