"""Importing forwards with data flow beyond predictor fields: loops with state, dspy.Retrieve, tools,
helper functions, whole predictions passed as text, bare returned values. Each conversion is run on the
native backend against the reference LM and compared with plain DSPy (outputs and every message) on
inputs the import never saw; what cannot be reproduced is refused with the reason."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pydantic
import pytest
from stepbridge.adapters.dspy import dspy
from stepbridge.adapters.dspy_convert import _data
from stepbridge.adapters.dspy_import import dspy_retriever, import_module
from stepbridge.adapters.dspy_static import Unsupported, compile_forward
from stepbridge.errors import ConversionError
from stepbridge.registry import retrievers, tools

Q = [{"question": "Who designed the Eiffel Tower?"}, {"question": "Where is Mount Everest?"}]
UNSEEN = [{"question": "What does the Louvre house? It's 'big'\n\"really\""}, {"question": "x"}]


def _same_on_native(loop: Any, adapter: Any, original: Any, program: Any, lm: Any,
                    inputs_list: list[dict[str, Any]]) -> None:
    from stepbridge import RunOptions

    for inputs in inputs_list:
        run_lm = lm.copy()
        with dspy.context(lm=run_lm):
            prediction = original(**inputs)
        messages = [e["messages"] for e in run_lm.history]

        async def go(inputs: dict[str, Any] = inputs) -> Any:
            await adapter.prepare(program)
            return await adapter.run(program, inputs, RunOptions())

        result = loop.run_until_complete(go())
        if isinstance(prediction, dspy.Prediction):  # a whole prediction inside it: the object of its fields
            assert result.outputs == {k: _data(prediction[k]) for k in program.signature.outputs}
        else:
            assert list(result.outputs.values()) == [prediction]
        assert [c.messages for s in result.trace for c in s.lm_calls] == messages


# ------------------------------------------------------------------------------------------------
# a whole prediction passed as a text argument: DSPy sends its repr
# ------------------------------------------------------------------------------------------------
class PassesPrediction(dspy.Module):
    def __init__(self) -> None:
        self.first = dspy.ChainOfThought("question -> answer")
        self.second = dspy.Predict("answer -> simplified")

    def forward(self, question: str) -> Any:
        answer = self.first(question=question)
        return self.second(answer=answer)


def test_a_whole_prediction_passed_as_text_is_its_repr_on_native(loop: Any, dspy_lm: Any,
                                                                 native_adapter: Any) -> None:
    original = PassesPrediction()
    program, report = import_module(original, sample_inputs=Q, lm=dspy_lm)
    assert report.status == "verified", str(report)
    assert program.to_dict()["steps"][1]["with"]["answer"]["$template"][0].startswith("Prediction(")
    _same_on_native(loop, native_adapter, original, program, dspy_lm, UNSEEN)  # quotes, newlines: repr's rules


class Person(pydantic.BaseModel):
    name: str


class PersonSig(dspy.Signature):
    question: str = dspy.InputField()
    person: Person = dspy.OutputField()


class PassesTypedPrediction(dspy.Module):
    def __init__(self) -> None:
        self.first = dspy.Predict(PersonSig)
        self.second = dspy.Predict("answer -> simplified")

    def forward(self, question: str) -> Any:
        return self.second(answer=self.first(question=question))


def test_a_whole_prediction_with_object_fields_is_refused(dspy_lm: Any) -> None:
    # its repr shows Person(name=...), which the program's JSON data cannot reproduce
    with pytest.raises(ConversionError, match=r"repr.*person: Person"):
        import_module(PassesTypedPrediction(), sample_inputs=Q, lm=dspy_lm, fallback=False)


# ------------------------------------------------------------------------------------------------
# whole predictions returned as outputs (DSPy's llms.txt tutorial): the objects of their fields
# ------------------------------------------------------------------------------------------------
class ReturnsWholePredictions(dspy.Module):
    def __init__(self) -> None:
        self.analyze = dspy.ChainOfThought("topic -> summary, keywords: list[str], score: int")
        self.title = dspy.Predict("summary -> title")

    def forward(self, question: str) -> Any:
        analysis = self.analyze(topic=question)
        title = self.title(summary=f"{analysis.summary} {analysis.keywords}")
        meta = dspy.Prediction(title=title.title, keywords=analysis.keywords)
        return dspy.Prediction(title=title.title, analysis=analysis, meta=meta)


def test_whole_predictions_returned_are_objects_of_their_fields(loop: Any, dspy_lm: Any,
                                                                native_adapter: Any) -> None:
    original = ReturnsWholePredictions()
    program, report = import_module(original, sample_inputs=Q, lm=dspy_lm)
    assert report.mode == "static" and report.status == "verified", str(report)
    assert program.signature.outputs["analysis"].type == "dict[str, Any]"
    assert program.to_dict()["steps"][-1]["return"]["analysis"] == "$analyze_out"
    assert any("'analysis' is a whole prediction" in n for n in report.notes) and \
        any("'meta' is a whole prediction" in n for n in report.notes)
    # reasoning, text, a list and an int: every field, with its parsed type, on inputs never seen
    _same_on_native(loop, native_adapter, original, program, dspy_lm, UNSEEN)


class ReturnsListOfPredictions(ReturnsWholePredictions):
    def forward(self, question: str) -> Any:
        analysis = self.analyze(topic=question)
        title = self.title(summary=analysis.summary)
        return dspy.Prediction(both=[analysis, title])


class ReturnsWholeToolResult(ReturnsWholePredictions):
    def forward(self, question: str) -> Any:
        found = search(question, k=2)
        return dspy.Prediction(found=found, title=self.title(summary=question).title)


def test_a_whole_tool_result_as_an_output_is_refused() -> None:
    obj = ReturnsWholeToolResult()
    with pytest.raises(Unsupported, match="a whole retriever or tool result as an output"):
        compile_forward(obj, "forward", {id(obj.title): "title"}, {"title": ["title"], "search": ["hits", "n"]},
                        tools={id(search): ("search", ["query", "k"])})


def test_a_list_of_whole_predictions_as_an_output_is_refused() -> None:
    obj = ReturnsListOfPredictions()
    with pytest.raises(Unsupported, match=r"a whole predictor result \(analysis\) used as a value"):
        compile_forward(obj, "forward", {id(obj.analyze): "analyze", id(obj.title): "title"},
                        {"analyze": ["reasoning", "summary", "keywords", "score"], "title": ["title"]})


# ------------------------------------------------------------------------------------------------
# a bare returned value
# ------------------------------------------------------------------------------------------------
class ReturnsText(dspy.Module):
    def __init__(self) -> None:
        self.gen = dspy.ChainOfThought("question -> answer")

    def forward(self, question: str) -> str:
        return self.gen(question=question).answer


class ReturnsTemplate(ReturnsText):
    def forward(self, question: str) -> str:
        return f"Answer: {self.gen(question=question).answer}"


@pytest.mark.parametrize(("cls", "name"), [(ReturnsText, "answer"), (ReturnsTemplate, "output")])
def test_a_bare_returned_value_is_the_one_output(cls: type, name: str, loop: Any, dspy_lm: Any,
                                                 native_adapter: Any) -> None:
    original = cls()
    program, report = import_module(original, sample_inputs=Q, lm=dspy_lm)
    assert report.status == "verified", str(report)
    assert list(program.signature.outputs) == [name]
    _same_on_native(loop, native_adapter, original, program, dspy_lm, UNSEEN)


# ------------------------------------------------------------------------------------------------
# loops with state, dspy.Retrieve, helper functions
# ------------------------------------------------------------------------------------------------
def rm(query: str, k: int = 3, **_: Any) -> list[Any]:
    from dspy.dsp.utils import dotdict

    words = query.split()
    return [dotdict(long_text=f"passage {i} on {' '.join(words[:3])}") for i in range(k)]


@pytest.fixture
def registered_rm() -> Iterator[None]:
    retrievers.register("sb_test_rm", dspy_retriever(rm))
    with dspy.context(rm=rm):
        yield
    retrievers.unregister("sb_test_rm")


def deduplicate(seq: list[str]) -> list[str]:
    """A helper as DSPy's examples write it (one expression): inlined as $dedupe."""
    return list(dict.fromkeys(seq))


