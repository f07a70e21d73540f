"""Native optimizers: the same demos as DSPy 3.4.1's BootstrapFewShot / LabeledFewShot on the same data,
order and settings (both run against the reference LM server); the result published with its lineage."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import stepbridge as sb
from sb_evals import COT_PROGRAM, qa_rows, stepbridge_cli, write_jsonl
from stepbridge.builtin_metrics import exact_match, token_f1
from stepbridge.datasets import from_rows
from stepbridge.errors import StorageError
from stepbridge.loader import load_program
from stepbridge.optimization import optimize, predictor_names
from stepbridge.storage import Store

ONE = COT_PROGRAM

TWO = """\
stepbridge: 1
name: two
signature: "question -> answer"
modules:
  draft: {type: chain_of_thought, signature: "question -> answer"}
  final: {type: predict, signature: "question, draft -> answer"}
steps:
  - call: draft
    with: {question: $inputs.question}
    as: d
  - call: final
    with: {question: $inputs.question, draft: $d.answer}
    as: f
  - return: {answer: $f.answer}
"""


@pytest.fixture
def lm_env(reference_lm: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("STEPBRIDGE_LM_BASE_URL", reference_lm)
    monkeypatch.setenv("STEPBRIDGE_LM_MODEL", "openai/reference")
    yield reference_lm


def dspy_program(kind: str) -> Any:
    import dspy

    if kind == "one":
        return dspy.ChainOfThought("question -> answer")

    class Two(dspy.Module):
        def __init__(self) -> None:
            super().__init__()
            self.draft = dspy.ChainOfThought("question -> answer")
            self.final = dspy.Predict("question, draft -> answer")

        def forward(self, question: str) -> Any:
            d = self.draft(question=question)
            return self.final(question=question, draft=d.answer)

    return Two()


def dspy_demos(url: str, kind: str, rows: list[dict[str, Any]], metric: Any, settings: dict[str, Any],
               threshold: float | None) -> list[list[dict[str, Any]]]:
    """Each predictor's demos, in ``named_predictors`` order."""
    import dspy

    lm = dspy.LM("openai/reference", api_base=url, api_key="unused", cache=False)
    train = [dspy.Example(**r).with_inputs("question") for r in rows]
    with dspy.context(lm=lm):
        optimizer = dspy.BootstrapFewShot(metric=lambda ex, pred, trace=None: metric(ex.toDict(), dict(pred)),
                                          metric_threshold=threshold, **settings)
        compiled = optimizer.compile(dspy_program(kind), trainset=train)
    return [[{k: v for k, v in d.toDict().items() if k != "augmented"} for d in p.demos]
            for _, p in compiled.named_predictors()]


def picky(example: dict[str, Any], prediction: dict[str, Any]) -> bool:
    """exact_match, except that it fails on two examples (an error DSPy counts and keeps going past)."""
    if example["question"] in ("question-004", "question-007"):
        raise ValueError("cannot judge this one")
    return exact_match(example, prediction)


METRICS = {"exact_match": exact_match, "token_f1": token_f1, "picky": picky}


@pytest.mark.parametrize(("kind", "metric", "threshold", "settings"), [
    pytest.param("one", "exact_match", None, {"max_bootstrapped_demos": 3, "max_labeled_demos": 6}, id="one"),
    pytest.param("one", "exact_match", None, {"max_bootstrapped_demos": 2, "max_labeled_demos": 0}, id="no-labeled"),
    pytest.param("two", "token_f1", 0.5, {"max_bootstrapped_demos": 4, "max_labeled_demos": 5, "max_rounds": 2},
                 id="two-predictors-threshold-rounds"),
    pytest.param("one", "picky", None, {"max_bootstrapped_demos": 6, "max_labeled_demos": 8}, id="metric-errors"),
    # an example's later rounds run ahead with its first; after an error the rounds left use the changed demos
    pytest.param("one", "picky", None, {"max_bootstrapped_demos": 6, "max_labeled_demos": 8, "max_rounds": 3},
                 id="metric-errors-rounds"),
])
def test_bootstrap_gives_dspys_demos(lm_env: str, kind: str, metric: str, threshold: float | None,
                                     settings: dict[str, Any]) -> None:
    rows = qa_rows(14)
    prog = load_program(ONE if kind == "one" else TWO)
    ours = optimize(prog, from_rows(rows, program=prog), METRICS[metric] if metric == "picky" else metric,
                    settings={**settings, "metric_threshold": threshold})
    theirs = dspy_demos(lm_env, kind, rows, METRICS[metric], settings, threshold)
    got = [list(ours.optimized.modules[name].demos) for name in predictor_names(prog)]  # type: ignore[union-attr]
    assert got == theirs
    assert any(d.get("reasoning") for demos in got for d in demos)  # bootstrapped traces are in there


def test_labeled_few_shot_is_dspys(lm_env: str) -> None:
    import dspy

    rows = qa_rows(10)
    prog = load_program(TWO)
    ours = optimize(prog, from_rows(rows, program=prog), "exact_match", optimizer="labeled",
                    settings={"max_labeled_demos": 4})
    compiled = dspy.LabeledFewShot(k=4).compile(dspy_program("two"), trainset=[dspy.Example(**r) for r in rows])
    for name, p in compiled.named_predictors():
        assert list(ours.optimized.modules[name.removesuffix(".predict")].demos) == \
            [d.toDict() for d in p.demos]  # type: ignore[union-attr]


