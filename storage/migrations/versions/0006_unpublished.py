"""A stored program may have no version number: a program file that was run but never published.

Runs of a file are recorded against the program's content (its hash), which must be stored so the
execution can be rebuilt and resumed; it becomes a numbered version of its name only when published
(``stepbridge programs add``, ``run --publish``, ``Store.publish``). ``program_versions.version``
becomes nullable; ``UNIQUE (name, version)`` still holds (NULLs are distinct).

On SQLite the NOT NULL is removed from the table's schema text in place (SQLite's documented
procedure for dropping a NOT NULL constraint, which does not touch stored rows): rebuilding the
table would trip the RESTRICT foreign keys of executions, aliases and batches.

Revision ID: 0006_unpublished
Revises: 0005_evaluations
Create Date: 2026-11-29
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0006_unpublished'
down_revision: str | None = '0005_evaluations'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NOT_NULL = re.compile(r'(\bversion\s+INTEGER)\s+NOT\s+NULL', re.IGNORECASE)


def _sqlite_set_schema(conn: sa.Connection, sql: str) -> None:
    version = conn.exec_driver_sql("PRAGMA schema_version").scalar_one()
    conn.exec_driver_sql("PRAGMA writable_schema = ON")
    conn.execute(sa.text("UPDATE sqlite_master SET sql = :sql WHERE type = 'table' AND name = 'program_versions'"),
                 {"sql": sql})
    conn.exec_driver_sql(f"PRAGMA schema_version = {int(version) + 1}")
    conn.exec_driver_sql("PRAGMA writable_schema = OFF")


def upgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name == "sqlite":
        sql = conn.execute(sa.text("SELECT sql FROM sqlite_master WHERE type = 'table' AND "
                                   "name = 'program_versions'")).scalar_one()
        new, count = _NOT_NULL.subn(r'\1', sql)
        if count != 1:
            raise RuntimeError(f"unexpected program_versions schema: {sql}")
        _sqlite_set_schema(conn, new)
    else:
        op.alter_column('program_versions', 'version', existing_type=sa.Integer(), nullable=True)


def downgrade() -> None:
    # Number the unpublished programs after their name's versions (in the order they were stored),
    # then make the column NOT NULL again.
    conn = op.get_bind()
    rows = conn.execute(sa.text("SELECT hash, name FROM program_versions WHERE version IS NULL "
                                "ORDER BY created_at, hash")).all()
    for digest, name in rows:
        top = conn.execute(sa.text("SELECT MAX(version) FROM program_versions WHERE name = :n"),
                           {"n": name}).scalar()
        conn.execute(sa.text("UPDATE program_versions SET version = :v WHERE hash = :h"),
                     {"v": (top or 0) + 1, "h": digest})
    if conn.dialect.name == "sqlite":
        sql = conn.execute(sa.text("SELECT sql FROM sqlite_master WHERE type = 'table' AND "
                                   "name = 'program_versions'")).scalar_one()
        new, count = re.subn(r'(\bversion\s+INTEGER)(\s*,)', r'\1 NOT NULL\2', sql, count=1, flags=re.IGNORECASE)
        if count != 1:
            raise RuntimeError(f"unexpected program_versions schema: {sql}")
        _sqlite_set_schema(conn, new)
    else:
        op.alter_column('program_versions', 'version', existing_type=sa.Integer(), nullable=False)