class Baleen(dspy.Module):
    def __init__(self, hops: int = 3) -> None:
        self.generate_query = [dspy.ChainOfThought("context, question -> query") for _ in range(hops)]
        self.retrieve = dspy.Retrieve(k=2)
        self.answer = dspy.ChainOfThought("context, question -> answer")
        self.hops = hops

    def forward(self, question: str) -> Any:
        context: list[str] = []
        notes = []
        for hop in range(self.hops):
            query = self.generate_query[hop](context=context, question=question).query
            passages = self.retrieve(query).passages
            context = deduplicate(context + passages)
            notes.append(query)
        pred = self.answer(context=context, question=question)
        return dspy.Prediction(context=context, answer=pred.answer, notes=notes)


def test_a_stateful_loop_with_retrieve_is_a_loop_step(loop: Any, dspy_lm: Any, native_adapter: Any,
                                                      registered_rm: None) -> None:
    original = Baleen()
    program, report = import_module(original, sample_inputs=Q, lm=dspy_lm)
    assert report.mode == "static" and report.status == "verified", str(report)
    steps = program.to_dict()["steps"]
    body = next(s["loop"] for s in steps if "loop" in s)
    assert body["max"] == 3
    assert program.modules["retrieve"].type == "retrieve" and program.modules["retrieve"].k == 2
    assert any("switch" in s for s in body["steps"])  # generate_query[hop]
    _same_on_native(loop, native_adapter, original, program, dspy_lm, UNSEEN)


