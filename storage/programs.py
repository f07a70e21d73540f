"""The program repository: versions of programs by content hash, their names and aliases.

A version is identified by its content hash; publishing the same content again returns the existing
version. Stored rows are untrusted when read back: :meth:`ProgramRepository.load` validates a row in
full and checks it against its hash, all or nothing. Corpora travel by content (see
:mod:`.data_files`): the folder a program was published from is informative only.
"""

from __future__ import annotations

import weakref
from typing import Any, cast

from pydantic import ValidationError
from sqlalchemy import Table, and_, func, insert, select, update
from sqlalchemy.engine import Connection, Row
from stepbridge.errors import (
    Issue,
    ProgramNotFound,
    ProgramValidationError,
    StorageError,
)
from stepbridge.program import Program
from stepbridge.secrets import scrub

from . import data_files
from .models import (
    SOURCES,
    AliasRow,
    ProgramRow,
    ProgramSummary,
    ProgramVersion,
    ProgramVersionRow,
)
from .recording import clean
from .refs import ProgramRef, parse_ref, validate_alias
from .transactions import Transactions
from .types import utcnow

__all__ = ["ProgramRepository"]

programs = cast(Table, ProgramRow.__table__)  # type: ignore[attr-defined]
versions = cast(Table, ProgramVersionRow.__table__)  # type: ignore[attr-defined]
aliases = cast(Table, AliasRow.__table__)  # type: ignore[attr-defined]

_clean = clean


def _validation_issues(exc: ValidationError) -> list[Issue]:
    issues = []
    for err in exc.errors():
        pointer = "".join(f"/{part}" for part in err.get("loc", ()))
        issues.append(Issue(pointer=pointer, message=scrub(str(err.get("msg", "invalid")))))
    return issues or [Issue(pointer="", message="invalid program")]


