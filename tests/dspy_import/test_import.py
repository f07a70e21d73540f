"""Importing DSPy modules: typed errors, format-2 types, settings, where predictors live, honest verification."""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import Any

import pydantic
import pytest
from stepbridge.adapters.dspy import dspy
from stepbridge.adapters.dspy_import import import_module
from stepbridge.errors import ConversionError

Q = [{"question": "Who designed the Eiffel Tower?"}, {"question": "Where is Mount Everest?"}]
QN = [{**q, "notes": [f"note {i}"]} for i, q in enumerate(Q)]


def _run(loop: Any, adapter: Any, program: Any, inputs: dict[str, Any]) -> Any:
    from stepbridge import RunOptions

    async def go() -> Any:
        await adapter.prepare(program)
        return await adapter.run(program, inputs, RunOptions())

    return loop.run_until_complete(go())


def _plain(module: Any, inputs: dict[str, Any], lm: Any) -> tuple[Any, list[Any]]:
    run_lm = lm.copy()
    with dspy.context(lm=run_lm):
        prediction = module(**inputs)
    return prediction, [e["messages"] for e in run_lm.history]


# ------------------------------------------------------------------------------------------------
# types: format 2 instead of a traceback
# ------------------------------------------------------------------------------------------------
class Mood(enum.Enum):
    HAPPY = "happy"
    SAD = "sad"


class Person(pydantic.BaseModel):
    name: str
    age: int | None = None


class Typed(dspy.Signature):
    """Describe the person."""

    text: str = dspy.InputField()
    history: dspy.History = dspy.InputField()
    extras: dict[str, Any] = dspy.InputField()
    person: Person = dspy.OutputField()
    mood: Mood = dspy.OutputField()


def test_enums_models_any_and_history_become_format_2_types() -> None:
    program, report = import_module(dspy.Predict(Typed))
    assert report.status == "exact"
    assert program.version == 2 if hasattr(program, "version") else program.to_dict()["stepbridge"] == 2
    data = program.to_dict()
    assert set(data["types"]) == {"Person", "Mood"}
    sig = program.modules["main"].signature
    assert sig.inputs["history"].type == "History" and sig.inputs["extras"].type == "dict[str, Any]"
    assert sig.outputs["person"].type == "Person" and sig.outputs["mood"].type == "Mood"


def test_an_unconvertible_type_is_a_conversion_error_with_file_and_line() -> None:
    class Weird(dspy.Signature):
        text: str = dspy.InputField()
        when: set[int] = dspy.OutputField()

    with pytest.raises(ConversionError) as info:
        import_module(dspy.Predict(Weird))
    err = info.value
    assert err.construct == "Weird.when" and err.file == __file__ and err.line is not None
    assert "to fix:" in str(err) and f"{Path(__file__).name}:" in str(err)


# ------------------------------------------------------------------------------------------------
# the LM is resolved as the CLI resolves it; exact CoT keeps reasoning
# ------------------------------------------------------------------------------------------------
def test_python_api_resolves_the_operator_lm_and_cot_keeps_reasoning(operator_lm: Any) -> None:
    program, report = import_module(dspy.ChainOfThought("question -> answer"), sample_inputs=Q)
    assert report.status == "verified"
    assert list(program.signature.outputs) == ["reasoning", "answer"]


def test_cli_without_samples_names_the_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               operator_lm: Any) -> None:
    from stepbridge.adapters.dspy_cli import app
    from typer.testing import CliRunner

    (tmp_path / "sb_nosample.py").write_text(
        "import dspy\n"
        "class Two(dspy.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.a = dspy.Predict('question -> answer')\n"
        "    def forward(self, question):\n"
        "        return self.a(question=question)\n")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["import-dspy", "sb_nosample:Two", "-o", str(tmp_path / "x.yaml")])
    assert result.exit_code == 2
    assert "--sample-inputs" in result.output and "Traceback" not in result.output