class SimpleRAG(dspy.Module):
    def __init__(self) -> None:
        self.retrieve = dspy.Retrieve(k=3)
        self.generate_answer = dspy.ChainOfThought("context, question -> answer")

    def forward(self, question: str) -> Any:
        context = self.retrieve(question).passages
        prediction = self.generate_answer(context=context, question=question)
        return dspy.Prediction(context=context, answer=prediction.answer)


def test_retrieve_without_a_loop_is_a_retrieve_step(loop: Any, dspy_lm: Any, native_adapter: Any,
                                                    registered_rm: None) -> None:
    original = SimpleRAG()
    program, report = import_module(original, sample_inputs=Q, lm=dspy_lm)
    assert report.status == "verified", str(report)
    assert program.to_dict()["steps"][0] == {"call": "retrieve", "with": {"query": "$inputs.question"},
                                             "as": "retrieve_out"}
    _same_on_native(loop, native_adapter, original, program, dspy_lm, UNSEEN)


class JoinedRAG(SimpleRAG):
    def forward(self, question: str) -> Any:
        passages = self.retrieve(question).passages
        context = "\n\n".join(passages)
        words = context.split(" ")
        return self.generate_answer(context=context + "\n" + "|".join(words), question=question)


def test_joined_and_split_text_are_operations(loop: Any, dspy_lm: Any, native_adapter: Any,
                                              registered_rm: None) -> None:
    original = JoinedRAG()
    program, report = import_module(original, sample_inputs=Q, lm=dspy_lm)
    assert report.mode == "static" and report.status == "verified", str(report)
    _same_on_native(loop, native_adapter, original, program, dspy_lm, UNSEEN)


def test_retrieve_without_a_registered_rm_is_refused_naming_it(dspy_lm: Any) -> None:
    with dspy.context(rm=rm), pytest.raises(ConversionError, match=r"dspy\.Retrieve"):
        import_module(SimpleRAG(), sample_inputs=Q, lm=dspy_lm, fallback=False)


def search(query: str, k: int) -> list[str]:
    return [f"{query} -- passage {i}" for i in range(k)]


class SetOrder(dspy.Module):
    def __init__(self) -> None:
        self.gen = dspy.ChainOfThought("question -> titles: list[str]")

    def forward(self, question: str) -> Any:
        titles = []
        for _ in range(2):
            titles.extend(self.gen(question=question).titles)
        return dspy.Prediction(titles=list(set(titles)))


def test_list_of_a_set_is_refused_for_its_hash_order(dspy_lm: Any) -> None:
    with pytest.raises(ConversionError, match=r"list\(set\(\.\.\.\)\): its order is Python's hash order"):
        import_module(SetOrder(), sample_inputs=Q, lm=dspy_lm, fallback=False)


class ToolInLoop(dspy.Module):
    def __init__(self, hops: int = 2) -> None:
        self.query = dspy.Predict("question, notes: list[str] -> query")
        self.hops, self.k = hops, 2

    def forward(self, question: str) -> Any:
        notes: list[str] = []
        for _ in range(self.hops):
            q = self.query(question=question, notes=notes).query
            notes += search(q, k=self.k)
        return dspy.Prediction(notes=notes)


def test_a_registered_tool_called_in_a_loop_is_a_tool_step(loop: Any, dspy_lm: Any, native_adapter: Any) -> None:
    tools.register("search", search)
    try:
        original = ToolInLoop()
        program, report = import_module(original, sample_inputs=Q, lm=dspy_lm)
        assert report.mode == "static" and report.status == "verified", str(report)
        assert program.modules["search"].type == "tool"
        _same_on_native(loop, native_adapter, original, program, dspy_lm, UNSEEN)
    finally:
        tools.unregister("search")


# ------------------------------------------------------------------------------------------------
# a registered tool returning a dspy.Prediction (DSPy's RAG tutorial: search(question).passages)
# ------------------------------------------------------------------------------------------------
CORPUS_TEXT = ["The Eiffel Tower was designed by Gustave Eiffel's company.", "Mount Everest is in Nepal.",
               "The Louvre houses the Mona Lisa."]


def rank(query: str) -> Any:
    words = set(query.lower().split())
    ranked = sorted(CORPUS_TEXT, key=lambda p: -len(words & set(p.lower().split())))
    return dspy.Prediction(passages=ranked[:2], best=ranked[0])


def rank_varying(query: str) -> Any:  # other fields on other inputs: no fixed outputs
    return dspy.Prediction(passages=[query], extra=1) if len(query) > 25 else dspy.Prediction(passages=[query])


class RankedRAG(dspy.Module):
    def __init__(self, search: Any = rank) -> None:
        self.respond = dspy.ChainOfThought("context, question -> response")
        self.search = search

    def forward(self, question: str) -> Any:
        found = rank(question)
        pred = self.respond(context=found.passages, question=question)
        return dspy.Prediction(response=pred.response, best=found.best)


