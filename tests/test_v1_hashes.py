"""Format-1 programs keep their content hash byte for byte across format 2.

The fixture files were hashed by the format-1-only code (commit 01a4abb) and the hashes frozen in
``fixtures/v1_programs/hashes.json``: the examples, the conformance cases' programs and edge cases
(unicode, every literal kind, ``$$`` escapes, a literal ``$key`` mapping, long-form signatures,
demos, LM settings, map concurrency, retriever options).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from stepbridge.loader import load_program

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "v1_programs"
HASHES: dict[str, str] = json.loads((FIXTURES / "hashes.json").read_text())


def test_the_fixture_covers_a_dozen_programs() -> None:
    assert len(HASHES) >= 12
    assert {p.stem for p in FIXTURES.glob("*.yaml")} == set(HASHES)


@pytest.mark.parametrize("name", sorted(HASHES))
def test_v1_hash_is_frozen(name: str) -> None:
    program = load_program((FIXTURES / f"{name}.yaml").read_text(encoding="utf-8"))
    assert program.stepbridge == 1
    assert program.content_hash == HASHES[name]


@pytest.mark.parametrize("name", sorted(HASHES))
def test_v1_round_trip_keeps_the_hash(name: str) -> None:
    program = load_program((FIXTURES / f"{name}.yaml").read_text(encoding="utf-8"))
    assert load_program(program.to_yaml()).content_hash == HASHES[name]
    assert load_program(program.to_json()).content_hash == HASHES[name]
