"""A stored row must not choose which folder a runner reads corpora from (issue 9, item 3).

``program_versions.base_dir`` is outside the content hash. Publishing stores the corpora by content
and loading verifies them; a tampered ``base_dir`` (``/etc``, corpus ``passwd``) is never read, and
a data file whose bytes do not match their hash is a typed error naming the row. Real SQLite files
and real PostgreSQL, the real native executor.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import stepbridge as sb
from stepbridge.errors import StorageError
from stepbridge.storage import Store
from stepbridge.storage.data_files import data_files, program_data
from stepbridge.storage.programs import versions

PUBLISHED = "the published corpus line about root\n"


def retrieval_program() -> dict[str, Any]:
    return {"stepbridge": 1, "name": "ret", "signature": "question -> passages: list[str]",
            "modules": {"s": {"type": "retrieve", "retriever": {"kind": "bm25", "corpus": "passwd"}, "k": 5}},
            "steps": [{"call": "s", "with": {"query": "$inputs.question"}, "as": "f"},
                      {"return": {"passages": "$f.passages"}}]}


def publish(store: Store, tmp_path: Path) -> sb.Program:
    folder = tmp_path / "prog"
    folder.mkdir()
    (folder / "passwd").write_text(PUBLISHED)
    program = sb.load_program(retrieval_program(), base_dir=folder)
    store.publish(program)
    return program


def run(program: sb.Program) -> list[str]:
    async def go() -> list[str]:
        async with sb.Runner("native") as runner:
            return list((await runner.run(program, {"question": "root x daemon bin"})).outputs["passages"])

    return asyncio.run(go())


def test_a_tampered_base_dir_is_never_read(db_url: str, tmp_path: Path) -> None:
    with Store(db_url) as store:
        program = publish(store, tmp_path)
        with store.engine.begin() as conn:
            conn.execute(versions.update().where(versions.c.hash == program.content_hash).values(base_dir="/etc"))
        for path in (tmp_path / "prog").iterdir():  # the publisher's folder is gone, too
            path.unlink()
        loaded = store.load("ret@1")
        assert loaded.content_hash == program.content_hash
        assert not str(loaded.base_dir).startswith("/etc")
        assert run(loaded) == [PUBLISHED.strip()]


def test_a_row_without_data_files_does_not_fall_back_to_its_folder(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A row published before data files were stored (or stripped of them): its folder is still ignored."""
    empty = tmp_path / "cwd"
    empty.mkdir()
    monkeypatch.chdir(empty)
    with Store(db_url) as store:
        program = publish(store, tmp_path)
        with store.engine.begin() as conn:
            conn.execute(program_data.delete())
            conn.execute(versions.update().where(versions.c.hash == program.content_hash).values(base_dir="/etc"))
        loaded = store.load("ret@1")
        assert loaded._base_dir is None
        try:
            passages = run(loaded)
        except Exception as exc:  # the corpus is not in the working folder: refused, typed or not
            passages = [str(exc)]
        assert not any("root:" in p for p in passages), passages


def test_data_that_does_not_match_its_hash_is_refused_naming_the_row(db_url: str, tmp_path: Path) -> None:
    with Store(db_url) as store:
        program = publish(store, tmp_path)
        with store.engine.begin() as conn:
            conn.execute(data_files.update().values(content=b"root:x:0:0:root:/root:/bin/bash\n"))
    with Store(db_url) as store, pytest.raises(StorageError) as info:  # a fresh process: nothing cached
        store.load("ret@1")
    message = str(info.value)
    assert "'ret@1'" in message and program.content_hash[:12] in message and "'passwd'" in message
    assert "does not match its hash" in message


def test_a_data_path_that_leaves_the_folder_is_refused(db_url: str, tmp_path: Path) -> None:
    with Store(db_url) as store:
        program = publish(store, tmp_path)
        with store.engine.begin() as conn:
            conn.execute(program_data.update().values(corpus="../../../../tmp/planted"))
        with pytest.raises(StorageError) as info:
            store.load("ret@1")
    assert program.content_hash[:12] in str(info.value) and "leaves its folder" in str(info.value)
    assert not Path("/tmp/planted").exists()


def test_republishing_keeps_the_first_data_and_stores_nothing_twice(db_url: str, tmp_path: Path) -> None:
    with Store(db_url) as store:
        program = publish(store, tmp_path)
        (tmp_path / "prog" / "passwd").write_text("changed after publishing\n")
        store.publish(sb.load_program(retrieval_program(), base_dir=tmp_path / "prog"))
        assert run(store.load(program.content_hash)) == [PUBLISHED.strip()]
        with store.engine.connect() as conn:
            assert conn.execute(data_files.select()).all().__len__() == 1
