"""Alembic migrations shipped in the package: empty -> first -> head, and a database from the future."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect, text
from stepbridge import StorageError
from stepbridge.storage import Store, upgrade
from stepbridge.storage.db import MIGRATIONS_DIR, _script, current_revision, head_revision, make_engine

TABLES = {"programs", "program_versions", "aliases", "executions", "execution_steps", "execution_status_history"}


def test_migrations_ship_inside_the_package() -> None:
    import stepbridge.storage

    assert MIGRATIONS_DIR.parent == __import__("pathlib").Path(stepbridge.storage.__file__).resolve().parent
    assert (MIGRATIONS_DIR / "env.py").exists() and (MIGRATIONS_DIR / "script.py.mako").exists()
    revisions = list(_script().walk_revisions())
    assert revisions and revisions[-1].down_revision is None


def test_empty_to_first_to_head(db_url: str) -> None:
    first = list(_script().walk_revisions())[-1].revision
    engine = make_engine(db_url)
    try:
        assert current_revision(engine) is None
        assert upgrade(db_url, target=first) == first
        assert current_revision(engine) == first
        assert upgrade(db_url) == head_revision()
        assert current_revision(engine) == head_revision()
        assert set(inspect(engine).get_table_names()) >= TABLES
        assert upgrade(db_url) == head_revision()  # idempotent
    finally:
        engine.dispose()


def test_first_use_migrates(db_url: str) -> None:
    with Store(db_url) as store:
        assert store.revision == head_revision()
        assert store.list_programs() == []


def test_database_newer_than_code(db_url: str) -> None:
    upgrade(db_url)
    engine = make_engine(db_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999_from_the_future'"))
    engine.dispose()
    for attempt in (lambda: Store(db_url), lambda: upgrade(db_url), lambda: Store(db_url, migrate=False)):
        with pytest.raises(StorageError, match="newer stepbridge") as info:
            attempt()
        assert "9999_from_the_future" in str(info.value)


def test_migrate_false_requires_head(db_url: str) -> None:
    with pytest.raises(StorageError, match="stepbridge db upgrade"):
        Store(db_url, migrate=False)
    upgrade(db_url)
    Store(db_url, migrate=False).close()


def test_sqlite_settings(tmp_path: object) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    with Store(url) as store, store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 5000


def test_default_url_and_normalisation(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    from stepbridge.storage.db import default_url, normalise_url

    monkeypatch.delenv("STEPBRIDGE_DATABASE_URL", raising=False)
    monkeypatch.setenv("STEPBRIDGE_HOME", str(tmp_path))
    assert default_url() == f"sqlite:///{tmp_path}/stepbridge.db"
    monkeypatch.setenv("STEPBRIDGE_DATABASE_URL", "postgres://u@h/db")
    assert normalise_url(default_url()) == "postgresql+psycopg://u@h/db"
    assert normalise_url("postgresql://u:pw@h/db") == "postgresql+psycopg://u:pw@h/db"
    assert normalise_url("/tmp/x.db") == "sqlite:////tmp/x.db"


def test_unreachable_database_is_a_storage_error() -> None:
    with pytest.raises(StorageError) as info:
        Store("postgresql://user:hunter2secret@127.0.0.1:1/none?connect_timeout=2")
    assert "hunter2secret" not in str(info.value)


def test_inputs_hash_migration_keeps_rows_both_ways(db_url: str) -> None:
    """0002 adds ``executions.inputs_hash`` in place (no table rebuild: on SQLite a rebuild would cascade
    into the trace steps and status history) and removes it the same way; rows from before it are
    not checked, rows after it are."""
    from alembic import command
    from sb_storage import make_program
    from stepbridge.adapter import RunOptions
    from stepbridge.storage.db import _config

    def downgrade_to(target: str) -> None:
        engine = make_engine(db_url)
        try:
            with engine.connect() as conn, conn.begin():
                cfg = _config()
                cfg.attributes["connection"] = conn
                command.downgrade(cfg, target)
        finally:
            engine.dispose()

    def columns() -> set[str]:
        engine = make_engine(db_url)
        try:
            return {c["name"] for c in inspect(engine).get_columns("executions")}
        finally:
            engine.dispose()

    program = make_program()
    with Store(db_url) as store:
        assert store.revision == head_revision()
        old = store.begin(program, {"question": "q"}, RunOptions(idempotency_key="before"), "native")
        assert store.transition(old.execution_id, "running", "interrupted")
    downgrade_to("0001_initial")
    assert "inputs_hash" not in columns()
    assert upgrade(db_url) == head_revision() and "inputs_hash" in columns()
    with Store(db_url) as store:
        e = store.get_execution(old.execution_id)
        assert e is not None and e.status == "interrupted"
        assert [h.to_status for h in store.status_history(old.execution_id)] == ["running", "interrupted"]
        # A row from before the column has no hash: its stored inputs are compared instead.
        with pytest.raises(StorageError, match="different inputs"):
            store.begin(program, {"question": "other"}, RunOptions(idempotency_key="before"), "native")
        again = store.begin(program, {"question": "q"}, RunOptions(idempotency_key="before"), "native")
        assert again.execution_id == old.execution_id and again.attempt == 2
        new = store.begin(program, {"question": "q"}, RunOptions(idempotency_key="after"), "native")
        assert new.execution_id != old.execution_id
        with pytest.raises(StorageError, match="different inputs"):
            store.begin(program, {"question": "other"}, RunOptions(idempotency_key="after"), "native")


def test_the_migrated_schema_is_the_models(db_url: str) -> None:
    """``models.py`` is the only schema: the migrations build exactly it (autogenerate finds no difference)."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext
    from sqlmodel import SQLModel

    with Store(db_url) as store, store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), SQLModel.metadata)
    assert diff == []