def test_cli_optimize_publishes_a_version_with_lineage(tmp_path: Path, reference_lm: str) -> None:
    """The CLI and lineage (SQLite only: the kill test stores optimizations on both databases)."""
    db_url = f"sqlite:///{tmp_path / 'store.db'}"
    program = tmp_path / "cot.yaml"
    program.write_text(ONE)
    train = write_jsonl(tmp_path / "train.jsonl", qa_rows(12))
    val = write_jsonl(tmp_path / "val.jsonl", qa_rows(15)[12:])
    env = {**os.environ, "STEPBRIDGE_DATABASE_URL": db_url, "STEPBRIDGE_LM_BASE_URL": reference_lm,
           "STEPBRIDGE_LM_MODEL": "openai/reference"}
    done = subprocess.run([*stepbridge_cli(), "optimize", str(program), "--optimizer", "bootstrap", "--train",
                           str(train), "--val", str(val), "--metric", "exact_match", "--max-bootstrapped-demos", "2",
                           "--max-labeled-demos", "3", "--json"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert {"id", "program", "hash", "score_before", "score_after"} <= set(result)
    # the file is recorded by content hash, as its runs are: only the result is published (issue 15)
    assert result["program"] == "cot@1" and result["score_before"] == pytest.approx(2 / 3)
    with Store(db_url) as store:
        versions = store.history("cot")
        assert [v.source for v in versions] == ["optimized"]
        latest = versions[-1]
        assert latest.hash == result["hash"] and latest.parent == load_program(ONE).content_hash
        assert "bootstrap" in (latest.message or "") and result["id"] in (latest.message or "")
        optimized = store.load(latest.hash)
        assert len(optimized.modules["answer"].demos) == 3  # type: ignore[union-attr]
    shown = subprocess.run([*stepbridge_cli(), "optimizations", "show", result["id"], "--json"], env=env,
                           capture_output=True, text=True, timeout=120)
    data = json.loads(shown.stdout)
    assert data["status"] == "completed" and data["result_hash"] == result["hash"]
    assert [c["label"] for c in data["candidates"]] == ["bootstrap"]
    history = subprocess.run([*stepbridge_cli(), "programs", "history", "cot", "--json"], env=env,
                             capture_output=True, text=True, timeout=120)
    assert history.returncode == 0 and "optimized with bootstrap" in history.stdout


def test_dspy_optimizers_through_the_dspy_adapter(lm_env: str, store: Store) -> None:
    """dspy:BootstrapFewShot (DSPy itself, through the dspy adapter) picks the demos native bootstrap picks;
    dspy:COPRO runs too; both are stored and published like any optimization."""
    rows = qa_rows(12)
    prog = load_program(ONE)
    settings = {"max_bootstrapped_demos": 2, "max_labeled_demos": 3}
    native = optimize(prog, from_rows(rows, program=prog), "exact_match", settings=settings)
    via_dspy = optimize(prog, from_rows(rows, program=prog), "exact_match", optimizer="dspy:BootstrapFewShot",
                        settings=settings, store=store)
    assert via_dspy.optimized.modules["answer"].demos == native.optimized.modules["answer"].demos  # type: ignore[union-attr]
    assert via_dspy.program == "cot@1" and via_dspy.score_before is not None  # the original is stored, not published
    copro = optimize(prog, from_rows(rows, program=prog), "exact_match", optimizer="dspy:COPRO",
                     settings={"num_candidates": 2}, store=store)
    assert copro.optimizer == "dspy:COPRO" and copro.score_after is not None
    with pytest.raises(sb.UnsupportedCapabilityError, match="registered metric"):
        optimize(prog, from_rows(rows, program=prog), lambda e, p: 1.0, optimizer="dspy:COPRO")


def test_checkpoints_are_written_in_order_and_a_failed_write_fails_the_optimization(
        lm_env: str, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Checkpoints are written in the background, folded together while one is being written: each stored one
    is the state after an example, newer than the last, and the stored one is the last. A write that fails
    still ends the optimization with the storage error, recorded as failed (no late checkpoint marks it
    running again)."""
    log = store.optimizations
    written: list[int] = []
    failing = [False]
    real = log.checkpoint

    def checkpoint(optimization_id: str, state: dict[str, Any], progress: dict[str, Any]) -> None:
        if failing[0]:
            raise StorageError("checkpointing: the disk is full (injected)")
        assert state["bootstrap"]["next"] == progress["done"]
        written.append(state["bootstrap"]["next"])
        real(optimization_id, state, progress)

    monkeypatch.setattr(log, "checkpoint", checkpoint)
    prog = load_program(ONE)
    train = from_rows(qa_rows(14), program=prog)
    settings = {"max_bootstrapped_demos": 6, "max_labeled_demos": 0}
    ids: list[str] = []
    optimize(prog, train, "exact_match", settings=settings, store=store, on_start=ids.append)
    stored = log.get(ids[0]).checkpoint["bootstrap"]  # type: ignore[index]
    assert written and written == sorted(set(written)) and stored["next"] == written[-1]
    assert len(stored["bootstrapped"]) == 6 and stored["traces"]["answer"]
    failing[0] = True
    with pytest.raises(StorageError, match="disk is full"):
        optimize(prog, train, "exact_match", settings=settings, store=store, on_start=ids.append)
    assert log.get(ids[1]).status == "failed"


@pytest.mark.slow
def test_bootstrap_over_the_pool_gives_the_same_program() -> None:
    """Teacher runs and candidate scores fan out over pool workers; the optimized program is the same."""
    rows = qa_rows(14)
    prog = load_program(TWO)
    settings = {"max_bootstrapped_demos": 4, "max_labeled_demos": 6}
    native = optimize(prog, from_rows(rows, program=prog), "exact_match", settings=settings)
    pooled = optimize(prog, from_rows(rows, program=prog), "exact_match", settings=settings, backend="pool",
                      workers=2)
    assert pooled.hash == native.hash and pooled.score_before == native.score_before
