"""DSPy interop: import (exact, traced + verified, dspy step), export/load round trips, optimization."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import pytest
from sb_dspy import EXAMPLES, last_seq, logged_messages, run
from stepbridge import load_program
from stepbridge.adapters import dspy_interop as di
from stepbridge.adapters.dspy import dspy
from stepbridge.registry import dspy_modules


def _example_module(path: Path) -> ModuleType:
    """Import an example file as the top-level module its file name says (as ``python`` would run it)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = sys.modules[path.stem] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The shipped example of an existing DSPy program (two predictors, a custom forward) is the one imported here.
RewriteThenAnswer = _example_module(Path(__file__).resolve().parents[2] / "examples" / "dspy_program"
                                    / "qa_module.py").RewriteThenAnswer

SAMPLES = [
    {"question": "Who designed the Eiffel Tower?",
     "context": ["The Eiffel Tower was designed by Gustave Eiffel's company.", "Paris is in France."]},
    {"question": "Where is Mount Everest?", "context": ["Mount Everest is on the border of Nepal and China."]},
    {"question": "What does the Louvre house?", "context": ["The Louvre houses the Mona Lisa."]},
]


class Computed(dspy.Module):
    def __init__(self) -> None:
        super().__init__()
        self.p = dspy.Predict("question -> answer")

    def forward(self, question: str) -> Any:
        return self.p(question=question.title())


class Stateful(dspy.Module):
    """Hidden state: the hint changes after two calls, which no trace of two samples can see."""

    def __init__(self) -> None:
        super().__init__()
        self.p = dspy.Predict("question, hint -> answer")
        self.calls = 0

    def forward(self, question: str) -> Any:
        self.calls += 1
        return self.p(question=question, hint="be brief" if self.calls <= 2 else "be verbose")


class Branchy(dspy.Module):
    def __init__(self) -> None:
        super().__init__()
        self.short = dspy.Predict("question -> answer")
        self.long = dspy.ChainOfThought("question -> answer")

    def forward(self, question: str) -> Any:
        return self.short(question=question) if len(question) < 25 else self.long(question=question)


def _original_messages(module: Any, inputs: dict[str, Any], lm: Any) -> tuple[Any, list[Any]]:
    run_lm = lm.copy()
    with dspy.context(lm=run_lm):
        prediction = module(**inputs)
    return prediction, [entry["messages"] for entry in run_lm.history]


# ------------------------------------------------------------------------------------------------
# import: the done-when case
# ------------------------------------------------------------------------------------------------
def test_two_predictor_custom_forward_runs_identically_on_native_and_dspy(loop: Any,
        tmp_path: Path, server: Any, dspy_lm: Any, native_adapter: Any, dspy_adapter: Any) -> None:
    original = RewriteThenAnswer()
    original.rewrite.demos = [dspy.Example(question="Capital of Italy?", search_query="Italy capital")]
    program, report = di.import_module(original, sample_inputs=SAMPLES[:2], lm=dspy_lm)
    assert report.mode == "static" and report.verified  # read from forward's source, then verified
    assert report.parts == {"rewrite": "predict (exact)", "answer": "chain_of_thought (exact)"}
    path = tmp_path / "two_step.yaml"
    program.dump(path)
    program = load_program(path)
    steps = program.to_dict()["steps"]
    assert steps[1]["with"]["search_query"] == "$rewrite_out.search_query"  # value matching + field name
    assert program.signature.to_string() == "question, context: list[str] -> answer, query"

    for inputs in SAMPLES:  # including a sample that was not used to trace
        prediction, messages = _original_messages(original, inputs, dspy_lm)
        for adapter in (native_adapter, dspy_adapter):
            start = last_seq(server)
            result = run(loop, adapter, program, inputs)
            assert result.outputs == {"answer": prediction.answer, "query": prediction.query}
            assert logged_messages(server, start) == sorted(json.dumps(m, ensure_ascii=False) for m in messages)
            assert [c.messages for s in result.trace for c in s.lm_calls] == messages


