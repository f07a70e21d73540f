"""Importing DSPy's BestOfN, Refine, MultiChainComparison and Parallel over several predictors: each
program of ``tests/dspy_import/programs`` runs in plain DSPy and, imported, on the native backend against
the same reference LM (outputs and every message compared, as the corpus is); the reward function's
DSPy semantics (raises, non-numbers, fail_count) against the real DSPy; and the errors."""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import Any

import pytest
from stepbridge import load_program
from stepbridge.adapters.dspy import dspy
from stepbridge.adapters.dspy_import import import_module
from stepbridge.adapters.dspy_reward import dspy_reward, reward_function, reward_functions
from stepbridge.errors import ConversionError, ProgramValidationError
from stepbridge.registry import metrics

from .test_corpus import evaluate

MODULES = sorted((Path(__file__).resolve().parent / "programs").glob("m*.py"))


@pytest.mark.parametrize("path", MODULES, ids=[p.stem for p in MODULES])
def test_module_type_imports_run_identically_on_native(path: Path, dspy_lm: Any, run_native: Any) -> None:
    outcome = evaluate(path, dspy_lm, run_native)
    assert (outcome.result, outcome.status) == ("identical", "verified"), outcome.detail


@pytest.fixture
def registered() -> Any:
    names: list[str] = []

    def register(name: str, fn: Any) -> None:
        metrics.register(name, dspy_reward(fn))
        names.append(name)

    yield register
    for name in names:
        metrics.unregister(name)


class _Attempts:
    """A reward that fails (raises, or returns something that is no number) on the first ``fail`` calls
    of each run, then scores by answer length."""

    def __init__(self, fail: int, how: str):
        self.fail, self.how, self.calls = fail, how, 0

    def __call__(self, args: dict[str, Any], pred: Any) -> Any:
        assert isinstance(args, dict) and isinstance(pred, dspy.Prediction)  # DSPy's types, on every backend
        self.calls += 1
        if self.calls <= self.fail:
            if self.how == "raise":
                raise ValueError(f"attempt {self.calls} refused")
            return None if self.how == "none" else "high"
        return len(pred.answer) / 1000


@pytest.mark.parametrize(("fail", "how", "n"), [(2, "raise", 4), (1, "none", 3), (3, "text", 3), (2, "raise", 2)])
def test_failed_attempts_count_as_in_dspy(fail: int, how: str, n: int, dspy_lm: Any, run_native: Any,
                                          registered: Any) -> None:
    """A reward that raises, returns None or returns text fails its attempt; DSPy's counting decides when the
    ensemble gives up (raises) or keeps the best of the rest: the same on native as in plain DSPy."""
    reward = _Attempts(fail, how)
    registered("attempts", reward)
    module = dspy.BestOfN(dspy.Predict("question -> answer"), N=n, reward_fn=reward, threshold=10.0)
    program, _ = import_module(module, lm=dspy_lm)
    assert program.modules["main"].reward.metric == "attempts"
    inputs = {"question": "What is the capital of Belgium?"}

    reward.calls = 0
    sent = dspy_lm.copy()
    plain: Any
    with dspy.context(lm=sent):
        try:
            plain = dspy.BestOfN(dspy.Predict("question -> answer"), N=n, reward_fn=reward, threshold=10.0)(**inputs)
        except Exception as exc:
            plain = exc
    reward.calls = 0
    native: Any
    try:
        native = run_native(program, inputs).outputs
    except Exception as exc:
        native = exc
    if isinstance(plain, Exception):
        assert isinstance(native, Exception), native
        assert str(plain) in str(native)
    elif plain is None:  # every attempt failed and DSPy did not re-raise: it returns None, a program fails
        assert isinstance(native, Exception) and "none of the" in str(native), native
    else:
        assert native == {"answer": plain.answer}


