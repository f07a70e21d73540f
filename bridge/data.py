"""Data files (retrieval corpora) travel by content, never by a path someone else chose.

A program names its corpora by paths relative to its own folder. Out of process, that folder means
nothing to a worker, and a folder sent over the wire (or read from a stored row, which is outside the
content hash) would let whoever sent it choose what the worker reads. So:

- the **client** (the process that loaded the program and trusts its own folder) hashes each corpus
  it can read below that folder (:class:`LocalFiles`) and sends a manifest ``{corpus: sha256}`` with
  each request, and the bytes to whoever asks for them by hash;
- a **broker** keeps bytes that clients shipped, verified, in a bounded memory cache
  (:class:`BlobStore`), and serves them by hash only to a worker running a request that names them;
- each **worker** verifies what it receives against the hash, caches it under its own folder
  (:class:`DataCache`), lays the files out as the program expects them in a folder named by the
  manifest, and builds the retriever there. Its program cache is keyed by content hash + manifest.

A corpus the client did not ship (it could not read it, or it exceeds a frame) resolves under the
worker operator's ``data_root`` if there is one, otherwise the request fails with a typed error
naming the module.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import tempfile
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from stepbridge.errors import Issue, ProgramValidationError, StorageError

from .protocol import MAX_BODY_BYTES

__all__ = ["MAX_DATA_BYTES", "BlobStore", "DataCache", "LocalFiles", "corpora", "manifest_key", "sha256_bytes"]

#: the largest file shipped in one frame; larger corpora belong under the workers' data root
MAX_DATA_BYTES = MAX_BODY_BYTES - 64 * 1024
#: disk a worker's data cache may use by default
DEFAULT_CACHE_BYTES = 4 * 2**30


def sha256_bytes(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def corpora(program: Any) -> dict[str, str]:
    """``{corpus path: module name}`` for every retriever that names a corpus file."""
    found: dict[str, str] = {}
    for name, module in getattr(program, "modules", {}).items():
        if "retriever" not in getattr(type(module), "model_fields", ()):  # (no failing getattr per module)
            continue
        corpus = getattr(module.retriever, "corpus", None)
        if isinstance(corpus, str) and corpus and corpus not in found:
            found[corpus] = name
    return found


def manifest_key(manifest: Mapping[str, str]) -> str:
    """A stable name for a set of data files (part of a worker's program cache key)."""
    return sha256_bytes(json.dumps(sorted(manifest.items()), separators=(",", ":")).encode())[:32]


def _inside(root: Path, relative: str) -> Path | None:
    """``root / relative`` if it stays below ``root`` (symlinks resolved), else None."""
    parts = relative.replace("\\", "/").split("/")
    if not relative or relative.startswith(("/", "\\")) or ".." in parts or "" in parts[:-1] or "\x00" in relative:
        return None
    root = root.resolve()
    path = (root / relative).resolve()
    return path if path.is_relative_to(root) and path != root else None


class LocalFiles:
    """The caller's own corpora, hashed once per file version and read back by hash.

    Only files below the program's own folder count (the rule the native executor applies); a file
    that is missing, outside, or too big for a frame is left out of the manifest.
    """

    def __init__(self) -> None:
        self._hashes: dict[tuple[str, int, int, int], str] = {}
        self._paths: dict[str, Path] = {}

    def manifest(self, program: Any) -> dict[str, str]:
        names = corpora(program)
        if not names:
            return {}
        base_dir = getattr(program, "base_dir", None)
        if base_dir is None:
            return {}
        out: dict[str, str] = {}
        for corpus in names:
            path = _inside(Path(base_dir), corpus)
            if path is None:
                continue
            try:
                st = path.stat()
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_DATA_BYTES:
                continue
            key = (str(path), st.st_mtime_ns, st.st_size, st.st_ino)
            digest = self._hashes.get(key)
            if digest is None:
                try:
                    digest = self._hashes[key] = sha256_bytes(path.read_bytes())
                except OSError:
                    continue
            self._paths[digest] = path
            out[corpus] = digest
        return out

    def read(self, digest: str) -> bytes | None:
        """The bytes behind ``digest``, verified (None if unknown or changed since it was hashed)."""
        path = self._paths.get(digest)
        if path is None:
            return None
        try:
            content = path.read_bytes()
        except OSError:
            return None
        return content if sha256_bytes(content) == digest else None


class BlobStore:
    """Verified bytes by sha256, in memory, bounded: least recently used first out, except blobs a
    live request still needs (``in_use``)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.size = 0
        self._blobs: OrderedDict[str, bytes] = OrderedDict()

    def __contains__(self, digest: object) -> bool:
        return digest in self._blobs

    def get(self, digest: str) -> bytes | None:
        blob = self._blobs.get(digest)
        if blob is not None:
            self._blobs.move_to_end(digest)
        return blob

    def put(self, digest: str, content: bytes, in_use: Iterable[str] = ()) -> bool:
        """Keep ``content`` (already verified against ``digest``); False if it does not fit."""
        if digest in self._blobs:
            self._blobs.move_to_end(digest)
            return True
        if len(content) > self.max_bytes:
            return False
        if self.size + len(content) > self.max_bytes:
            keep = set(in_use)
            for old in [d for d in self._blobs if d not in keep]:
                self.size -= len(self._blobs.pop(old))
                if self.size + len(content) <= self.max_bytes:
                    break
            if self.size + len(content) > self.max_bytes:
                return False
        self._blobs[digest] = content
        self.size += len(content)
        return True


class DataCache:
    """A worker's own cache of data files: ``blobs/<sha256>`` (verified before they land) and
    ``sets/<manifest key>/<corpus path>`` (hard links laid out as a program expects them).

    Bounded: before a new file lands, the least recently used folders that no cached program of this
    worker uses (``in_use``) are removed, then files no folder links to any more, until it fits; if
    it cannot fit, :class:`StorageError`. Several workers may share one cache folder."""

    def __init__(self, directory: str | Path | None = None, *, max_bytes: int = DEFAULT_CACHE_BYTES):
        self.max_bytes = max_bytes
        #: manifest keys of the folders the owner still uses, and files it is assembling (never evicted)
        self.in_use: set[str] = set()
        self.assembling: set[str] = set()
        self._owned = directory is None
        self.root = Path(tempfile.mkdtemp(prefix="stepbridge-data-") if directory is None else directory)
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        (self.root / "blobs").mkdir(mode=0o700, exist_ok=True)
        (self.root / "sets").mkdir(mode=0o700, exist_ok=True)
        self.empty = self.root / "empty"  # the folder of programs without data files
        self.empty.mkdir(mode=0o700, exist_ok=True)

    def _blob(self, digest: str) -> Path:
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise StorageError(f"not a sha256 digest: {digest[:80]!r}")
        return self.root / "blobs" / digest

    def has(self, digest: str) -> bool:
        return self._blob(digest).is_file()

    def put(self, digest: str, content: bytes) -> None:
        """Store ``content`` if it hashes to ``digest``; raise :class:`StorageError` otherwise."""
        if sha256_bytes(content) != digest:
            raise StorageError(f"data file {digest[:12]} does not match its hash; refused")
        target = self._blob(digest)
        if target.is_file():
            return
        self._make_room(len(content))
        tmp = target.with_name(f".{digest}.{uuid.uuid4().hex}")
        with open(tmp, "wb") as fh:
            fh.write(content)
        os.chmod(tmp, 0o600)
        os.replace(tmp, target)

    def folder(self, manifest: Mapping[str, str], modules: Mapping[str, str]) -> Path:
        """A folder holding every file of ``manifest`` at its corpus path (blobs must be present)."""
        folder = self.root / "sets" / manifest_key(manifest)
        folder.mkdir(mode=0o700, exist_ok=True)
        os.utime(folder)  # recently used
        for corpus, digest in manifest.items():
            target = _inside(folder, corpus)
            if target is None:
                module = modules.get(corpus, "?")
                raise ProgramValidationError([Issue(f"/modules/{module}/retriever/corpus",
                                                    f"corpus path {corpus!r} cannot be laid out below a folder")])
            if target.is_file():
                continue
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}")
            try:
                os.link(self._blob(digest), tmp)
            except OSError:
                shutil.copyfile(self._blob(digest), tmp)
            os.replace(tmp, target)
        return folder

    def _make_room(self, size: int) -> None:
        blobs = self.root / "blobs"

        def stats() -> list[tuple[os.stat_result, Path]]:
            out = []
            for entry in os.scandir(blobs):
                with contextlib.suppress(OSError):
                    out.append((entry.stat(follow_symlinks=False), Path(entry.path)))
            return out

        used = sum(st.st_size for st, _ in stats())
        if used + size <= self.max_bytes:
            return
        sets = []
        for entry in os.scandir(self.root / "sets"):
            if entry.name not in self.in_use:
                with contextlib.suppress(OSError):
                    sets.append((entry.stat().st_mtime, Path(entry.path)))
        for _, folder in sorted(sets):
            shutil.rmtree(folder, ignore_errors=True)
            unlinked = sorted((st.st_mtime, st.st_size, path) for st, path in stats()
                              if st.st_nlink == 1 and path.name not in self.assembling)
            for _, blob_size, path in unlinked:
                with contextlib.suppress(OSError):
                    path.unlink()
                    used -= blob_size
            used = sum(st.st_size for st, _ in stats())
            if used + size <= self.max_bytes:
                return
        for st, path in sorted(stats(), key=lambda item: item[0].st_mtime):
            if st.st_nlink == 1 and path.name not in self.assembling and used + size > self.max_bytes:
                with contextlib.suppress(OSError):
                    path.unlink()
                    used -= st.st_size
        if used + size > self.max_bytes:
            raise StorageError(f"this worker's data cache is full ({used} of {self.max_bytes} bytes, all in use by "
                               "programs it holds); try again later")

    def close(self) -> None:
        if self._owned:
            with contextlib.suppress(OSError):
                shutil.rmtree(self.root)
