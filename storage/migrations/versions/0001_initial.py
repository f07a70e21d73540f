"""Initial schema: programs, versions, aliases, executions, steps, status history.

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from stepbridge.storage.types import JSONType, UTCDateTime

revision: str = '0001_initial'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('programs',
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('created_at', UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    op.create_table('program_versions',
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('parent_hash', sa.String(length=64), nullable=True),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('message', sa.Text(), nullable=True),
    sa.Column('program', JSONType, nullable=False),
    sa.Column('base_dir', sa.Text(), nullable=True),
    sa.Column('created_at', UTCDateTime(), nullable=False),
    sa.CheckConstraint("source IN ('authored', 'imported', 'optimized')", name='ck_program_versions_source'),
    sa.CheckConstraint('version >= 1', name='ck_program_versions_version'),
    sa.ForeignKeyConstraint(['name'], ['programs.name'], ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('hash'),
    sa.UniqueConstraint('name', 'version', name='uq_program_versions_name_version')
    )
    op.create_table('aliases',
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('alias', sa.String(length=100), nullable=False),
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.Column('updated_at', UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['hash'], ['program_versions.hash'], ondelete='RESTRICT'),
    sa.ForeignKeyConstraint(['name'], ['programs.name'], ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('name', 'alias')
    )
    op.create_table('executions',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('program_hash', sa.String(length=64), nullable=False),
    sa.Column('program_name', sa.String(length=200), nullable=False),
    sa.Column('backend', sa.String(length=200), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('inputs', JSONType, nullable=False),
    sa.Column('outputs', JSONType, nullable=True),
    sa.Column('error', JSONType, nullable=True),
    sa.Column('usage', JSONType, nullable=True),
    sa.Column('options', JSONType, nullable=True),
    sa.Column('environment', JSONType, nullable=True),
    sa.Column('duration_ms', sa.Float(), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('worker', sa.String(length=200), nullable=True),
    sa.Column('idempotency_key', sa.String(length=200), nullable=True),
    sa.Column('owner_host', sa.String(length=255), nullable=True),
    sa.Column('owner_pid', sa.Integer(), nullable=True),
    sa.Column('owner_marker', sa.String(length=200), nullable=True),
    sa.Column('created_at', UTCDateTime(), nullable=False),
    sa.Column('started_at', UTCDateTime(), nullable=True),
    sa.Column('finished_at', UTCDateTime(), nullable=True),
    sa.Column('updated_at', UTCDateTime(), nullable=False),
    sa.CheckConstraint(
        "status IN ('pending', 'running', 'succeeded', 'failed', 'cancelled', 'interrupted')",
        name='ck_executions_status',
    ),
    sa.ForeignKeyConstraint(['program_hash'], ['program_versions.hash'], ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('idempotency_key', name='uq_executions_idempotency_key')
    )
    with op.batch_alter_table('executions', schema=None) as batch_op:
        batch_op.create_index('ix_executions_created_at', ['created_at'], unique=False)
        batch_op.create_index('ix_executions_program_hash', ['program_hash'], unique=False)
        batch_op.create_index(
            'ix_executions_program_name_created', ['program_name', 'created_at'], unique=False
        )
        batch_op.create_index('ix_executions_status_created', ['status', 'created_at'], unique=False)

    op.create_table('execution_status_history',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('execution_id', sa.String(length=64), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('from_status', sa.String(length=16), nullable=True),
    sa.Column('to_status', sa.String(length=16), nullable=False),
    sa.Column('note', sa.Text(), nullable=True),
    sa.Column('at', UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['execution_id'], ['executions.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('execution_status_history', schema=None) as batch_op:
        batch_op.create_index('ix_execution_status_history_execution', ['execution_id', 'id'], unique=False)

    op.create_table('execution_steps',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('execution_id', sa.String(length=64), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('step', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('module', sa.String(length=200), nullable=True),
    sa.Column('module_type', sa.String(length=50), nullable=True),
    sa.Column('duration_ms', sa.Float(), nullable=True),
    sa.Column('error', JSONType, nullable=True),
    sa.Column('data', JSONType, nullable=False),
    sa.Column('created_at', UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['execution_id'], ['executions.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('execution_id', 'attempt', 'seq', name='uq_execution_steps_seq')
    )


def downgrade() -> None:
    op.drop_table('execution_steps')
    with op.batch_alter_table('execution_status_history', schema=None) as batch_op:
        batch_op.drop_index('ix_execution_status_history_execution')

    op.drop_table('execution_status_history')
    with op.batch_alter_table('executions', schema=None) as batch_op:
        batch_op.drop_index('ix_executions_status_created')
        batch_op.drop_index('ix_executions_program_name_created')
        batch_op.drop_index('ix_executions_program_hash')
        batch_op.drop_index('ix_executions_created_at')

    op.drop_table('executions')
    op.drop_table('aliases')
    op.drop_table('program_versions')
    op.drop_table('programs')
