"""stepbridge.retrieve: corpora stay inside their program's folder, also through symlinks."""

from __future__ import annotations

from pathlib import Path

import pytest
from stepbridge.program import RetrieverSpec
from stepbridge.retrieve import make_retriever


def test_symlinks_out_of_the_folder_are_refused_at_run_time(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("the secret plan\n")
    folder = tmp_path / "prog"
    folder.mkdir()
    (folder / "corpus.txt").symlink_to(secret)
    with pytest.raises(ValueError, match="outside the program's folder"):
        make_retriever(RetrieverSpec(kind="bm25", corpus="corpus.txt"), folder)