# ------------------------------------------------------------------------------------------------
# settings: predictor config and the ambient adapter
# ------------------------------------------------------------------------------------------------
def test_predictor_settings_and_ambient_adapter_are_captured(loop: Any, dspy_lm: Any, native_adapter: Any,
                                                             server: Any) -> None:
    predictor = dspy.Predict("question -> answer", temperature=0.7, max_tokens=300)
    with dspy.context(adapter=dspy.JSONAdapter()):
        program, report = import_module(predictor, sample_inputs=Q, lm=dspy_lm)
        _, messages = _plain(predictor, Q[0], dspy_lm)
    assert report.status == "verified"
    lm = program.modules["main"].lm
    assert lm is not None and (lm.temperature, lm.max_tokens, lm.adapter) == (0.7, 300, "json")
    result = _run(loop, native_adapter, program, Q[0])
    assert [c.messages for s in result.trace for c in s.lm_calls] == messages


class Bounded(dspy.Signature):
    """Score how well the question is asked."""

    question: str = dspy.InputField(max_length=200)
    score: int = dspy.OutputField(desc="quality", ge=0, le=10)


@pytest.mark.parametrize("adapter", [None, "json", "xml"])
def test_field_constraints_are_printed_as_dspy_prints_them(adapter: str | None, loop: Any, dspy_lm: Any,
                                                           native_adapter: Any) -> None:
    predictor = dspy.ChainOfThought(Bounded)
    formats = {"json": dspy.JSONAdapter, "xml": dspy.XMLAdapter}
    with dspy.context(adapter=formats[adapter]() if adapter else None):
        program, report = import_module(predictor, sample_inputs=Q, lm=dspy_lm)
        prediction, messages = _plain(predictor, Q[1], dspy_lm)
    assert report.status == "verified", str(report)
    sig = program.modules["main"].signature  # type: ignore[union-attr]
    assert sig.outputs["score"].constraints == "greater than or equal to: 0, less than or equal to: 10"
    assert sig.inputs["question"].constraints == "maximum length: 200"
    result = _run(loop, native_adapter, program, Q[1])
    assert [c.messages for s in result.trace for c in s.lm_calls] == messages
    assert "Constraints: greater than or equal to: 0, less than or equal to: 10" in messages[0][0]["content"]
    assert result.outputs["score"] == prediction.score


# ------------------------------------------------------------------------------------------------
# where predictors live; traced values copied at call time
# ------------------------------------------------------------------------------------------------
class Inner(dspy.Module):
    def __init__(self) -> None:
        super().__init__()
        self.answer = dspy.Predict("question, notes: list[str] -> answer")

    def forward(self, question: str, notes: list[str]) -> Any:
        return self.answer(question=question, notes=notes)


