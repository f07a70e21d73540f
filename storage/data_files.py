"""A stored program's data files (retrieval corpora), stored and read back by content.

A row's ``base_dir`` is outside the content hash, so whoever can write a row would choose which
folder a runner reads corpora from (``base_dir: /etc``, corpus ``passwd``). Instead, publishing
stores each corpus the publisher can read below the program's own folder, by sha256 (the same rule
and the same code as the pool's data files, :mod:`stepbridge.bridge.data`), and loading verifies
every file against its hash and lays them out in a private folder (:class:`DataCache`). The stored
folder is never read. A file that does not match its hash is a :class:`StorageError` naming the row.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Table, select
from sqlalchemy.engine import Connection
from stepbridge.errors import ProgramValidationError, StorageError
from stepbridge.program import Program

from .models import DataFileRow, ProgramDataRow
from .types import utcnow

__all__ = ["collect", "record", "restore"]

data_files = cast(Table, DataFileRow.__table__)  # type: ignore[attr-defined]
program_data = cast(Table, ProgramDataRow.__table__)  # type: ignore[attr-defined]


def collect(program: Program) -> dict[str, tuple[str, bytes]]:
    """``{corpus: (sha256, bytes)}`` for each corpus readable below the program's own folder.

    Read before the write transaction (hashing a big corpus must not hold the database lock).
    Files that are missing, outside the folder or bigger than a data file may be are left out.
    """
    if program._base_dir is None:
        return {}
    from stepbridge.bridge.data import LocalFiles

    files = LocalFiles()
    out: dict[str, tuple[str, bytes]] = {}
    for corpus, digest in files.manifest(program).items():
        content = files.read(digest)
        if content is not None:
            out[corpus] = (digest, content)
    return out


def record(conn: Connection, insert: Callable[[Table], Any], program_hash: str,
           found: dict[str, tuple[str, bytes]]) -> None:
    """Store ``found`` (from :func:`collect`) for the version ``program_hash`` (first record wins)."""
    if not found:
        return
    have = set(conn.execute(select(program_data.c.corpus).where(program_data.c.program_hash == program_hash))
               .scalars())
    for corpus, (digest, content) in found.items():
        if corpus in have:
            continue
        conn.execute(insert(data_files).values(hash=digest, size=len(content), content=content,
                                                created_at=utcnow()).on_conflict_do_nothing())
        conn.execute(insert(program_data).values(program_hash=program_hash, corpus=corpus, data_hash=digest)
                     .on_conflict_do_nothing())


def restore(conn: Connection, row: Any, ref: str, cache: Any) -> Path | None:
    """The folder holding the verified data files of the stored version ``row`` (None: it has none).

    ``cache`` is a :class:`stepbridge.bridge.data.DataCache`; a file already in it was verified
    when it landed, so only missing ones are read from the database.
    """
    manifest = {r.corpus: r.data_hash for r in conn.execute(
        select(program_data.c.corpus, program_data.c.data_hash).where(program_data.c.program_hash == row.hash))}
    if not manifest:
        return None
    corpus_of = {digest: corpus for corpus, digest in manifest.items()}
    missing = [digest for digest in set(manifest.values()) if not _cached(cache, digest, row, ref, corpus_of)]
    if missing:
        from stepbridge.bridge.data import sha256_bytes

        found = {r.hash: bytes(r.content) for r in conn.execute(
            select(data_files.c.hash, data_files.c.content).where(data_files.c.hash.in_(missing)))}
        for digest in missing:
            content = found.get(digest)
            where = f"stored program {ref!r} ({row.hash[:12]}): data file {corpus_of[digest]!r}"
            if content is None:
                raise StorageError(f"{where} ({digest[:12]}) is missing from the database; refusing to load it")
            if sha256_bytes(content) != digest:
                raise StorageError(f"{where} does not match its hash {digest[:12]}: it was changed outside "
                                   "stepbridge; refusing to load it")
            cache.put(digest, content)
    try:
        return cast(Path, cache.folder(manifest, dict.fromkeys(manifest, "?")))
    except ProgramValidationError:
        raise StorageError(f"stored program {ref!r} ({row.hash[:12]}) names a data file at a path that leaves its "
                           f"folder ({', '.join(repr(c[:80]) for c in manifest)}); refusing to load it") from None


def _cached(cache: Any, digest: str, row: Any, ref: str, corpus_of: dict[str, str]) -> bool:
    try:
        return bool(cache.has(digest))
    except StorageError:  # not a sha256 digest at all
        raise StorageError(f"stored program {ref!r} ({row.hash[:12]}): data file {corpus_of[digest]!r} names "
                           f"{digest[:80]!r}, not a sha256 digest; refusing to load it") from None