class VaryingRAG(RankedRAG):
    def forward(self, question: str) -> Any:
        found = rank_varying(question)
        return self.respond(context=found.passages, question=question)


def test_a_tool_returning_a_prediction_has_its_fields_as_outputs(loop: Any, dspy_lm: Any,
                                                                 native_adapter: Any) -> None:
    tools.register("rank", rank)
    try:
        original = RankedRAG()
        program, report = import_module(original, sample_inputs=Q, lm=dspy_lm)
        assert report.mode == "static" and report.status == "verified", str(report)
        assert program.modules["rank"].signature.to_string() == "query -> passages: list[str], best"  # type: ignore[union-attr]
        assert any("returned a dspy.Prediction with the fields passages, best" in n for n in report.notes)
        _same_on_native(loop, native_adapter, original, program, dspy_lm, UNSEEN)
    finally:
        tools.unregister("rank")


def test_a_tool_returning_predictions_of_other_fields_is_not_given_outputs(dspy_lm: Any) -> None:
    tools.register("rank_varying", rank_varying)
    try:
        samples = Q  # 29 and 23 characters: the tool returns other fields
        with pytest.raises(ConversionError, match="an attribute of something other than a predictor result"):
            import_module(VaryingRAG(), sample_inputs=samples, lm=dspy_lm, fallback=False)
    finally:
        tools.unregister("rank_varying")


# ------------------------------------------------------------------------------------------------
# a break under a condition at the top level of a range loop, conditional expressions (DSPy's multi-hop
# research tutorial): `A; if c: break; B` is `A; set brk = c; if not brk: B` with `until: brk`
# ------------------------------------------------------------------------------------------------
class ResearchLoop(dspy.Module):
    def __init__(self, hops: int = 3) -> None:
        self.query = dspy.ChainOfThought("question, notes -> query")
        self.note = dspy.Predict("question, notes, found: list[str] -> note")
        self.hops = hops

    def forward(self, question: str) -> Any:
        notes: list[str] = []
        found: list[str] = []
        for i in range(self.hops):
            query = self.query(question=question, notes=notes).query if i else question
            results = search(query, k=2)
            found.extend(results)
            if i == self.hops - 1:
                break
            notes.append(self.note(question=question, notes=notes, found=results).note)
        return dspy.Prediction(notes=notes, found=found)


def test_a_break_on_the_pass_number_and_a_conditional_expression_are_verified(
        loop: Any, dspy_lm: Any, native_adapter: Any) -> None:
    tools.register("search", search)
    try:
        original = ResearchLoop()
        program, report = import_module(original, sample_inputs=Q[:1], lm=dspy_lm)
        assert report.mode == "static" and report.status == "verified", str(report)
        spec = next(s["loop"] for s in program.to_dict()["steps"] if "loop" in s)
        assert spec["until"] == "$v_break" and spec["max"] == 3
        assert spec["steps"][-1]["if"] == {"$not": "$v_break"}  # what follows the break runs only without it
        by_kind = {c.name.split(": ")[1].split(" `")[0]: c for c in report.constructs if "forward" in c.name}
        assert "always 3 pass(es)" in (by_kind["for"].why or "")
        assert "pass number" in (by_kind["conditional expression"].why or "")
        _same_on_native(loop, native_adapter, original, program, dspy_lm, [*Q, *UNSEEN])
    finally:
        tools.unregister("search")


class ChoosesArguments(dspy.Module):
    def __init__(self) -> None:
        self.gen = dspy.Predict("question, hint -> answer")
        self.hint = dspy.Predict("question -> hint")

    def forward(self, question: str) -> Any:
        pred = self.gen(question=question if len(question) > 25 else f"Short: {question}",
                        hint=self.hint(question=question).hint if "Eiffel" in question else "none")
        return dspy.Prediction(answer=pred.answer, size=str(len(question)), both=str([question, 1.5, None]))


def test_conditional_arguments_and_str_run_as_in_dspy(loop: Any, dspy_lm: Any, native_adapter: Any) -> None:
    original = ChoosesArguments()
    program, report = import_module(original, sample_inputs=Q, lm=dspy_lm)
    assert report.mode == "static", str(report)
    # their paths share a line: never said to be verified (the samples did take both, on native too)
    assert report.status == "partially verified", str(report)
    assert [s.get("if") is not None for s in program.to_dict()["steps"][:3]] == [True, True, False]
    _same_on_native(loop, native_adapter, original, program, dspy_lm, [*Q, *UNSEEN])


class ChoiceUnderAnInputTest(dspy.Module):
    def __init__(self) -> None:
        self.gen = dspy.Predict("question -> answer")

    def forward(self, question: str) -> Any:
        answers = []
        for i in range(3):
            if len(question) > 25 or i == 2:  # which passes reach the choice depends on the input
                answers.append(self.gen(question=question).answer if i == 2 else question)
        return dspy.Prediction(answers=answers)