class Containers(dspy.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stages = [dspy.Predict("question -> draft"), dspy.Predict("question, draft -> summary")]
        self.by_name = {"title": dspy.Predict("question -> title")}
        self.inner = Inner()

    def forward(self, question: str, notes: list[str]) -> Any:
        d = self.stages[0](question=question)
        s = self.stages[1](question=question, draft=d.draft)
        t = self.by_name["title"](question=question)
        out = self.inner(question=question, notes=notes)
        notes.append("mutated after the call")
        return dspy.Prediction(answer=out.answer, summary=s.summary, title=t.title)


def test_predictors_in_lists_dicts_and_nested_modules(loop: Any, dspy_lm: Any, native_adapter: Any) -> None:
    original = Containers()
    program, report = import_module(original, sample_inputs=QN, lm=dspy_lm)
    assert report.mode == "traced" and report.verification is not None and report.verification.ok
    assert set(program.modules) == {"stages_0", "stages_1", "by_name_title", "inner_answer"}
    inputs = {"question": "What does the Louvre house?", "notes": ["a note"]}
    prediction, messages = _plain(original, {**inputs, "notes": ["a note"]}, dspy_lm)
    result = _run(loop, native_adapter, program, inputs)
    assert result.outputs == {k: prediction[k] for k in ("answer", "summary", "title")}
    assert [c.messages for s in result.trace for c in s.lm_calls] == messages


def test_a_list_mutated_after_the_call_is_traced_with_its_call_time_value(dspy_lm: Any) -> None:
    # forward appends to its input list after inner.answer ran: traced by reference, the argument would
    # not equal the input (as given) and the import would fail as "a computed value"
    samples = [json.loads(json.dumps(s)) for s in QN]
    program, report = import_module(Containers(), sample_inputs=samples, lm=dspy_lm)
    steps = program.to_dict()["steps"]
    inner = next(s for s in steps if s.get("call") == "inner_answer")
    assert inner["with"]["notes"] == "$inputs.notes" and report.status == "verified"
    assert samples == QN  # the caller's samples are not mutated either


# ------------------------------------------------------------------------------------------------
# honest verification
# ------------------------------------------------------------------------------------------------
class Router(dspy.Module):
    def __init__(self) -> None:
        super().__init__()
        self.classify = dspy.Predict("question -> kind")
        self.math = dspy.Predict("question -> answer")
        self.other = dspy.ChainOfThought("question -> answer")

    def forward(self, question: str) -> Any:
        kind = self.classify(question=question).kind
        if "math" in kind:
            return self.math(question=question)
        return self.other(question=question)


def test_a_branch_no_sample_reached_is_never_verified(dspy_lm: Any) -> None:
    _, report = import_module(Router(), sample_inputs=Q, lm=dspy_lm)
    assert report.verified is False and report.status == "partially verified"
    unverified = [c for c in report.constructs if c.status == "unverified"]
    assert any("if" in c.name and "then path never ran" in (c.why or "") for c in unverified)
    with pytest.raises(ConversionError, match="partially verified"):
        import_module(Router(), sample_inputs=Q, lm=dspy_lm, strict=True)


class AsyncOnly(dspy.Module):
    def __init__(self) -> None:
        super().__init__()
        self.p = dspy.Predict("question -> answer")

    async def aforward(self, question: str) -> Any:
        return await self.p.acall(question=question)


def test_an_aforward_only_module_is_converted(dspy_lm: Any) -> None:
    program, report = import_module(AsyncOnly(), sample_inputs=Q, lm=dspy_lm)
    assert report.mode == "static" and report.status == "verified"  # aforward read from its source
    assert list(program.modules) == ["p"]


class WithRetrieve(dspy.Module):
    def __init__(self) -> None:
        super().__init__()
        self.retrieve = dspy.Retrieve(k=2)
        self.answer = dspy.Predict("context, question -> answer")

    def forward(self, question: str) -> Any:
        context = self.retrieve(question).passages
        return self.answer(context=context, question=question)


def test_retrieve_is_a_typed_error_or_an_opaque_step_never_a_traceback(dspy_lm: Any) -> None:
    from dspy.dsp.utils import dotdict
    from stepbridge.registry import dspy_modules

    def rm(query: str, k: int = 3, **_: Any) -> list[Any]:
        return [dotdict(long_text=f"passage about {query}")][:k]

    with dspy.context(rm=rm):
        with pytest.raises(ConversionError, match="register WithRetrieve"):
            import_module(WithRetrieve(), sample_inputs=Q, lm=dspy_lm)
        dspy_modules.register("sb_test.WithRetrieve", WithRetrieve)
        try:
            program, report = import_module(WithRetrieve(), sample_inputs=Q, lm=dspy_lm)
        finally:
            dspy_modules.unregister("sb_test.WithRetrieve")
    assert report.status == "opaque" and program.modules["module"].type == "dspy"
    assert set(program.modules["module"].state or {}) == {"answer"}


def test_a_module_raising_on_its_samples_is_a_conversion_error(dspy_lm: Any) -> None:
    class Broken(dspy.Module):
        def __init__(self) -> None:
            super().__init__()
            self.p = dspy.Predict("question -> answer")

        def forward(self, question: str) -> Any:
            raise RuntimeError("boom")

    with pytest.raises(ConversionError, match="RuntimeError") as info:
        import_module(Broken(), sample_inputs=Q, lm=dspy_lm, fallback=False)
    assert json.loads(json.dumps(info.value.to_dict()))["type"] == "ConversionError"


# ------------------------------------------------------------------------------------------------
# opaque steps: the module's own LMs are never used
# ------------------------------------------------------------------------------------------------
class SwitchesLM(dspy.Module):
    """Its forward picks its own models and an endpoint nothing listens on (port 9, discard)."""

    def __init__(self) -> None:
        super().__init__()
        self.first = dspy.Predict("question -> draft")
        self.second = dspy.Predict("question, draft -> answer")
        self.own = dspy.LM("openai/their-model", api_base="http://127.0.0.1:9/v1", api_key="theirs", cache=False)

    def forward(self, question: str) -> Any:
        with dspy.context(lm=self.own):
            draft = self.first(question=question).draft
        self.second.set_lm(dspy.LM("openai/another", api_base="http://127.0.0.1:9/v1", cache=False))
        answer = self.second(question=question, draft=draft).answer
        direct = self.own(messages=[{"role": "user", "content": f"[[ ## question ## ]]\n{question}"}])
        return dspy.Prediction(answer=answer, extra=str(bool(direct)))


def test_an_opaque_module_switching_lms_reaches_only_the_operators_lm(loop: Any, server: Any, dspy_lm: Any,
                                                                      dspy_adapter: Any) -> None:
    from stepbridge.registry import dspy_modules

    dspy_modules.register("sb_test.SwitchesLM", SwitchesLM)
    try:
        module = SwitchesLM()
        # importing runs it: its calls go to the import's LM (port 9 is never tried); the direct LM call is
        # no predictor call, so the traced program makes one call fewer and verification says so
        with pytest.raises(ConversionError, match="3 LM calls originally, 2 converted"):
            import_module(module, sample_inputs=Q, lm=dspy_lm, fallback=False)
        from stepbridge import load_program

        program = load_program({
            "stepbridge": 1, "name": "switches", "signature": "question -> answer, extra",
            "modules": {"m": {"type": "dspy", "module": "sb_test.SwitchesLM",
                              "signature": "question -> answer, extra"}},
            "steps": [{"call": "m", "with": {"question": "$inputs.question"}, "as": "r"},
                      {"return": {"answer": "$r.answer", "extra": "$r.extra"}}]})
        before = len(server.log.entries()) if server.log else 0
        result = _run(loop, dspy_adapter, program, Q[0])
        sent = (len(server.log.entries()) if server.log else 0) - before
        calls = [c for s in result.trace for c in s.lm_calls]
        assert len(calls) == 3 and sent == 3  # every call went to the operator's LM, and is in the trace
        assert {c.model for c in calls} == {"openai/reference"}
    finally:
        dspy_modules.unregister("sb_test.SwitchesLM")


class CallsForward(dspy.Module):
    """Below ``__call__``: a request sent with its own LM's ``forward`` (no callbacks, no history)."""

    def __init__(self) -> None:
        super().__init__()
        self.answer = dspy.Predict("question -> answer")
        self.own = dspy.LM("openai/their-model", api_base="http://127.0.0.1:9/v1", api_key="theirs", cache=False)

    def forward(self, question: str) -> Any:
        self.own.forward(messages=[{"role": "user", "content": question}])
        return self.answer(question=question)


def test_a_module_calling_its_own_lms_forward_is_refused_before_any_request(loop: Any, server: Any,
                                                                            dspy_adapter: Any) -> None:
    from stepbridge.errors import StepbridgeError
    from stepbridge.registry import dspy_modules

    dspy_modules.register("sb_test.CallsForward", CallsForward)
    try:
        from stepbridge import load_program

        program = load_program({
            "stepbridge": 1, "name": "calls_forward", "signature": "question -> answer",
            "modules": {"m": {"type": "dspy", "module": "sb_test.CallsForward", "signature": "question -> answer"}},
            "steps": [{"call": "m", "with": {"question": "$inputs.question"}, "as": "r"},
                      {"return": {"answer": "$r.answer"}}]})
        before = len(server.log.entries()) if server.log else 0
        with pytest.raises(StepbridgeError) as info:
            _run(loop, dspy_adapter, program, Q[0])
        # refused where the request is prepared: not a connection error from port 9, and nothing was sent
        assert "its own LM" in str(info.value) and "their-model" in str(info.value), str(info.value)
        assert (len(server.log.entries()) if server.log else 0) == before
    finally:
        dspy_modules.unregister("sb_test.CallsForward")


# ------------------------------------------------------------------------------------------------
# branches read statically
# ------------------------------------------------------------------------------------------------
class LengthRouter(dspy.Module):
    """Short questions get a quick answer, long ones a chain of thought and a review."""

    def __init__(self) -> None:
        super().__init__()
        self.quick = dspy.Predict("question -> answer")
        self.think = dspy.ChainOfThought("question -> answer")
        self.review = dspy.Predict("question, draft -> answer")

    def forward(self, question: str) -> Any:
        if len(question) < 30:
            return self.quick(question=question)
        draft = self.think(question=question).answer
        final = self.review(question=question, draft=f"Draft: {draft}")
        return dspy.Prediction(answer=final.answer, draft=draft)


ROUTED = [{"question": "Capital of Peru?"}, {"question": "Who designed the Eiffel Tower in Paris, and when?"}]


def test_a_branching_forward_becomes_an_if_and_runs_both_paths_on_native(loop: Any, dspy_lm: Any,
                                                                         native_adapter: Any) -> None:
    original = LengthRouter()
    program, report = import_module(original, sample_inputs=ROUTED, lm=dspy_lm)
    assert report.mode == "static" and report.status == "verified", str(report)
    step = program.to_dict()["steps"][0]
    assert step["if"] == {"$lt": [{"$len": "$inputs.question"}, 30]}
    for inputs in [*ROUTED, {"question": "Where is Everest?"}, {"question": "What does the Louvre in Paris house?"}]:
        prediction, messages = _plain(original, inputs, dspy_lm)
        result = _run(loop, native_adapter, program, inputs)
        assert result.outputs == {"answer": prediction.answer, "draft": prediction.get("draft")}
        assert [c.messages for s in result.trace for c in s.lm_calls] == messages


def test_a_branch_read_statically_but_not_taken_is_partially_verified(dspy_lm: Any) -> None:
    # one short sample: its marked copy is long, takes the other path, and is verified there too
    _, report = import_module(LengthRouter(), sample_inputs=ROUTED[:1], lm=dspy_lm)
    assert report.status == "verified" and report.verification is not None and report.verification.samples == 2
    # one long sample: no input reaches the short path, which is in the program but not verified
    program, report = import_module(LengthRouter(), sample_inputs=ROUTED[1:], lm=dspy_lm)
    assert report.mode == "static" and report.status == "partially verified"
    assert any(c.status == "unverified" and "if" in c.name for c in report.constructs)
    assert "if" in program.to_dict()["steps"][0]  # the untaken path is in the program all the same


# ------------------------------------------------------------------------------------------------
# odd modules: a ConversionError or a program, never anything else
# ------------------------------------------------------------------------------------------------
def _odd_modules() -> dict[str, Any]:
    class NoPredictors(dspy.Module):
        def forward(self, question: str) -> Any:
            return dspy.Prediction(answer=question.upper())

    class ReturnsNone(dspy.Module):
        def __init__(self) -> None:
            super().__init__()
            self.p = dspy.Predict("question -> answer")

        def forward(self, question: str) -> Any:
            self.p(question=question)

    class ReturnsDict(dspy.Module):
        def __init__(self) -> None:
            super().__init__()
            self.p = dspy.Predict("question -> answer")

        def forward(self, question: str) -> Any:
            return {"answer": self.p(question=question).answer}

    class Positional(dspy.Module):
        def __init__(self) -> None:
            super().__init__()
            self.p = dspy.Predict("question -> answer")

        def forward(self, *args: Any) -> Any:
            return self.p(question=args[0] if args else "")

    class CreatesPredictor(dspy.Module):
        def forward(self, question: str) -> Any:
            return dspy.Predict("question -> answer")(question=question)

    class RaisesOnMarked(dspy.Module):
        def __init__(self) -> None:
            super().__init__()
            self.p = dspy.Predict("question -> answer")

        def forward(self, question: str) -> Any:
            if "<" in question:
                raise ValueError("no markers here")
            if len(question) > 10:
                return self.p(question=question)
            return dspy.Prediction(answer="short")

    namespace: dict[str, Any] = {"dspy": dspy, "Any": Any}
    exec(  # a class whose source cannot be read
        "class NoSource(dspy.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.p = dspy.Predict('question -> answer')\n"
        "    def forward(self, question):\n"
        "        return self.p(question=question) if question else self.p(question='?')\n", namespace)
    return {cls.__name__: cls for cls in (NoPredictors, ReturnsNone, ReturnsDict, Positional, CreatesPredictor,
                                          RaisesOnMarked, namespace["NoSource"])}


@pytest.mark.parametrize("name", sorted(_odd_modules()))
def test_odd_modules_give_a_conversion_error_or_an_honest_program(name: str, dspy_lm: Any) -> None:
    module = _odd_modules()[name]()
    try:
        _, report = import_module(module, sample_inputs=Q, lm=dspy_lm, fallback=False)
    except ConversionError as exc:
        assert exc.construct and "to fix:" in exc.message
        return
    if name in ("NoSource", "RaisesOnMarked"):  # paths it cannot see or check are never verified
        assert report.status != "verified", str(report)


def test_bad_arguments_are_conversion_errors(dspy_lm: Any) -> None:
    with pytest.raises(ConversionError, match=r"dspy\.Module instance"):
        import_module(object(), sample_inputs=Q, lm=dspy_lm)  # type: ignore[arg-type]
    with pytest.raises(ConversionError, match="raised TypeError"):
        import_module(Router(), sample_inputs=[{"nonsense": 1}], lm=dspy_lm, fallback=False)
    with pytest.raises(ConversionError):
        import_module(dspy.Predict("question -> answer"), state={"signature": 5}, lm=dspy_lm)


class PerQuestion(dspy.Module):
    """Answers each question of a list, then summarizes (a comprehension and a for-append)."""

    def __init__(self) -> None:
        super().__init__()
        self.answer = dspy.Predict("question -> answer")
        self.check = dspy.Predict("question, topic -> verdict")
        self.summarize = dspy.Predict("answers: list[str] -> summary")

    def forward(self, questions: list[str], topic: str) -> Any:
        answers = [self.answer(question=q).answer for q in questions]
        verdicts = []
        for q in questions:
            verdicts.append(self.check(question=q, topic=topic).verdict)
        summary = self.summarize(answers=answers).summary
        return dspy.Prediction(answers=answers, verdicts=verdicts, summary=summary)


def test_comprehensions_and_for_append_become_map_steps(loop: Any, dspy_lm: Any, native_adapter: Any) -> None:
    samples = [{"questions": ["Who designed the Eiffel Tower?", "Where is Everest?"], "topic": "travel"}]
    original = PerQuestion()
    program, report = import_module(original, sample_inputs=samples, lm=dspy_lm)
    assert report.mode == "static" and report.status == "verified", str(report)
    kinds = [next(iter(s)) for s in program.to_dict()["steps"]]
    assert kinds == ["map", "map", "call", "return"]
    assert program.signature.inputs["questions"].type == "list[str]"
    for inputs in [{"questions": ["What does the Louvre house?"], "topic": "art"},
                   {"questions": ["Capital of Peru?", "Capital of Chile?", "Who wrote Faust?"], "topic": "x"}]:
        prediction, messages = _plain(original, inputs, dspy_lm)
        result = _run(loop, native_adapter, program, inputs)
        assert result.outputs == {k: prediction[k] for k in ("answers", "verdicts", "summary")}
        sent = [c.messages for s in result.trace for c in [*s.lm_calls, *(x for ch in (s.children or [])
                                                                          for x in ch.lm_calls)]]
        assert sorted(map(str, sent)) == sorted(map(str, messages))  # map elements run concurrently


def test_cli_strict_refuses_a_partial_import_and_reports_constructs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    operator_lm: Any) -> None:
    from stepbridge.adapters.dspy_cli import app
    from typer.testing import CliRunner

    (tmp_path / "sb_router.py").write_text(
        "import dspy\n"
        "class Router(dspy.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.quick = dspy.Predict('question -> answer')\n"
        "        self.think = dspy.ChainOfThought('question -> answer')\n"
        "    def forward(self, question):\n"
        "        if len(question) > 1000:\n"
        "            return self.think(question=question)\n"
        "        return self.quick(question=question)\n")
    (tmp_path / "samples.jsonl").write_text('{"question": "Who designed the Eiffel Tower?"}\n')
    monkeypatch.chdir(tmp_path)
    args = ["import-dspy", "sb_router:Router", "--sample-inputs", "samples.jsonl", "-o", str(tmp_path / "r.yaml")]
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)["report"]
    assert report["status"] == "partially verified" and report["verified"] is False
    assert any(c["status"] == "unverified" and c["line"] == 8 for c in report["constructs"])
    result = CliRunner().invoke(app, [*args, "--strict"])
    assert result.exit_code == 2 and "partially verified" in result.output and "Traceback" not in result.output


