"""Data files by content: the client's hashing, the broker's bounded cache, the worker's verified cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from stepbridge import ProgramValidationError, load_program
from stepbridge.bridge.data import BlobStore, DataCache, LocalFiles, corpora, manifest_key, sha256_bytes
from stepbridge.errors import StorageError

PROGRAM = """
stepbridge: 1
name: lookup
signature: "question -> passages: list[str]"
modules:
  a: {type: retrieve, retriever: {kind: bm25, corpus: data/one.txt}, k: 1}
  b: {type: retrieve, retriever: {kind: bm25, corpus: two.txt}, k: 1}
steps:
  - {call: a, with: {query: $inputs.question}, as: x}
  - {call: b, with: {query: $inputs.question}, as: y}
  - {return: {passages: $y.passages}}
"""


def test_local_files_hash_what_is_below_the_program_folder_and_notice_changes(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "one.txt").write_text("first\n")
    (tmp_path / "two.txt").write_text("second\n")
    (tmp_path / "p.yaml").write_text(PROGRAM)
    program = load_program(tmp_path / "p.yaml")
    assert corpora(program) == {"data/one.txt": "a", "two.txt": "b"}
    files = LocalFiles()
    manifest = files.manifest(program)
    assert manifest == {"data/one.txt": sha256_bytes(b"first\n"), "two.txt": sha256_bytes(b"second\n")}
    assert files.read(manifest["two.txt"]) == b"second\n"
    (tmp_path / "two.txt").write_text("changed\n")
    assert files.read(manifest["two.txt"]) is None  # changed since hashed: never served as the old hash
    assert files.manifest(program)["two.txt"] == sha256_bytes(b"changed\n")
    # a symlink out of the folder is not the program's file: not shipped
    (tmp_path / "two.txt").unlink()
    os.symlink("/etc/passwd", tmp_path / "two.txt")
    assert "two.txt" not in files.manifest(program)
    assert files.read("0" * 64) is None


def test_blob_store_is_bounded_and_keeps_what_live_requests_need() -> None:
    store = BlobStore(max_bytes=100)
    blobs = {sha256_bytes(bytes([i]) * 40): bytes([i]) * 40 for i in range(5)}
    digests = list(blobs)
    assert store.put(digests[0], blobs[digests[0]])
    assert store.put(digests[1], blobs[digests[1]])
    assert store.put(digests[2], blobs[digests[2]], in_use={digests[0]})  # evicts 1, keeps 0 (in use)
    assert digests[0] in store and digests[1] not in store and store.size == 80
    assert not store.put(digests[3], blobs[digests[3]], in_use={digests[0], digests[2]})  # nothing evictable
    assert store.size <= 100
    assert not store.put(sha256_bytes(b"x" * 101), b"x" * 101)  # bigger than the whole budget


def test_data_cache_verifies_bytes_and_lays_out_only_below_its_folder(tmp_path: Path) -> None:
    cache = DataCache(tmp_path / "cache")
    good = b"alpha\nbeta\n"
    digest = sha256_bytes(good)
    with pytest.raises(StorageError):
        cache.put(digest, b"root:x:0:0\n")  # bytes that are not what the hash names
    assert not cache.has(digest)
    cache.put(digest, good)
    assert cache.has(digest)
    folder = cache.folder({"data/one.txt": digest}, {"data/one.txt": "a"})
    assert (folder / "data" / "one.txt").read_bytes() == good
    assert folder.name == manifest_key({"data/one.txt": digest})
    for hostile in ("../escape.txt", "/etc/passwd", "a//b", "data/../../x"):
        with pytest.raises(ProgramValidationError) as info:
            cache.folder({hostile: digest}, {hostile: "a"})
        assert info.value.issues[0].pointer == "/modules/a/retriever/corpus"
    with pytest.raises(StorageError):
        cache.has("../../etc/passwd")
    assert {p.name for p in (tmp_path / "cache").iterdir()} == {"blobs", "sets", "empty"}


def test_a_private_data_cache_is_removed_at_close() -> None:
    cache = DataCache()
    assert (cache.root.stat().st_mode & 0o777) == 0o700
    cache.close()
    assert not cache.root.exists()


def test_data_cache_is_bounded_evicting_unused_folders_first(tmp_path: Path) -> None:
    cache = DataCache(tmp_path / "cache", max_bytes=250)
    files = {name: bytes([65 + i]) * 100 for i, name in enumerate("abc")}
    digests = {name: sha256_bytes(content) for name, content in files.items()}
    cache.put(digests["a"], files["a"])
    keep = cache.folder({"x.txt": digests["a"]}, {"x.txt": "m"})
    cache.in_use = {keep.name}
    cache.put(digests["b"], files["b"])
    old = cache.folder({"x.txt": digests["b"]}, {"x.txt": "m"})
    cache.put(digests["c"], files["c"])  # 300 > 250: the unused folder (b) and its file go, a stays
    assert not old.exists() and not cache.has(digests["b"])
    assert keep.is_dir() and cache.has(digests["a"]) and cache.has(digests["c"])
    cache.in_use = {keep.name, cache.folder({"x.txt": digests["c"]}, {"x.txt": "m"}).name}
    with pytest.raises(StorageError):  # everything is in use: refused, not over the bound
        cache.put(sha256_bytes(b"d" * 100), b"d" * 100)
    used = sum(p.stat().st_size for p in (tmp_path / "cache" / "blobs").iterdir())
    assert used <= 250