def test_reward_sees_the_inputs_and_a_prediction_and_refine_shows_its_source(dspy_lm: Any, run_native: Any,
                                                                           registered: Any) -> None:
    seen: list[Any] = []

    def one_word(args: dict[str, Any], pred: Any) -> float:
        seen.append((dict(args), type(pred).__name__, list(pred.keys())))
        return 1.0 if len(pred.answer.split()) == 1 else 0.0

    registered("one_word", one_word)
    program, report = import_module(dspy.Refine(dspy.ChainOfThought("question -> answer"), N=2, reward_fn=one_word,
                                                threshold=1.0), sample_inputs=[{"question": "Capital of Peru?"}],
                                    lm=dspy_lm)
    assert report.status == "verified", report
    seen.clear()
    run_native(program, {"question": "Capital of Peru?"})
    assert seen and seen[0] == ({"question": "Capital of Peru?"}, "Prediction", ["reasoning", "answer"])
    from stepbridge.ensembles import reward_source

    assert reward_source(program.modules["main"].reward, program).startswith("    def one_word(args")


def test_an_unregistered_reward_is_a_conversion_error_saying_how_to_register_it(dspy_lm: Any) -> None:
    def my_reward(args: dict[str, Any], pred: Any) -> float:
        return 1.0

    with pytest.raises(ConversionError) as info:
        import_module(dspy.BestOfN(dspy.Predict("q -> a"), N=2, reward_fn=my_reward, threshold=1.0), lm=dspy_lm)
    err = info.value
    assert err.construct == "BestOfN reward_fn" and err.file == __file__ and err.line is not None
    assert "metrics.register('my_reward', stepbridge.adapters.dspy_reward.dspy_reward(my_reward))" in (err.hint or "")


def test_a_reward_registered_without_the_adapter_is_refused(dspy_lm: Any) -> None:
    def raw(args: dict[str, Any], pred: Any) -> float:
        return 1.0

    metrics.register("raw_reward", raw)
    try:
        with pytest.raises(ConversionError, match="registered as the metric 'raw_reward' as it is"):
            import_module(dspy.Refine(dspy.Predict("q -> a"), N=2, reward_fn=raw, threshold=1.0), lm=dspy_lm)
    finally:
        metrics.unregister("raw_reward")


def test_a_nested_unregistered_reward_names_the_registration_first(dspy_lm: Any) -> None:
    def graded(args: dict[str, Any], pred: Any) -> float:
        return 0.5

    class Outer(dspy.Module):
        def __init__(self) -> None:
            self.best = dspy.BestOfN(dspy.Predict("question -> answer"), N=2, reward_fn=graded, threshold=1.0)

        def forward(self, question: str) -> Any:
            return self.best(question=question)

    with pytest.raises(ConversionError) as info:
        import_module(Outer(), sample_inputs=[{"question": "Hi?"}], lm=dspy_lm)
    assert (info.value.hint or "").startswith("register it before importing: stepbridge.registry.metrics.register("
                                              "'graded'"), info.value.hint


@pytest.mark.parametrize("change", ["threshold_bool", "threshold_nan", "fail_count_spent", "wraps_custom", "n_big"])
def test_ensembles_the_format_cannot_hold_are_conversion_errors(change: str, dspy_lm: Any, registered: Any) -> None:
    def score(args: dict[str, Any], pred: Any) -> float:
        return 1.0

    registered("score", score)
    inner: Any = dspy.Predict("q -> a")
    kwargs: dict[str, Any] = {"N": 2, "threshold": 1.0}
    if change == "threshold_bool":
        kwargs["threshold"] = True
    elif change == "threshold_nan":
        kwargs["threshold"] = float("nan")
    elif change == "n_big":
        kwargs["N"] = 10**6
    elif change == "wraps_custom":
        class Custom(dspy.Module):
            def __init__(self) -> None:
                self.p = dspy.Predict("q -> a")

            def forward(self, q: str) -> Any:
                return self.p(q=q)

        inner = Custom()
    module = dspy.BestOfN(inner, reward_fn=score, **kwargs)
    if change == "fail_count_spent":
        module.fail_count = 0  # what DSPy leaves after failed attempts of earlier calls
    with pytest.raises(ConversionError) as info:
        import_module(module, lm=dspy_lm)
    assert info.value.construct == "BestOfN" and info.value.file == __file__, info.value