def test_a_choice_on_the_pass_number_inside_an_input_test_is_not_proven(loop: Any, dspy_lm: Any,
                                                                       native_adapter: Any) -> None:
    original = ChoiceUnderAnInputTest()
    program, report = import_module(original, sample_inputs=[Q[1]], lm=dspy_lm)  # short: only pass 2 reaches it
    choice = next(c for c in report.constructs if "conditional expression" in c.name)
    assert choice.status == "unverified" and report.status == "partially verified", str(report)
    _same_on_native(loop, native_adapter, original, program, dspy_lm, [Q[0], *UNSEEN])  # long: the other path


class BreaksOnInput(dspy.Module):
    def __init__(self) -> None:
        self.gen = dspy.Predict("question, tries: list[str] -> answer")

    def forward(self, question: str) -> Any:
        tries: list[str] = []
        for i in range(3):
            if i >= 1 and len(question) > 25:  # a break first: the pass does nothing else
                break
            tries.append(self.gen(question=question, tries=tries).answer)
        return dspy.Prediction(tries=tries, n=len(tries))


class BreaksOnAnswer(dspy.Module):
    def __init__(self) -> None:
        self.gen = dspy.Predict("question -> answer")

    def forward(self, question: str) -> Any:
        answer = ""
        for _ in range(3):
            answer = self.gen(question=f"{question} {answer}").answer
            if len(answer) > 5:
                break
        return dspy.Prediction(answer=answer)


class BreaksWithWork(dspy.Module):
    """Work in the break's block (state set on the way out), and a pass skipped with continue."""

    def __init__(self) -> None:
        self.gen = dspy.Predict("question, seen: list[str] -> answer")

    def forward(self, question: str) -> Any:
        seen: list[str] = []
        final = "none"
        for i in range(4):
            if i == 1 or len(question) < 10:
                seen.append(f"skipped {i}")
                continue
            answer = self.gen(question=f"{question} ({i})", seen=seen).answer
            seen.append(answer)
            if len(seen) >= 3 and len(question) > 25:
                final = f"stopped at {i}: {answer}"
                break
        return dspy.Prediction(seen=seen, final=final)


@pytest.mark.parametrize("name", ["BreaksOnInput", "BreaksOnAnswer", "BreaksWithWork", "TwoBreaks", "BreakAndContinue"])
def test_a_break_on_inputs_or_replies_runs_as_in_dspy(name: str, loop: Any, dspy_lm: Any,
                                                      native_adapter: Any) -> None:
    original = globals()[name]()
    program, report = import_module(original, sample_inputs=Q, lm=dspy_lm)
    assert report.mode == "static", str(report)
    loops = [c for c in report.constructs if ": for `" in c.name]
    # the number of passes depends on the inputs: never proven from the source
    assert loops and all("always" not in (c.why or "") for c in loops), str(report)
    _same_on_native(loop, native_adapter, original, program, dspy_lm, [*Q, *UNSEEN])


# ------------------------------------------------------------------------------------------------
# for loops over a list (a loop step with `over`), enumerate, state, a break
# ------------------------------------------------------------------------------------------------
class PerPassage(dspy.Module):
    def __init__(self) -> None:
        self.judge = dspy.Predict("question, passage -> relevant: bool")
        self.answer = dspy.Predict("question, notes: list[str] -> answer")

    def forward(self, question: str, passages: list[str]) -> Any:
        notes: list[str] = []
        for i, passage in enumerate(passages):
            verdict = self.judge(question=question, passage=passage).relevant
            if verdict or len(passage) > 20:
                notes.append(f"{i}: {passage}")
            if len(notes) >= 2:
                break
        return self.answer(question=question, notes=notes)


def test_a_for_loop_over_a_list_is_a_loop_over_it(loop: Any, dspy_lm: Any, native_adapter: Any) -> None:
    samples = [{"question": "Which tower?", "passages": ["The Eiffel Tower is in Paris.", "x", "Big Ben"]},
               {"question": "Which mountain?", "passages": ["Everest"]}]
    original = PerPassage()
    program, report = import_module(original, sample_inputs=samples, lm=dspy_lm)
    assert report.mode == "static", str(report)
    spec = next(s["loop"] for s in program.to_dict()["steps"] if "loop" in s)
    assert spec["over"] == "$inputs.passages" and spec["index"] == "pass_i" and spec["item"] == "item_passage"
    assert any("at most 10,000 passes" in n for n in report.notes)
    unseen = [{"question": "Q?", "passages": []},  # no pass at all
              {"question": "Where?", "passages": [f"passage number {i} with words" for i in range(5)]}]
    _same_on_native(loop, native_adapter, original, program, dspy_lm, [*samples, *unseen])


