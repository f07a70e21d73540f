"""Alembic environment: runs on the connection stepbridge hands over (config.attributes)."""

from __future__ import annotations

import stepbridge.storage.models  # noqa: F401  (registers the tables on SQLModel.metadata)
from alembic import context
from sqlalchemy import create_engine
from sqlmodel import SQLModel

config = context.config
target_metadata = SQLModel.metadata


def _run(connection: object) -> None:
    context.configure(
        connection=connection,  # type: ignore[arg-type]
        target_metadata=target_metadata,
        render_as_batch=True,  # SQLite cannot ALTER most things; batch mode rebuilds tables
        compare_type=True,
        transactional_ddl=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    # Plain `alembic` command line use (development): a URL in the config.
    from stepbridge.storage.db import make_engine, normalise_url

    url = config.get_main_option("sqlalchemy.url")
    engine = make_engine(normalise_url(url)) if url else create_engine("sqlite://")
    with engine.connect() as conn, conn.begin():
        _run(conn)


if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata,
                      literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()