class ProgramRepository:
    """Program versions and aliases (the ``programs``, ``program_versions`` and ``aliases`` tables)."""

    def __init__(self, tx: Transactions):
        self.tx = tx
        self._stored: set[str] = set()  # hashes known to be stored (storing is idempotent)
        self._data: Any = None

    def close(self) -> None:
        if self._data is not None:
            self._data.close()

    def _data_cache(self) -> Any:
        """This store's private folder of verified data files (made on first use)."""
        if self._data is None:
            from stepbridge.bridge.data import DataCache

            self._data = DataCache()
            weakref.finalize(self, self._data.close)
        return self._data

    def publish(
        self,
        program: Program,
        *,
        source: str = "authored",
        message: str | None = None,
        parent: str | None = None,
    ) -> ProgramVersion:
        """Store ``program`` as the next version of its name; the same content returns the existing version
        (a program that was only run so far gets its number now).

        ``parent`` is a reference to the version this one derives from (default: the name's latest).
        """
        return self._store(program, source=source, message=message, parent=parent, number_it=True)

    def _store(self, program: Program, *, source: str = "authored", message: str | None = None,
               parent: str | None = None, number_it: bool) -> ProgramVersion:
        """Store ``program``'s content; ``number_it``: as the next version of its name (publishing)."""
        if not isinstance(program, Program):
            raise TypeError(f"publish() takes a Program, not {type(program).__name__}")
        if source not in SOURCES:
            raise StorageError(f"unknown source {source!r}: one of {', '.join(SOURCES)}")
        digest = program.content_hash
        data = program.to_dict()
        try:
            if Program.model_validate(data).content_hash != digest:
                data = program.canonical()
        except ValidationError:
            data = program.canonical()
        data = _clean(data)
        base_dir = str(program.source_dir) if program.source_dir is not None else None  # informative only
        found = data_files.collect(program)  # corpora travel by content: the folder is never read back
        clean_message = _clean(message) if message is not None else None
        parent_hash = self.resolve(parent).hash if parent is not None else None

        def fn(conn: Connection) -> ProgramVersion:
            row = conn.execute(select(versions).where(versions.c.hash == digest)).first()
            if row is not None and (row.version is not None or not number_it):
                data_files.record(conn, self.tx.insert, digest, found)
                return self._version(conn, row)
            now = utcnow()
            conn.execute(
                self.tx.insert(programs).values(name=program.name, created_at=now).on_conflict_do_nothing()
            )
            if not number_it:  # run, not published: stored by content, no version number
                conn.execute(insert(versions).values(hash=digest, name=program.name, version=None, source=source,
                                                     program=data, base_dir=base_dir, created_at=now))
                data_files.record(conn, self.tx.insert, digest, found)
                return self._version(conn, conn.execute(select(versions).where(versions.c.hash == digest)).one())
            latest = conn.execute(
                select(versions.c.hash, versions.c.version)
                .where(versions.c.name == program.name, versions.c.version.is_not(None))
                .order_by(versions.c.version.desc())
                .limit(1)
            ).first()
            number = (latest.version if latest else 0) + 1
            values = dict(
                version=number,
                parent_hash=parent_hash if parent is not None else (latest.hash if latest else None),
                source=source,
                message=clean_message,
                created_at=now,
            )
            if row is not None:  # run before, published now: it gets the next number
                conn.execute(update(versions).where(versions.c.hash == digest, versions.c.version.is_(None))
                             .values(**values))
            else:
                conn.execute(insert(versions).values(hash=digest, name=program.name, program=data,
                                                     base_dir=base_dir, **values))
            data_files.record(conn, self.tx.insert, digest, found)
            row = conn.execute(select(versions).where(versions.c.hash == digest)).one()
            return self._version(conn, row)

        version = self.tx.write(fn, f"{'publishing' if number_it else 'storing'} {program.name}",
                                retry_integrity=True)
        self._stored.add(digest)
        return version

    def _version(self, conn: Connection, row: Row[Any]) -> ProgramVersion:
        names = conn.execute(
            select(aliases.c.alias).where(aliases.c.hash == row.hash).order_by(aliases.c.alias)
        ).scalars()
        return ProgramVersion(
            hash=row.hash,
            name=row.name,
            version=row.version,
            parent=row.parent_hash,
            source=row.source,
            message=row.message,
            created_at=row.created_at,
            aliases=list(names),
        )

    def find(self, conn: Connection, ref: ProgramRef, text: str) -> Row[Any]:
        """The version row ``ref`` names, in ``conn``'s transaction; :class:`ProgramNotFound` if none."""
        cols = select(versions)
        if ref.kind == "hash":
            row = conn.execute(cols.where(versions.c.hash == ref.hash)).first()
        elif ref.kind == "prefix":
            rows = conn.execute(cols.where(versions.c.hash.like(f"{ref.hash}%")).limit(2)).all()
            if len(rows) > 1:
                raise StorageError(f"hash prefix {text!r} is ambiguous: use more digits")
            row = rows[0] if rows else None
            if row is None and ref.name is not None:
                return self.find(conn, ProgramRef("name", name=ref.name), text)
        elif ref.kind == "name":
            row = conn.execute(
                cols.where(versions.c.name == ref.name, versions.c.version.is_not(None))
                .order_by(versions.c.version.desc()).limit(1)
            ).first()
        elif ref.kind == "version":
            row = conn.execute(
                cols.where(versions.c.name == ref.name, versions.c.version == ref.version)
            ).first()
        else:
            row = conn.execute(
                cols.join(aliases, aliases.c.hash == versions.c.hash).where(
                    aliases.c.name == ref.name, aliases.c.alias == ref.alias
                )
            ).first()
        if row is None:
            raise ProgramNotFound(f"no stored program matches {text!r}")
        return row

    def resolve(self, ref: str) -> ProgramVersion:
        """The version a reference points at (hash, unique prefix >= 12, name, name@N, name@alias)."""
        parsed = parse_ref(ref)
        return self.tx.read(lambda conn: self._version(conn, self.find(conn, parsed, ref)), f"resolving {ref}")

    def load(self, ref: str, *, validate: bool = True) -> Program:
        """Rebuild a stored program, validated like a file, all-or-nothing.

        The row is untrusted: it is validated in full (``validate=False``: shape only, for export)
        and its content hash must equal the stored identity, or nothing is returned.
        """
        parsed = parse_ref(ref)
        row = self.tx.read(lambda conn: self.find(conn, parsed, ref), f"loading {ref}")
        # the row's base_dir is outside the hash: corpora come from the verified data files only
        folder = self.tx.read(lambda conn: data_files.restore(conn, row, ref, self._data_cache()), f"loading {ref}")
        data = row.program
        if not isinstance(data, dict):
            raise StorageError(f"stored program {ref!r} ({row.hash[:12]}) is not a JSON object; refusing to load")
        program: Program
        try:
            if validate:
                from stepbridge.validate import validate_data

                program = validate_data(data, base_dir=folder)
            else:
                program = Program.model_validate(data)
                program.with_base_dir(folder)
        except ProgramValidationError as exc:
            raise ProgramValidationError(
                exc.issues, message=f"stored program {ref!r} ({row.hash[:12]}) is invalid:\n{exc.message}"
            ) from None
        except ValidationError as exc:
            issues = _validation_issues(exc)
            raise ProgramValidationError(
                issues,
                message=f"stored program {ref!r} ({row.hash[:12]}) is invalid:\n"
                + "\n".join(f"  {i}" for i in issues),
            ) from None
        if program.content_hash != row.hash:
            raise StorageError(
                f"stored program {ref!r} does not match its identity: the row says {row.hash[:12]}, the "
                f"content hashes to {program.content_hash[:12]}. It was changed outside stepbridge; refusing "
                "to load it."
            )
        if program.name != row.name:
            raise StorageError(f"stored program {ref!r} is named {program.name!r}, not {row.name!r}")
        return program

    def export(self, ref: str) -> dict[str, Any]:
        """The program as a file would hold it (verified against its hash, not semantically)."""
        return self.load(ref, validate=False).to_dict()

    def set_alias(self, name: str, alias: str, ref: str) -> ProgramVersion:
        """Point ``name@alias`` at the version ``ref`` (which must be a version of ``name``)."""
        validate_alias(alias)
        parsed = parse_ref(ref)

        def fn(conn: Connection) -> ProgramVersion:
            row = self.find(conn, parsed, ref)
            if row.name != name:
                raise StorageError(f"{ref!r} is a version of {row.name!r}, not of {name!r}")
            now = utcnow()
            stmt = self.tx.insert(aliases).values(name=name, alias=alias, hash=row.hash, updated_at=now)
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=[aliases.c.name, aliases.c.alias],
                    set_={"hash": row.hash, "updated_at": now},
                )
            )
            return self._version(conn, row)

        return self.tx.write(fn, f"setting alias {name}@{alias}")

    def remove_alias(self, name: str, alias: str) -> bool:
        """Delete ``name@alias``; False if it did not exist."""

        def fn(conn: Connection) -> bool:
            gone = conn.execute(
                aliases.delete().where(aliases.c.name == name, aliases.c.alias == alias).returning(aliases.c.alias)
            ).all()
            return bool(gone)

        return self.tx.write(fn, f"removing alias {name}@{alias}")

    def history(self, name: str) -> list[ProgramVersion]:
        """Every version of ``name``, oldest first."""

        def fn(conn: Connection) -> list[ProgramVersion]:
            rows = conn.execute(
                select(versions).where(versions.c.name == name, versions.c.version.is_not(None))
                .order_by(versions.c.version)
            ).all()
            return [self._version(conn, row) for row in rows]

        return self.tx.read(fn, f"reading the history of {name}")

    def list_programs(self) -> list[ProgramSummary]:
        """Every program name with its latest version and aliases."""

        def fn(conn: Connection) -> list[ProgramSummary]:
            latest = (
                select(
                    versions.c.name,
                    func.max(versions.c.version).label("latest"),
                    func.count().label("n"),
                    func.max(versions.c.created_at).label("updated"),
                )
                .where(versions.c.version.is_not(None))
                .group_by(versions.c.name)
                .subquery()
            )
            rows = conn.execute(
                select(programs.c.name, programs.c.created_at, latest.c.latest, latest.c.n, latest.c.updated,
                       versions.c.hash)
                .select_from(programs)
                .join(latest, latest.c.name == programs.c.name)
                .outerjoin(versions, and_(versions.c.name == programs.c.name,
                                          versions.c.version == latest.c.latest))
                .order_by(programs.c.name)
            ).all()
            alias_map: dict[str, dict[str, str]] = {}
            for a in conn.execute(select(aliases).order_by(aliases.c.name, aliases.c.alias)):
                alias_map.setdefault(a.name, {})[a.alias] = a.hash
            return [
                ProgramSummary(
                    name=r.name,
                    versions=r.n or 0,
                    latest_version=r.latest,
                    latest_hash=r.hash,
                    aliases=alias_map.get(r.name, {}),
                    created_at=r.created_at,
                    updated_at=r.updated,
                )
                for r in rows
            ]

        return self.tx.read(fn, "listing programs")

    def known(self, digest: str) -> bool:
        """Whether this process has already seen a version with this hash stored (no query)."""
        return digest in self._stored

    def ensure_stored(self, program: Program) -> None:
        """Store ``program``'s content unless it is stored already (checked once per process and hash). A run
        is recorded against the content; a version of the name is made only by publishing."""
        digest = program.content_hash
        if digest in self._stored:
            return
        exists = self.tx.read(
            lambda conn: conn.execute(select(versions.c.hash).where(versions.c.hash == digest)).first(),
            "checking a program",
        )
        if exists is None:
            self._store(program, number_it=False)
        self._stored.add(digest)