def test_batches_migration_keeps_executions_both_ways(db_url: str) -> None:
    """0003 only adds tables: going down removes the grouping and keeps every execution."""
    from alembic import command
    from sb_storage import make_program
    from stepbridge.adapter import RunOptions
    from stepbridge.storage.db import _config

    with Store(db_url) as store:
        begun = store.begin_batch(make_program(), [{"question": "a"}, {"question": "b"}],
                                  [RunOptions(), RunOptions()], "native")
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn, conn.begin():
            cfg = _config()
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0002_inputs_hash")
        assert not {"batches", "batch_items"} & set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert upgrade(db_url) == head_revision()
    with Store(db_url) as store:
        assert store.count_executions("pending") == 2
        assert store.get_batch(begun.batch_id) is None
        assert all(store.get_execution(eid) is not None for eid in begun.execution_ids if eid)


def test_0006_keeps_every_row_and_allows_unpublished_programs(db_url: str) -> None:
    """A database written at 0005 (a published version) upgrades in place: its rows and foreign keys
    survive, and a program that is only run is then stored without a version number."""
    from datetime import UTC, datetime

    from sb_storage import make_program
    from sqlalchemy import insert
    from stepbridge.adapter import RunOptions
    from stepbridge.storage.programs import programs, versions

    upgrade(db_url, target="0005_evaluations")
    engine = make_engine(db_url)
    try:
        published = make_program("qa", "first")
        now = datetime.now(UTC)
        with engine.begin() as conn:  # the rows earlier code wrote
            conn.execute(insert(programs).values(name="qa", created_at=now))
            conn.execute(insert(versions).values(hash=published.content_hash, name="qa", version=1, source="authored",
                                                 program=published.to_dict(), created_at=now))
        assert upgrade(db_url) == head_revision()
        with Store(db_url) as store:
            assert [v.version for v in store.history("qa")] == [1]
            run_only = make_program("qa", "second")
            begun = store.begin(run_only, {"question": "q"}, RunOptions(), "native")
            assert store.get_execution(begun.execution_id) is not None
            assert [v.version for v in store.history("qa")] == [1]  # the run did not publish
            assert store.resolve(run_only.content_hash).version is None
            assert store.load(run_only.content_hash).content_hash == run_only.content_hash
            assert store.publish(run_only).version == 2  # publishing later numbers it
            assert store.resolve("qa").hash == run_only.content_hash
        if engine.dialect.name == "sqlite":
            with engine.connect() as conn:
                assert conn.execute(text("PRAGMA integrity_check")).scalar() == "ok"
                assert conn.execute(text("PRAGMA foreign_key_check")).all() == []
    finally:
        engine.dispose()