# ------------------------------------------------------------------------------------------------
# str methods on known strings: $strip, $lower, $upper, $replace, $startswith, $endswith
# ------------------------------------------------------------------------------------------------
class CleansAndRoutes(dspy.Module):
    """What unseen DSPy programs do with replies and inputs: clean them, test them, branch on them."""

    def __init__(self) -> None:
        self.rewrite = dspy.Predict("question -> query")
        self.gen = dspy.Predict("question, context -> answer")

    def forward(self, question: str) -> Any:
        q = question.strip()
        pred = self.rewrite(question=q.replace("\n", " "))
        query = pred.query.strip().lower()
        if question.strip().lower().endswith("?") and not query.startswith("zzz"):
            context = query.upper()
        else:
            context = pred.query.replace(" ", "_").replace("", "|")
        answer = self.gen(question=q, context=context).answer
        return dspy.Prediction(answer=answer.strip(), query=query, loud=f"{answer.upper()}!",
                               is_the=answer.lower().startswith("the"), asked=q.endswith("?"))


STR_SAMPLES = [{"question": "  Who designed the Eiffel Tower?\n"}, {"question": "Where is Mount Everest"}]
STR_UNSEEN = [{"question": "\u2003Wo liegt die Straße?\u3000"}, {"question": "\tWHAT\nIS\r\nİstanbul ?  "},
              {"question": "x"}, {"question": "\x85\xa0"}]


def test_str_methods_are_operations_and_run_as_in_dspy(loop: Any, dspy_lm: Any, native_adapter: Any) -> None:
    original = CleansAndRoutes()
    program, report = import_module(original, sample_inputs=STR_SAMPLES, lm=dspy_lm)
    assert report.mode == "static" and report.status == "verified", str(report)
    data = program.to_dict()
    assert data["steps"][0] == {"call": "rewrite", "with": {"question": {"$replace": [
        {"$strip": "$inputs.question"}, "\n", " "]}}, "as": "rewrite_out"}
    assert data["steps"][1]["if"] == {"$and": [
        {"$endswith": [{"$lower": {"$strip": "$inputs.question"}}, "?"]},
        {"$not": {"$startswith": [{"$lower": {"$strip": "$rewrite_out.query"}}, "zzz"]}}]}
    _same_on_native(loop, native_adapter, original, program, dspy_lm, [*STR_SAMPLES, *STR_UNSEEN])


class StripsAList(dspy.Module):
    def __init__(self) -> None:
        self.gen = dspy.Predict("question -> answer")

    def forward(self, questions: list[str]) -> Any:
        return self.gen(question=questions.strip())


def test_a_str_method_on_an_input_that_is_not_text_is_refused_naming_it(dspy_lm: Any) -> None:
    why: list[str] = []
    from stepbridge.adapters.dspy_trace import _static_program

    assert _static_program(StripsAList(), [{"questions": ["a", "b"]}], dspy_lm, "t", why) is None
    assert why and ".strip() of something not known to be a string" in why[0], why


# ------------------------------------------------------------------------------------------------
# what the static reader refuses (then tracing decides, or the module is opaque)
# ------------------------------------------------------------------------------------------------
class Aliased(dspy.Module):
    def __init__(self) -> None:
        self.gen = dspy.Predict("question -> answer")

    def forward(self, question: str) -> Any:
        a: list[str] = []
        b = a
        for _ in range(2):
            b.append(self.gen(question=question).answer)
        return dspy.Prediction(a=a)


class PlusUnknown(Aliased):
    def forward(self, question: str) -> Any:
        text = question
        for _ in range(2):
            answer = self.gen(question=question).answer
            text = text + answer  # question's kind is not known statically: str, or a list?
        return dspy.Prediction(answer=text)


class Closure(Aliased):
    def forward(self, question: str) -> Any:
        suffix = "!"

        def shout(x: str) -> str:
            return x + suffix

        for _ in range(2):
            question = shout(self.gen(question=question).answer)
        return dspy.Prediction(answer=question)


class OverflowingArithmetic(Aliased):
    big = 1e308

    def forward(self, question: str) -> Any:  # inf: a program file holds no such number (it became null)
        return dspy.Prediction(answer=self.gen(question=question).answer, k=self.big * 10)


class NotANumber(Aliased):
    big = 1e308

    def forward(self, question: str) -> Any:
        return dspy.Prediction(answer=self.gen(question=question).answer, k=self.big * 10 - self.big * 10)


class InfiniteSetting(Aliased):
    k = float("inf")

    def forward(self, question: str) -> Any:
        return dspy.Prediction(answer=self.gen(question=question).answer, k=self.k)


class InfiniteLiteral(Aliased):
    def forward(self, question: str) -> Any:
        return dspy.Prediction(answer=self.gen(question=question).answer, k=1e999)


class InfiniteArgument(dspy.Module):
    def __init__(self) -> None:
        self.gen = dspy.Predict("question, k -> answer")
        self.big = 1e308

    def forward(self, question: str) -> Any:
        return self.gen(question=question, k=self.big * 10)  # DSPy sends 'inf'; a program file cannot hold it


