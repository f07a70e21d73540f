"""Format-2 programs are stored, aliased and rehydrated by hash like any program (SQLite and PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

import pytest
import stepbridge as sb
from stepbridge.storage import Store

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize("name", ["multihop_loop", "router"])
def test_format_2_program_round_trips_through_the_store(store: Store, name: str) -> None:
    program = sb.load_program(EXAMPLES / f"{name}.yaml")
    version = store.publish(program, message="format 2")
    store.set_alias(program.name, "prod", version.hash)
    by_hash = store.load(version.hash)
    by_alias = store.load(f"{program.name}@prod")
    assert version.hash == program.content_hash == by_hash.content_hash == by_alias.content_hash
    assert by_alias.stepbridge == 2 and by_alias.to_dict() == program.to_dict()
    assert store.export(version.hash) == program.to_dict()
    question = ("Where was the designer of the Eiffel Tower born?" if name == "multihop_loop"
                else "Which place is the Louvre museum in?")
    assert sb.run(by_alias, {"question": question}).outputs == sb.run(program, {"question": question}).outputs