def test_reward_functions_lists_what_to_register_and_the_adapter_is_idempotent() -> None:
    def first(args: dict[str, Any], pred: Any) -> float:
        return 1.0

    class Two(dspy.Module):
        def __init__(self) -> None:
            self.a = dspy.BestOfN(dspy.Predict("q -> a"), N=2, reward_fn=first, threshold=1.0)
            self.b = dspy.Refine(dspy.Predict("q -> a"), N=2, reward_fn=first, threshold=1.0)

    assert reward_functions(Two()) == {"first": first}
    adapted = dspy_reward(first)
    assert dspy_reward(adapted) is adapted and reward_function(adapted) is first
    assert adapted({"q": "x"}, {"a": "y"}) == 1.0
    with pytest.raises(TypeError):
        dspy_reward("not callable")  # type: ignore[arg-type]


class Mood(enum.Enum):
    HAPPY = "happy"
    SAD = "sad"


class Classify(dspy.Signature):
    text: str = dspy.InputField()
    mood: Mood = dspy.OutputField()


def test_a_typed_reward_field_is_reported_unverified(dspy_lm: Any, registered: Any) -> None:
    def is_happy(args: dict[str, Any], pred: Any) -> float:
        return float(pred.mood == Mood.HAPPY)  # a dict's value under stepbridge: differs from DSPy's enum

    registered("is_happy", is_happy)
    _, report = import_module(dspy.BestOfN(dspy.Predict(Classify), N=2, reward_fn=is_happy, threshold=1.0),
                              lm=dspy_lm)
    assert any(c.name == "main reward" and c.status == "unverified" and "mood" in (c.why or "")
               for c in report.constructs), report
    assert report.status != "verified"


# ------------------------------------------------------------------------------------------------
# MultiChainComparison
# ------------------------------------------------------------------------------------------------
def test_mcc_keeps_its_settings_and_refuses_a_changed_predictor(dspy_lm: Any) -> None:
    program, _ = import_module(dspy.MultiChainComparison("question -> answer", M=5, temperature=0.2,
                                                         max_tokens=99), lm=dspy_lm)
    module = program.modules["main"]
    assert (module.m, module.lm.temperature, module.lm.max_tokens) == (5, 0.2, 99)
    assert list(program.signature.inputs) == ["completions", "question"]
    changed = dspy.MultiChainComparison("question -> answer", M=3)
    changed.predict.signature = changed.predict.signature.delete("reasoning_attempt_3")
    with pytest.raises(ConversionError, match="not the one MultiChainComparison"):
        import_module(changed, lm=dspy_lm)
    with pytest.raises(ConversionError, match="M=101 is not an integer from 1 to 100"):
        import_module(dspy.MultiChainComparison("question -> answer", M=101), lm=dspy_lm)
    optimized = dspy.MultiChainComparison("question -> answer", M=2)
    optimized.predict.demos = [dspy.Example(question="q", answer="a")]
    with pytest.raises(ConversionError, match="demos"):
        import_module(optimized, lm=dspy_lm)


def _program(inputs: str, outputs: str, with_: dict[str, str]) -> dict[str, Any]:
    types = {"completions": "list[dict[str, Any]]"}
    signature = {"inputs": {k.strip(): {"type": types.get(k.strip(), "str")} for k in inputs.split(",")},
                 "outputs": {k.strip(): {} for k in outputs.split(",")}}
    return {"stepbridge": 2, "name": "mcc", "signature": signature,
            "modules": {"m": {"type": "multi_chain_comparison", "signature": "question -> answer", "m": 2}},
            "steps": [{"call": "m", "with": with_, "as": "r"}, {"return": {"answer": "$r.answer"}}]}


def test_completions_is_a_program_input_but_never_an_output_or_a_module_field() -> None:
    ok = load_program(_program("completions, question", "answer",
                               {"completions": "$inputs.completions", "question": "$inputs.question"}))
    assert list(ok.signature.inputs) == ["completions", "question"]
    bad = _program("attempts, question", "answer, completions",
                   {"completions": "$inputs.attempts", "question": "$inputs.question"})
    bad["steps"][1]["return"]["completions"] = "$inputs.attempts"
    with pytest.raises(ProgramValidationError, match="completions"):
        load_program(bad)
    field = _program("completions, question", "answer",
                     {"completions": "$inputs.completions", "question": "$inputs.question"})
    field["modules"]["p"] = {"type": "predict", "signature": "completions -> summary"}
    field["steps"].insert(1, {"call": "p", "with": {"completions": "$inputs.completions"}, "as": "s"})
    with pytest.raises(ProgramValidationError, match="completions"):
        load_program(field)


