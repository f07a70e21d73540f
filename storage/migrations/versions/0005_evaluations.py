"""Evaluations and optimizations as stored resources (DESIGN 11): ``evaluations`` with their
``evaluation_rows``, ``optimizations`` with their ``optimization_candidates``. New tables only.

Revision ID: 0005_evaluations
Revises: 0004_data_files
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from stepbridge.storage.types import JSONType, UTCDateTime

revision: str = '0005_evaluations'
down_revision: str | None = '0004_data_files'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('evaluations',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('program_hash', sa.String(length=64), nullable=False),
    sa.Column('program_name', sa.String(length=200), nullable=False),
    sa.Column('backend', sa.String(length=200), nullable=False),
    sa.Column('metric', sa.String(length=500), nullable=False),
    sa.Column('lm', sa.String(length=200), nullable=True),
    sa.Column('dataset_hash', sa.String(length=64), nullable=False),
    sa.Column('dataset_source', sa.Text(), nullable=True),
    sa.Column('fields', JSONType, nullable=False),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('batch_id', sa.String(length=64), nullable=True),
    sa.Column('summary', JSONType, nullable=True),
    sa.Column('created_at', UTCDateTime(), nullable=False),
    sa.Column('updated_at', UTCDateTime(), nullable=False),
    sa.CheckConstraint('size >= 0', name='ck_evaluations_size'),
    sa.ForeignKeyConstraint(['program_hash'], ['program_versions.hash'], ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('evaluations', schema=None) as batch_op:
        batch_op.create_index('ix_evaluations_created_at', ['created_at'], unique=False)

    op.create_table('evaluation_rows',
    sa.Column('evaluation_id', sa.String(length=64), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('example', JSONType, nullable=False),
    sa.Column('done', sa.Boolean(), nullable=False),
    sa.Column('execution_id', sa.String(length=64), nullable=True),
    sa.Column('prediction', JSONType, nullable=True),
    sa.Column('score', sa.Float(), nullable=True),
    sa.Column('error', JSONType, nullable=True),
    sa.Column('duration_ms', sa.Float(), nullable=True),
    sa.Column('tokens', sa.Integer(), nullable=True),
    sa.CheckConstraint('position >= 0', name='ck_evaluation_rows_position'),
    sa.ForeignKeyConstraint(['evaluation_id'], ['evaluations.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('evaluation_id', 'position')
    )

    op.create_table('optimizations',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('program_hash', sa.String(length=64), nullable=False),
    sa.Column('program_name', sa.String(length=200), nullable=False),
    sa.Column('optimizer', sa.String(length=100), nullable=False),
    sa.Column('settings', JSONType, nullable=False),
    sa.Column('metric', sa.String(length=500), nullable=False),
    sa.Column('backend', sa.String(length=200), nullable=False),
    sa.Column('lm', sa.String(length=200), nullable=True),
    sa.Column('train_hash', sa.String(length=64), nullable=False),
    sa.Column('val_hash', sa.String(length=64), nullable=True),
    sa.Column('data', JSONType, nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('progress', JSONType, nullable=False),
    sa.Column('checkpoint', JSONType, nullable=True),
    sa.Column('result_hash', sa.String(length=64), nullable=True),
    sa.Column('score_before', sa.Float(), nullable=True),
    sa.Column('score_after', sa.Float(), nullable=True),
    sa.Column('error', JSONType, nullable=True),
    sa.Column('created_at', UTCDateTime(), nullable=False),
    sa.Column('updated_at', UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['program_hash'], ['program_versions.hash'], ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('optimizations', schema=None) as batch_op:
        batch_op.create_index('ix_optimizations_created_at', ['created_at'], unique=False)

    op.create_table('optimization_candidates',
    sa.Column('optimization_id', sa.String(length=64), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('label', sa.String(length=200), nullable=False),
    sa.Column('modules', JSONType, nullable=False),
    sa.Column('score', sa.Float(), nullable=True),
    sa.Column('details', JSONType, nullable=True),
    sa.Column('created_at', UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['optimization_id'], ['optimizations.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('optimization_id', 'seq')
    )


def downgrade() -> None:
    op.drop_table('optimization_candidates')
    with op.batch_alter_table('optimizations', schema=None) as batch_op:
        batch_op.drop_index('ix_optimizations_created_at')
    op.drop_table('optimizations')
    op.drop_table('evaluation_rows')
    with op.batch_alter_table('evaluations', schema=None) as batch_op:
        batch_op.drop_index('ix_evaluations_created_at')
    op.drop_table('evaluations')