# ------------------------------------------------------------------------------------------------
# registered tools called by forward become tool steps
# ------------------------------------------------------------------------------------------------
PASSAGES = ["The Eiffel Tower was designed by Gustave Eiffel's company.", "Mount Everest is in Nepal.",
            "The Louvre houses the Mona Lisa."]


def sb_search(query: str, k: int) -> list[str]:
    """Top-k passages sharing the most words with the query."""
    words = set(query.lower().split())
    return sorted(PASSAGES, key=lambda p: -len(words & set(p.lower().split())))[:k]


class SearchThenAnswer(dspy.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rewrite = dspy.Predict("question -> query")
        self.respond = dspy.ChainOfThought("context: list[str], question -> answer")

    def forward(self, question: str) -> Any:
        query = self.rewrite(question=question).query
        context = sb_search(query, k=2)
        return self.respond(context=context, question=question)


def test_a_registered_tool_called_in_forward_is_a_tool_step(loop: Any, dspy_lm: Any, native_adapter: Any) -> None:
    from stepbridge.registry import tools

    with pytest.raises(ConversionError, match="neither a program input"):  # unregistered: a computed value
        import_module(SearchThenAnswer(), sample_inputs=Q, lm=dspy_lm, fallback=False)
    tools.register("sb_search", sb_search)
    try:
        original = SearchThenAnswer()
        program, report = import_module(original, sample_inputs=Q, lm=dspy_lm)
        assert report.mode == "static" and report.status == "verified", str(report)  # read from its source
        steps = program.to_dict()["steps"]
        assert steps[1] == {"call": "sb_search", "with": {"query": "$rewrite_out.query", "k": 2}, "as": "sb_search_out"}
        assert steps[2]["with"]["context"] == "$sb_search_out.result"
        for inputs in [*Q, {"question": "What does the Louvre house?"}]:
            prediction, messages = _plain(original, inputs, dspy_lm)
            result = _run(loop, native_adapter, program, inputs)
            assert result.outputs == {"reasoning": prediction.reasoning, "answer": prediction.answer}
            assert [c.messages for s in result.trace for c in s.lm_calls] == messages
    finally:
        tools.unregister("sb_search")


def test_dspy_custom_types_are_refused_not_misconverted() -> None:
    class CodeSig(dspy.Signature):
        question: str = dspy.InputField()
        code: dspy.Code = dspy.OutputField()

    # dspy.Code is a pydantic model, but formats and parses itself: converting it as an object type would
    # send other messages (verification caught that); it is refused before, with the field named
    with pytest.raises(ConversionError, match=r"CodeSig\.code: dspy\.Code is a DSPy type"):
        import_module(dspy.Predict(CodeSig))


class Refiner(dspy.Module):
    def __init__(self, rounds: int = 2, stop_early: bool = False) -> None:
        super().__init__()
        self.rounds, self.stop_early = rounds, stop_early
        self.draft = dspy.Predict("question -> answer")
        self.improve = dspy.Predict("question, answer -> better")

    def forward(self, question: str) -> Any:
        answer = self.draft(question=question).answer
        for _ in range(self.rounds):
            answer = self.improve(question=question, answer=answer).better
            if self.stop_early and answer.endswith("!"):
                break
        return dspy.Prediction(answer=answer)


def test_a_loop_over_the_modules_own_count_is_fixed_unless_it_can_break(dspy_lm: Any) -> None:
    program, report = import_module(Refiner(rounds=2), sample_inputs=Q, lm=dspy_lm)
    loop_construct = next(c for c in report.constructs if " for `" in c.name)
    assert loop_construct.status == "unverified"  # the loop body holds a break: its count may vary
    # read statically (`answer.endswith("!")` is $endswith): a loop step that stops at the break, not unrolled
    assert report.mode == "static", str(report)
    spec = next(s["loop"] for s in program.to_dict()["steps"] if "loop" in s)
    assert spec["max"] == 2 and spec["until"] == "$v_break"
    assert spec["steps"][-1] == {"set": {"v_break": {"$and": [False, {"$endswith": ["$v_answer", "!"]}]}}}


class FixedRefiner(Refiner):
    def forward(self, question: str) -> Any:
        answer = self.draft(question=question).answer
        for _ in range(self.rounds):
            answer = self.improve(question=question, answer=answer).better
        return dspy.Prediction(answer=answer)


def test_a_loop_over_the_modules_own_count_is_verified_as_unrolled(dspy_lm: Any) -> None:
    _, report = import_module(FixedRefiner(rounds=2), sample_inputs=Q, lm=dspy_lm)
    loop_construct = next(c for c in report.constructs if " for `" in c.name)
    assert loop_construct.status == "verified" and "self.rounds = 2" in (loop_construct.why or "")
    assert report.status == "verified", str(report)


class CallOverride(dspy.Module):
    """DSPy's usage-tracking docs override __call__ instead of forward."""

    def __init__(self) -> None:
        self.predict1 = dspy.ChainOfThought("question -> answer")
        self.predict2 = dspy.Predict("question, answer -> score")

    def __call__(self, question: str) -> Any:
        answer = self.predict1(question=question).answer
        return self.predict2(question=question, answer=answer)


def test_a_module_overriding_call_is_converted(dspy_lm: Any) -> None:
    program, report = import_module(CallOverride(), sample_inputs=Q, lm=dspy_lm)
    assert report.mode == "static" and report.status == "verified", str(report)
    assert list(program.modules) == ["predict1", "predict2"]


def sb_lookup(query: str) -> list[str]:
    """Wikipedia-like abstracts for a query (offline stand-in)."""
    return [f"Abstract about {query}", f"Another page on {query}"]


class FirstHit(dspy.Module):
    """DSPy's custom-module tutorial shape: context = search_wikipedia(query)[0]."""

    def __init__(self) -> None:
        super().__init__()
        self.query_generator = dspy.Predict("question -> query")
        self.answer_generator = dspy.ChainOfThought("question, context -> answer")

    def forward(self, question: str) -> Any:
        query = self.query_generator(question=question).query
        context = sb_lookup(query)[0]
        return self.answer_generator(question=question, context=context)


def test_an_element_of_a_list_result_is_wired_with_index(loop: Any, dspy_lm: Any, native_adapter: Any) -> None:
    from stepbridge.registry import tools

    tools.register("sb_lookup", sb_lookup)
    try:
        original = FirstHit()
        program, report = import_module(original, sample_inputs=Q, lm=dspy_lm)
        assert report.status == "verified", str(report)
        answer_step = next(s for s in program.to_dict()["steps"] if s.get("call") == "answer_generator")
        assert answer_step["with"]["context"] == {"$index": ["$sb_lookup_out.result", 0]}
        inputs = {"question": "What does the Louvre house?"}
        prediction, messages = _plain(original, inputs, dspy_lm)
        result = _run(loop, native_adapter, program, inputs)
        assert result.outputs["answer"] == prediction.answer
        assert [c.messages for s in result.trace for c in s.lm_calls] == messages
    finally:
        tools.unregister("sb_lookup")