def test_a_number_a_program_cannot_hold_is_refused_not_written_as_null(dspy_lm: Any) -> None:
    # read statically it is refused; traced, the constant inf was kept in memory (verified: DSPy's messages)
    # while the program as written said null: a different program under the same report
    with pytest.raises(ConversionError, match="no NaN or infinity"):
        import_module(InfiniteArgument(), sample_inputs=Q, lm=dspy_lm, fallback=False)


class MutatedAfterPrediction(Aliased):
    def forward(self, question: str) -> Any:
        notes: list[str] = []
        pred = dspy.Prediction(notes=notes)
        notes.append(self.gen(question=question).answer)  # Python: pred.notes changes too
        return pred


class ShadowsATool(Aliased):
    def forward(self, question: str, search: Any = None) -> Any:  # a parameter: not the registered tool
        answer = self.gen(question=question).answer
        return dspy.Prediction(found=search(answer, k=2))


class BreakInElse(Aliased):
    def forward(self, question: str) -> Any:
        answer = ""
        for _ in range(3):
            answer = self.gen(question=question).answer
            if len(answer) > 5:
                pass
            else:
                break
        return dspy.Prediction(answer=answer)


class NestedBreak(Aliased):
    def forward(self, question: str) -> Any:
        answer = ""
        for _ in range(3):
            answer = self.gen(question=question).answer
            if answer:  # noqa: SIM102 (the nesting is what is refused)
                if len(answer) > 5:
                    break
        return dspy.Prediction(answer=answer)


class TwoBreaks(Aliased):
    def forward(self, question: str) -> Any:
        answer = ""
        for _ in range(3):
            if not question:
                break
            answer = self.gen(question=question).answer
            if len(answer) > 5:
                break
        return dspy.Prediction(answer=answer)


class BreakAndContinue(Aliased):
    def forward(self, question: str) -> Any:
        answers = []
        for i in range(3):
            if i == 1:
                continue
            answers.append(self.gen(question=question).answer)
            if len(answers) > 1:
                break
        return dspy.Prediction(answers=answers)


class StatementAfterBreak(Aliased):
    def forward(self, question: str) -> Any:
        answer = ""
        for _ in range(3):
            answer = self.gen(question=question).answer
            if answer:
                break
                answer = "never"
        return dspy.Prediction(answer=answer)


class ChoosesWholeResults(Aliased):
    def forward(self, question: str) -> Any:
        pred = self.gen(question=question) if len(question) > 3 else self.gen(question="?")
        return dspy.Prediction(answer=pred.answer)


class ChoiceInsideText(Aliased):
    def forward(self, question: str) -> Any:
        return self.gen(question=f"{question if len(question) > 3 else '?'}")


class StripsCharacters(Aliased):
    def forward(self, question: str) -> Any:
        return dspy.Prediction(answer=self.gen(question=question).answer.strip("?"))


class ReplacesOnce(Aliased):
    def forward(self, question: str) -> Any:
        return dspy.Prediction(answer=self.gen(question=question).answer.replace("a", "b", 1))


class ReplacesByKeyword(Aliased):
    def forward(self, question: str) -> Any:
        return dspy.Prediction(answer=self.gen(question=question).answer.replace("a", new="b"))


class StartsWithATuple(Aliased):
    def forward(self, question: str) -> Any:
        answer = self.gen(question=question).answer
        return dspy.Prediction(answer=answer, yes=answer.startswith(("yes", "Yes")))


class EndsWithAnUnknown(Aliased):
    def forward(self, question: str) -> Any:
        answer = self.gen(question=question).answer
        return dspy.Prediction(answer=answer, echoed=answer.endswith(question))  # question: no kind without samples


class LowersAList(Aliased):
    def forward(self, question: str) -> Any:
        answer = self.gen(question=question).answer
        answers = [answer]
        return dspy.Prediction(answers=answers.lower())


class LowersAnInput(Aliased):
    def forward(self, question: str) -> Any:
        return dspy.Prediction(answer=self.gen(question=question.lower()).answer)


class CasefoldsText(Aliased):
    def forward(self, question: str) -> Any:
        return dspy.Prediction(answer=self.gen(question=question).answer.casefold())


class ArithmeticOnInput(Aliased):
    def forward(self, question: str) -> Any:
        answers = []
        for i in range(3):
            if i == len(question) - 1:
                break
            answers.append(self.gen(question=question).answer)
        return dspy.Prediction(answers=answers)


class OverText(Aliased):
    def forward(self, question: str) -> Any:
        answers = []
        for word in question:
            answers.append(self.gen(question=word).answer)
            answers.append(word)
        return dspy.Prediction(answers=answers)


class OverGrowing(Aliased):
    def forward(self, question: str) -> Any:
        items = [question]
        for item in items:
            items.append(self.gen(question=item).answer)
        return dspy.Prediction(items=items)