def test_a_completions_input_runs_on_the_dspy_backend(dspy_lm: Any) -> None:
    """The program's DSPy module takes ``completions`` as DSPy's MultiChainComparison does."""
    from stepbridge.adapters.dspy import ProgramModule

    program = load_program(_program("completions, question", "answer",
                                    {"completions": "$inputs.completions", "question": "$inputs.question"}))
    completions = [{"reasoning": "It is.", "answer": "blue"}, {"reasoning": "Maybe.", "answer": "green"}]
    sent = dspy_lm.copy()
    with dspy.context(lm=sent):
        converted = ProgramModule(program)(completions=completions, question="Sky colour?")
        plain = dspy.MultiChainComparison("question -> answer", M=2)(completions=completions, question="Sky colour?")
    assert converted.answer == plain.answer
    assert sent.history[0]["messages"] == sent.history[1]["messages"]


def test_cli_imports_a_best_of_n_whose_package_registers_its_reward(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    operator_lm: Any) -> None:
    """The documented command-line path: the module's own package registers its reward (here at import; an
    entry point of group ``stepbridge.metrics`` works the same); without it, exit 2 with the line to run."""
    from stepbridge.adapters.dspy_cli import app
    from typer.testing import CliRunner

    source = ("import dspy\n"
              "def brief(args, pred):\n"
              "    return 1.0 if len(pred.answer) < 40 else 0.0\n"
              "qa = dspy.ChainOfThought('question -> answer')\n"
              "program = dspy.BestOfN(qa, N=2, reward_fn=brief, threshold=1.0)\n")
    registering = ("from stepbridge.adapters.dspy_reward import dspy_reward\n"
                   "from stepbridge.registry import metrics\n"
                   "metrics.register('brief', dspy_reward(brief))\n")
    (tmp_path / "sb_bare_best.py").write_text(source)
    (tmp_path / "sb_best.py").write_text(source + registering)
    (tmp_path / "samples.jsonl").write_text('{"question": "Who designed the Eiffel Tower?"}\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        result = CliRunner().invoke(app, ["import-dspy", "sb_best:program", "--sample-inputs", "samples.jsonl",
                                          "-o", str(tmp_path / "best.yaml"), "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["report"]["status"] == "verified"
        program = load_program(tmp_path / "best.yaml")
        assert program.modules["main"].reward.metric == "brief"
        assert program.modules["main_module"].type == "chain_of_thought"
    finally:
        metrics.unregister("brief")
    result = CliRunner().invoke(app, ["import-dspy", "sb_bare_best:program", "--sample-inputs", "samples.jsonl",
                                      "-o", str(tmp_path / "bare.yaml")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "dspy_reward(brief)" in result.output and "sb_bare_best.py:2" in result.output


def test_a_reward_that_calls_an_lm_itself_is_refused(dspy_lm: Any, registered: Any) -> None:
    """DSPy's judge-in-a-function style: the judge's calls would be no program step (and native gives a
    metric no LM), so the conversion is refused rather than verified on the DSPy backend alone."""
    judge = dspy.Predict("answer -> score: float")

    def judged(args: dict[str, Any], pred: Any) -> float:
        return float(judge(answer=pred.answer).score)

    registered("judged", judged)
    with pytest.raises(ConversionError) as info:
        import_module(dspy.BestOfN(dspy.Predict("question -> answer"), N=2, reward_fn=judged, threshold=2.0),
                      sample_inputs=[{"question": "Capital of Peru?"}], lm=dspy_lm)
    assert info.value.construct == "judged reward_fn" and info.value.file == __file__
    assert "reward: {module: judge, field: score}" in (info.value.hint or "")
