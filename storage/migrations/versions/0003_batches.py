"""Batches as recorded units: ``batches`` and ``batch_items`` (row position -> execution).

A batch's rows are recorded up front, in input order, as ``pending`` executions, so a batch killed
at any point can be continued (``stepbridge executions resume``). New tables only: ``executions``
is not altered (on SQLite that would mean a rebuild, which cascades into the trace steps).

Revision ID: 0003_batches
Revises: 0002_inputs_hash
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from stepbridge.storage.types import UTCDateTime

revision: str = '0003_batches'
down_revision: str | None = '0002_inputs_hash'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('batches',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('program_hash', sa.String(length=64), nullable=False),
    sa.Column('program_name', sa.String(length=200), nullable=False),
    sa.Column('backend', sa.String(length=200), nullable=False),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.Column('created_at', UTCDateTime(), nullable=False),
    sa.CheckConstraint('size >= 0', name='ck_batches_size'),
    sa.ForeignKeyConstraint(['program_hash'], ['program_versions.hash'], ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('batches', schema=None) as batch_op:
        batch_op.create_index('ix_batches_created_at', ['created_at'], unique=False)

    op.create_table('batch_items',
    sa.Column('batch_id', sa.String(length=64), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('execution_id', sa.String(length=64), nullable=False),
    sa.CheckConstraint('position >= 0', name='ck_batch_items_position'),
    sa.ForeignKeyConstraint(['batch_id'], ['batches.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['execution_id'], ['executions.id'], ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('batch_id', 'position'),
    sa.UniqueConstraint('execution_id', name='uq_batch_items_execution')
    )


def downgrade() -> None:
    # The executions of a batch stay (they are ordinary executions); only the grouping goes.
    op.drop_table('batch_items')
    with op.batch_alter_table('batches', schema=None) as batch_op:
        batch_op.drop_index('ix_batches_created_at')
    op.drop_table('batches')
