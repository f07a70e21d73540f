"""Data files by content: ``data_files`` (sha256 -> bytes) and ``program_data`` (version, corpus -> file).

A stored program's corpora used to be read from ``program_versions.base_dir``, a folder no hash
covers, so whoever could write a row chose what the runner read. Now publishing stores each corpus
by content and loading verifies it. New tables only (``program_versions`` is not altered); rows
published before this revision have no data files and their ``base_dir`` is ignored.

Revision ID: 0004_data_files
Revises: 0003_batches
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from stepbridge.storage.types import UTCDateTime

revision: str = '0004_data_files'
down_revision: str | None = '0003_batches'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('data_files',
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('content', sa.LargeBinary(), nullable=False),
    sa.Column('created_at', UTCDateTime(), nullable=False),
    sa.CheckConstraint('size >= 0', name='ck_data_files_size'),
    sa.PrimaryKeyConstraint('hash')
    )
    op.create_table('program_data',
    sa.Column('program_hash', sa.String(length=64), nullable=False),
    sa.Column('corpus', sa.String(length=1000), nullable=False),
    sa.Column('data_hash', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['data_hash'], ['data_files.hash'], ondelete='RESTRICT'),
    sa.ForeignKeyConstraint(['program_hash'], ['program_versions.hash'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('program_hash', 'corpus')
    )


def downgrade() -> None:
    op.drop_table('program_data')
    op.drop_table('data_files')