class BoundInsideOver(Aliased):
    def forward(self, question: str) -> Any:
        for item in [question, "again"]:
            last = self.gen(question=item).answer
        return dspy.Prediction(last=last)


class PairsTarget(Aliased):
    def forward(self, question: str) -> Any:
        out = []
        for a, b in [[question, "x"]]:
            out.append(self.gen(question=a + b).answer)
            out.append(b)
        return dspy.Prediction(out=out)


class BreakFailsOnAPass(Aliased):
    def forward(self, question: str) -> Any:
        answers = []
        for i in range(3):
            answers.append(self.gen(question=question).answer)
            if i >= 1 and len(i) > 1:  # Python raises TypeError on pass 1 (len of an int)
                break
        return dspy.Prediction(answers=answers)


def test_a_break_condition_failing_on_a_pass_is_no_proof_and_no_traceback(dspy_lm: Any) -> None:
    obj = BreakFailsOnAPass()
    compiled = compile_forward(obj, "forward", {id(obj.gen): "gen"}, {"gen": ["answer"]})
    assert compiled.proven == {}  # the pass count is not claimed
    with pytest.raises(ConversionError, match="raised TypeError"):  # the module itself fails on its samples
        import_module(obj, sample_inputs=Q, lm=dspy_lm, fallback=False)


@pytest.mark.parametrize(("cls", "why"), [
    (ShadowsATool, "a call of the local name search"),
    (Aliased, "another name may share it"),
    (MutatedAfterPrediction, "another name may share it"),
    (PlusUnknown, "`\\+` on values whose kinds"),
    (BreakInElse, "a break or continue other than one ending an `if <condition>:` block"),
    (NestedBreak, "a break or continue other than one ending an `if <condition>:` block"),
    (StatementAfterBreak, "a break or continue other than one ending an `if <condition>:` block"),
    (ChoosesWholeResults, "a whole predictor result in a conditional expression"),
    (OverText, "a for loop over something not known to be a list"),
    (OverGrowing, "a loop over items, which its body changes"),
    (BoundInsideOver, "name 'last' is not a parameter or an earlier assignment"),
    (PairsTarget, "whose target is not a name, or \\(index, item\\) of enumerate"),
    (ChoiceInsideText, "the expression IfExp has no program equivalent here"),
    (ArithmeticOnInput, "arithmetic on a value not known at import"),
    (StripsCharacters, "str.strip with other than no arguments"),
    (ReplacesOnce, "str.replace with other than two arguments"),
    (ReplacesByKeyword, "str.replace with other than two arguments"),
    (StartsWithATuple, "str.startswith with a tuple \\(one string only"),
    (EndsWithAnUnknown, "str.endswith with an argument not known to be a string"),
    (LowersAList, "\\.lower\\(\\) of something not known to be a string"),
    (LowersAnInput, "\\.lower\\(\\) of something not known to be a string"),
    (CasefoldsText, "the expression Call has no program equivalent here"),
    (Closure, "FunctionDef"),
    (OverflowingArithmetic, "not a finite number"),
    (NotANumber, "not a finite number"),
    (InfiniteSetting, "not a finite number"),
    (InfiniteLiteral, "not a finite number"),
])
def test_the_static_reader_refuses_what_it_cannot_reproduce(cls: type, why: str) -> None:
    obj = cls()
    search_module = {id(search): ("search", ["query", "k"])}  # as if `search` were registered
    with pytest.raises(Unsupported, match=why):
        compile_forward(obj, "forward", {id(obj.gen): "gen"}, {"gen": ["answer"], "search": ["result"]},
                        types={"gen": {"answer": "str"}, "search": {"result": "list[str]"}}, tools=search_module)


class ChatMessages(dspy.Module):
    """DSPy's deployment tutorial: forward(self, messages) answers messages[0]["content"]."""

    def __init__(self) -> None:
        self.cot = dspy.ChainOfThought("question -> answer")

    def forward(self, messages: list[dict[str, str]]) -> Any:
        pred = self.cot(question=messages[0]["content"])
        out = dspy.Prediction(answer=pred.answer, asked=[messages[0]["content"], "?"])
        return out


def test_keys_indexes_list_literals_and_a_named_prediction(loop: Any, dspy_lm: Any, native_adapter: Any) -> None:
    original = ChatMessages()
    samples = [{"messages": [{"role": "user", "content": q["question"]}]} for q in Q]
    program, report = import_module(original, sample_inputs=samples, lm=dspy_lm)
    assert report.mode == "static" and report.status == "verified", str(report)
    assert program.to_dict()["steps"][0]["with"]["question"] == {
        "$get": [{"$index": ["$inputs.messages", 0]}, "content"]}
    _same_on_native(loop, native_adapter, original, program, dspy_lm,
                    [{"messages": [{"role": "user", "content": u["question"]}, {"role": "user", "content": "2nd"}]}
                     for u in UNSEEN])