def test_import_cli_writes_a_program(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: Any) -> None:
    from stepbridge.adapters.dspy_cli import app
    from typer.testing import CliRunner

    monkeypatch.setenv("STEPBRIDGE_LM_BASE_URL", str(server))
    monkeypatch.setenv("STEPBRIDGE_LM_MODEL", "openai/reference")
    monkeypatch.setenv("STEPBRIDGE_CONFIG", str(tmp_path / "none.toml"))
    (tmp_path / "sb_cli_module.py").write_text(
        "import dspy\n"
        "class QA(dspy.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.a = dspy.Predict('question -> draft')\n"
        "        self.b = dspy.Predict('question, draft -> answer')\n"
        "    def forward(self, question):\n"
        "        d = self.a(question=question)\n"
        "        return self.b(question=question, draft=d.draft)\n")
    (tmp_path / "samples.jsonl").write_text('{"question": "Who designed the Eiffel Tower?"}\n'
                                            '{"question": "Where is Everest?"}\n')
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "qa.yaml"
    result = CliRunner().invoke(app, ["import-dspy", "sb_cli_module:QA", "--sample-inputs", "samples.jsonl",
                                      "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["report"]["mode"] == "static" and report["report"]["verified"] is True
    assert list(load_program(out).modules) == ["a", "b"]
    state = tmp_path / "state.json"
    result = CliRunner().invoke(app, ["export-dspy", str(out), "-o", str(state)])
    assert result.exit_code == 0, result.output
    import sb_cli_module

    fresh = sb_cli_module.QA()
    fresh.load(str(state))
    assert fresh.b.signature.instructions.startswith("Given the fields")


# ------------------------------------------------------------------------------------------------
# import: each conversion case
# ------------------------------------------------------------------------------------------------
def test_exact_predict_with_types_demos_instructions_and_lm_settings(loop: Any, dspy_lm: Any, native_adapter: Any,
                                                                     server: Any) -> None:
    class Judge(dspy.Signature):
        """Judge the claim.
        Be careful."""

        claim: str = dspy.InputField(desc="a statement")
        sources: list[str] = dspy.InputField()
        verdict: Literal["true", "false"] = dspy.OutputField(desc="the verdict")
        confidence: float = dspy.OutputField()

    predictor = dspy.Predict(Judge)
    predictor.demos = [dspy.Example(claim="Water is wet", sources=["x"], verdict="true", confidence=0.9)]
    predictor.lm = dspy.LM("openai/some-model", temperature=0.3, max_tokens=50, api_base="http://evil.invalid")
    program, report = di.import_module(predictor)
    assert report.mode == "exact" and report.parts == {"main": "predict (exact)"}
    main = program.modules["main"]
    assert main.type == "predict"
    assert main.instructions == "Judge the claim.\nBe careful."
    assert main.signature.inputs["claim"].desc == "a statement"
    assert main.signature.outputs["verdict"].type == "Literal['true', 'false']"
    assert main.signature.outputs["confidence"].type == "float"
    assert main.demos == [{"claim": "Water is wet", "sources": ["x"], "verdict": "true", "confidence": 0.9}]
    assert main.lm is not None and main.lm.model_dump(exclude_none=True) == {
        "model": "openai/some-model", "temperature": 0.3, "max_tokens": 50}
    assert "evil" not in program.to_json()
    # Same messages as DSPy itself (the program's model is routed through the operator's profile).
    inputs = {"claim": "The Louvre houses the Mona Lisa", "sources": ["The Louvre houses the Mona Lisa."]}
    predictor.lm = None
    _, messages = _original_messages(predictor, inputs, dspy_lm)
    result = run(loop, native_adapter, program, inputs)
    assert result.trace[0].lm_calls[0].messages == messages[0]


def test_exact_chain_of_thought_is_verified_with_samples(dspy_lm: Any) -> None:
    cot = dspy.ChainOfThought("question -> answer: int")
    program, report = di.import_module(cot, sample_inputs=[{"question": "How many legs do 2 cats have? 8"}],
                                       lm=dspy_lm)
    assert report.mode == "exact" and report.verified
    assert program.modules["main"].type == "chain_of_thought"
    assert program.signature.to_string() == "question -> reasoning, answer: int"  # as traced imports keep it


def test_state_is_loaded_without_its_lm(dspy_lm: Any) -> None:
    trained = dspy.ChainOfThought("question -> answer")
    trained.predict.demos = [dspy.Example(question="q1", reasoning="r1", answer="a1")]
    trained.predict.signature = trained.predict.signature.with_instructions("Answer tersely.")
    state = trained.dump_state()
    state["predict"]["lm"] = {"model": "openai/gpt-4o", "api_base": "http://evil.invalid/v1"}
    fresh = dspy.ChainOfThought("question -> answer")
    program, _ = di.import_module(fresh, state=state)
    main = program.modules["main"]
    assert main.demos == [{"question": "q1", "reasoning": "r1", "answer": "a1"}]
    assert main.instructions == "Answer tersely."
    assert main.lm is None and fresh.predict.lm is None


def test_computed_values_are_not_a_fixed_data_flow(dspy_lm: Any) -> None:
    with pytest.raises(di.ConversionError, match="neither a program input"):
        di.import_module(Computed(), sample_inputs=SAMPLES_Q, lm=dspy_lm)


SAMPLES_Q = [{"question": "Who designed the Eiffel Tower?"}, {"question": "Where is Everest?"}]


def test_varying_call_sequence_falls_back_to_a_registered_dspy_step(loop: Any, dspy_lm: Any, dspy_adapter: Any) -> None:
    samples = [{"question": "Short one?"}, {"question": "A much longer question about the Eiffel Tower?"}]
    with pytest.raises(di.ConversionError, match="register Branchy"):
        di.import_module(Branchy(), sample_inputs=samples, lm=dspy_lm)
    dspy_modules.register("sb_test.Branchy", Branchy)
    try:
        original = Branchy()
        program, report = di.import_module(original, sample_inputs=samples, lm=dspy_lm)
        assert report.mode == "dspy_step" and "differs between samples" in report.notes[0]
        module = program.modules["module"]
        assert module.type == "dspy" and module.module == "sb_test.Branchy"
        assert set(module.state or {}) == {"short", "long.predict"}
        for inputs in samples:
            with dspy.context(lm=dspy_lm):
                expected = original(**inputs).answer
            assert run(loop, dspy_adapter, program, inputs).outputs == {"answer": expected}
    finally:
        dspy_modules.unregister("sb_test.Branchy")


def test_verification_catches_a_wrong_conversion(dspy_lm: Any) -> None:
    # Traced on two samples the hint looks constant; verification (calls 3 and 4) sees it change.
    with pytest.raises(di.ConversionError, match=r"failed verification|neither a program input"):
        di.import_module(Stateful(), sample_inputs=SAMPLES_Q, lm=dspy_lm)
    # verify() on its own: a conversion with the wrong instructions is rejected with the reason.
    module = RewriteThenAnswer()
    program, _ = di.import_module(module, sample_inputs=SAMPLES[:2], lm=dspy_lm)
    data = program.to_dict()
    data["modules"]["rewrite"]["instructions"] = "Rewrite the question."
    wrong = load_program(data)
    check = di.verify(module, wrong, SAMPLES[:2], lm=dspy_lm)
    assert not check.ok and any("different messages" in m for m in check.mismatches)
    assert di.verify(module, program, SAMPLES, lm=dspy_lm).ok


# ------------------------------------------------------------------------------------------------
# export / load round trips
# ------------------------------------------------------------------------------------------------
def test_export_state_loads_with_dspy_load(tmp_path: Path, dspy_lm: Any) -> None:
    data = load_program(EXAMPLES / "multihop.yaml").to_dict()
    data["modules"]["extract"]["demos"] = [{"passage": "p", "question": "q", "fact": "f"}]
    data["modules"]["answer"]["demos"] = [{"context": ["c"], "facts": ["f"], "question": "q",
                                           "reasoning": "because", "answer": "a"}]
    program = load_program(data, base_dir=EXAMPLES)
    path = tmp_path / "state.json"
    path.write_text(json.dumps(di.export_state(program)))

    blank = load_program({**data, "modules": {k: {**v, "demos": []} if "demos" in v else v
                                              for k, v in data["modules"].items()}}, base_dir=EXAMPLES)
    module = di.to_module(blank)
    module.load(str(path))  # DSPy's own loader
    predictors = dict(module.named_predictors())
    assert [dict(d) for d in predictors["extract"].demos] == [{"passage": "p", "question": "q", "fact": "f"}]
    assert predictors["answer.predict"].demos[0]["reasoning"] == "because"
    assert predictors["follow_up"].signature.instructions.startswith("Write a search query")
    # ... and back: the loaded module is the same program again.
    assert di.from_module(module, blank).content_hash == program.content_hash

    class Handwritten(dspy.Module):  # the same program written by hand in DSPy
        def __init__(self) -> None:
            super().__init__()
            self.follow_up = dspy.Predict("context: list[str], question -> query")
            self.extract = dspy.Predict("passage, question -> fact")
            self.answer = dspy.ChainOfThought("context: list[str], facts: list[str], question -> answer")

    hand = Handwritten()
    hand.load(str(path))
    assert hand.follow_up.signature.instructions == predictors["follow_up"].signature.instructions
    assert [dict(d) for d in hand.extract.demos] == [{"passage": "p", "question": "q", "fact": "f"}]


def test_import_of_export_is_identity(dspy_lm: Any) -> None:
    program = load_program({
        "stepbridge": 1, "name": "main", "signature": "text -> label: Literal['x', 'y']",
        "modules": {"main": {"type": "predict", "signature": "text -> label: Literal['x', 'y']",
                             "instructions": "Label it.", "demos": [{"text": "t", "label": "x"}]}},
        "steps": [{"call": "main", "with": {"text": "$inputs.text"}, "as": "result"},
                  {"return": {"label": "$result.label"}}],
    })
    module = di.to_module(program)
    again, report = di.import_module(module.main, name="main")
    assert report.mode == "exact" and again.content_hash == program.content_hash


# ------------------------------------------------------------------------------------------------
# optimization round trip
# ------------------------------------------------------------------------------------------------
TRAIN = [
    {"ticket": "I was charged twice, refund please", "team": "billing", "urgent": True},
    {"ticket": "The invoice amount is wrong", "team": "billing", "urgent": False},
    {"ticket": "The app crashes with an error when I log in", "team": "technical", "urgent": True},
    {"ticket": "I want to buy the enterprise plan for sales", "team": "sales", "urgent": False},
]


def _metric(example: Any, prediction: Any, trace: Any = None) -> bool:
    return bool(example.team == prediction.team)


@pytest.mark.parametrize("optimizer", ["bootstrap", "labeled"])
def test_optimization_round_trip_runs_identically_on_native(loop: Any, server: Any, dspy_adapter: Any,
                                                            native_adapter: Any, optimizer: str) -> None:
    program = load_program(EXAMPLES / "classify.yaml")
    teleprompter = (dspy.BootstrapFewShot(metric=_metric, max_bootstrapped_demos=2, max_labeled_demos=2)
                    if optimizer == "bootstrap" else dspy.LabeledFewShot(k=3))
    optimized, provenance = di.optimize(program, TRAIN, _metric, optimizer=teleprompter, adapter=dspy_adapter)
    demos = optimized.modules["route"].demos
    assert demos and all("ticket" in d and "team" in d for d in demos)
    assert provenance["source"] == "optimized" and provenance["parent"] == program.content_hash
    assert optimized.description is not None and "source: optimized with dspy." in optimized.description
    assert optimized.content_hash != program.content_hash

    inputs = {"ticket": "My card was billed but the invoice is missing"}
    start = last_seq(server)
    native = run(loop, native_adapter, optimized, inputs)
    middle = last_seq(server)
    on_dspy = run(loop, dspy_adapter, optimized, inputs)
    assert native.outputs == on_dspy.outputs
    assert logged_messages(server, start, until=middle) == logged_messages(server, middle)
    assert len(native.trace[0].lm_calls[0].messages) == 2 + 2 * len(demos)  # the demos are in the prompt
