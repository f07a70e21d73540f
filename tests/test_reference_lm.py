"""The reference LM over real loopback HTTP, driven by httpx and by DSPy's own LM client (both engines)."""

from __future__ import annotations

import json
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, Optional

# DSPy and litellm must not touch the network or the user's cache (set before they are imported).
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("DSPY_CACHEDIR", tempfile.mkdtemp(prefix="stepbridge-dspy-cache-"))

import dspy
import httpx
import pydantic
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stepbridge.reference_lm import (
    GARBAGE_TEXT,
    ReferenceModel,
    RequestLog,
    ServerURL,
    create_app,
    parse_faults,
    parse_system_message,
    request_hash,
    running_server,
    running_server_process,
)

ENGINES = ["lm15", "litellm"]
ADAPTERS = [dspy.ChatAdapter, dspy.JSONAdapter]
PASSAGES = [
    "Berlin is the capital of Germany. It has many museums.",
    "Paris is the capital of France. The Seine flows through Paris.",
    "Mount Everest is 8849 metres high.",
]
_LOOPBACK = {"127.0.0.1", "::1", "localhost"}
_real_connect = socket.socket.connect


@pytest.fixture(autouse=True)
def no_internet(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any attempt to reach a non-loopback address from this process."""

    def guarded(self: socket.socket, address: Any) -> Any:
        if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in _LOOPBACK:
            raise OSError(f"test tried to reach the network: {address!r}")
        return _real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)


@pytest.fixture(autouse=True, scope="module")
def dspy_without_cache() -> Iterator[None]:
    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)
    yield


@pytest.fixture(scope="module")
def server() -> Iterator[ServerURL]:
    with running_server() as url:
        yield url


@pytest.fixture
def url(server: ServerURL) -> ServerURL:
    log_of(server).clear()
    return server


def log_of(url: ServerURL) -> RequestLog:
    assert url.log is not None
    return url.log


def make_lm(base: str, engine: str, model: str = "openai/reference", **kw: Any) -> dspy.LM:
    kw.setdefault("num_retries", 0)
    return dspy.LM(model, api_base=base, api_key="x", cache=False, engine=engine, **kw)


class QA(dspy.Signature):
    """Answer the question from the context."""

    context: list[str] = dspy.InputField()
    question: str = dspy.InputField()
    answer: str = dspy.OutputField()
    country: Literal["Germany", "France", "Italy"] = dspy.OutputField()
    height: int = dspy.OutputField()
    queries: list[str] = dspy.OutputField()
    supported: bool = dspy.OutputField()


def chat(base: str, body: dict[str, Any], path: str = "/chat/completions") -> httpx.Response:
    return httpx.post(base + path, json=body, timeout=30)


def simple_messages(question: str = "What is the capital of France?") -> list[dict[str, str]]:
    return dspy.ChatAdapter().format(dspy.Signature("question -> answer"), demos=[], inputs={"question": question})


# -- HTTP surface ---------------------------------------------------------------------------------

def test_models_endpoint_with_and_without_v1(url: ServerURL) -> None:
    for base in (url, url.root):
        data = httpx.get(base + "/models").json()
        assert data["object"] == "list"
        assert data["data"][0]["id"] == "reference"


def test_completion_is_openai_shaped(url: ServerURL) -> None:
    messages = simple_messages()
    for base in (url, url.root):
        resp = chat(base, {"model": "reference", "messages": messages, "temperature": 0.3, "max_tokens": 50})
        assert resp.status_code == 200
        data = resp.json()
        assert data["id"].startswith("chatcmpl-")
        assert data["object"] == "chat.completion"
        assert isinstance(data["created"], int)
        assert data["model"] == "reference"
        choice = data["choices"][0]
        assert choice["message"]["role"] == "assistant"
        assert choice["finish_reason"] == "stop"
        content = choice["message"]["content"]
        assert content.startswith("[[ ## answer ## ]]\n") and content.rstrip().endswith("[[ ## completed ## ]]")
        usage = data["usage"]
        assert usage["prompt_tokens"] == sum(len(m["content"].split()) for m in messages)
        assert usage["completion_tokens"] == len(content.split())
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_n_choices_and_streaming(url: ServerURL) -> None:
    messages = simple_messages()
    plain = chat(url, {"model": "reference", "messages": messages}).json()["choices"][0]["message"]["content"]
    many = chat(url, {"model": "reference", "messages": messages, "n": 3}).json()
    assert [c["message"]["content"] for c in many["choices"]] == [plain] * 3
    assert [c["index"] for c in many["choices"]] == [0, 1, 2]

    body = {"model": "reference", "messages": messages, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", url + "/chat/completions", json=body) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = [line[len("data: "):] for line in resp.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert streamed == plain
    assert chunks[-1]["usage"]["completion_tokens"] == len(plain.split())


def test_bad_requests_get_openai_errors(url: ServerURL) -> None:
    resp = httpx.post(url + "/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert resp.status_code == 400
    assert resp.json()["error"]["type"] == "invalid_request_error"
    resp = chat(url, {"model": "reference"})
    assert resp.status_code == 400
    assert resp.json()["error"]["param"] == "messages"


def test_plain_chat_and_json_schema_response_format(url: ServerURL) -> None:
    resp = chat(url, {"model": "reference", "messages": [{"role": "user", "content": "Hello there. How are you?"}]})
    assert resp.json()["choices"][0]["message"]["content"] == "Hello there."

    schema = {"type": "object", "properties": {"city": {"type": "string"}, "year": {"type": "integer"},
                                                "tags": {"type": "array", "items": {"type": "string"}}},
              "required": ["city", "year", "tags"], "additionalProperties": False}
    body = {"model": "reference", "messages": [{"role": "user", "content": "Paris hosted the games in 1924."}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}}
    data = json.loads(chat(url, body).json()["choices"][0]["message"]["content"])
    assert set(data) == {"city", "year", "tags"}
    assert data["year"] == 1924
    assert all(isinstance(t, str) for t in data["tags"])


# -- DSPy end to end ------------------------------------------------------------------------------

@pytest.mark.parametrize("adapter_cls", ADAPTERS, ids=lambda a: a.__name__)
@pytest.mark.parametrize("engine", ENGINES)
def test_dspy_parses_typed_answers(url: ServerURL, engine: str, adapter_cls: type) -> None:
    lm = make_lm(url, engine, temperature=0.0, max_tokens=500)
    with dspy.context(lm=lm, adapter=adapter_cls()):
        pred = dspy.ChainOfThought(QA)(context=PASSAGES, question="What is the capital of France?")
    assert pred.answer == "Paris is the capital of France."
    assert pred.country == "France"
    assert pred.height == 8849
    assert pred.queries and all(isinstance(q, str) for q in pred.queries)
    assert pred.queries[0] == "What is the capital of France?"
    assert pred.supported is True
    assert isinstance(pred.reasoning, str) and pred.reasoning
    body = log_of(url).bodies()[-1]
    assert body["model"] == "reference"
    if adapter_cls is dspy.JSONAdapter and engine == "litellm":
        assert body["response_format"] == {"type": "json_object"}


@pytest.mark.parametrize("engine", ENGINES)
def test_dspy_is_deterministic_and_matches_in_process(url: ServerURL, engine: str) -> None:
    lm = make_lm(url, engine)
    with dspy.context(lm=lm):
        first = dspy.Predict(QA)(context=PASSAGES, question="How high is Mount Everest?")
        second = dspy.Predict(QA)(context=PASSAGES, question="How high is Mount Everest?")
    assert first.toDict() == second.toDict()
    assert first.answer == "Mount Everest is 8849 metres high."
    bodies = log_of(url).bodies()
    assert len(bodies) == 2 and bodies[0]["messages"] == bodies[1]["messages"]
    http_answer = chat(url, {"model": "reference", "messages": bodies[0]["messages"]}).json()
    assert http_answer["choices"][0]["message"]["content"] == ReferenceModel().complete(bodies[0]["messages"])


def test_both_engines_send_the_same_messages(url: ServerURL) -> None:
    sent = []
    for engine in ENGINES:
        log_of(url).clear()
        with dspy.context(lm=make_lm(url, engine)):
            dspy.ChainOfThought(QA)(context=PASSAGES, question="Which city is in Germany?")
        sent.append(log_of(url).bodies()[0]["messages"])
    assert sent[0] == sent[1]
    expected = dspy.ChatAdapter().format(dspy.ChainOfThought(QA).predict.signature, demos=[],
                                         inputs={"context": PASSAGES, "question": "Which city is in Germany?"})
    assert sent[0] == expected


def test_dspy_predict_n_and_extra_params(url: ServerURL) -> None:
    for engine in ENGINES:
        log_of(url).clear()
        lm = make_lm(url, engine, temperature=0.7, max_tokens=123)
        with dspy.context(lm=lm):
            pred = dspy.Predict("question -> answer", n=2)(question="Where is Paris?")
        assert pred.completions.answer == ["Where is Paris?", "Where is Paris?"]
        body = log_of(url).bodies()[0]
        assert body["temperature"] == 0.7
        assert 123 in (body.get("max_tokens"), body.get("max_completion_tokens"))


# -- request log ----------------------------------------------------------------------------------

def test_request_log_over_http_and_in_process(url: ServerURL) -> None:
    messages = simple_messages("first?")
    chat(url, {"model": "reference", "messages": messages, "temperature": 0.1})
    chat(url, {"model": "reference", "messages": simple_messages("second?")})
    data = httpx.get(url.root + "/_stepbridge/requests").json()
    assert data["count"] == 2
    first = data["requests"][0]
    assert first["path"] == "/v1/chat/completions"
    assert first["body"] == {"model": "reference", "messages": messages, "temperature": 0.1}
    assert data["requests"] == log_of(url).entries()
    later = httpx.get(url.root + "/_stepbridge/requests", params={"since": first["seq"]}).json()
    assert [r["seq"] for r in later["requests"]] == [data["requests"][1]["seq"]]
    assert httpx.delete(url.root + "/_stepbridge/requests").json() == {"cleared": True}
    assert httpx.get(url.root + "/_stepbridge/requests").json()["count"] == 0
    assert len(log_of(url)) == 0


def test_request_log_mirrors_to_jsonl_and_is_bounded(tmp_path: Path) -> None:
    log_file = tmp_path / "requests.jsonl"
    with running_server(log_path=log_file, log_limit=2) as url:
        for q in ("a?", "b?", "c?"):
            chat(url, {"model": "reference", "messages": simple_messages(q)}, path="/chat/completions")
        assert [e["seq"] for e in log_of(url).entries()] == [2, 3]
    lines = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert [line["seq"] for line in lines] == [1, 2, 3]
    assert lines[2]["body"]["messages"] == simple_messages("c?")


# -- fault injection ------------------------------------------------------------------------------

def test_fault_names_parse() -> None:
    assert parse_faults("reference/error-429").error == 429
    f = parse_faults("reference/slow-250/garbage", None)
    assert (f.slow_ms, f.garbage, f.error) == (250, True, None)
    assert parse_faults("gpt-4o-mini", "flaky-2").flaky == 2
    assert parse_faults("reference/error-99999") == parse_faults("reference")


def test_injected_http_errors(url: ServerURL) -> None:
    messages = simple_messages()
    resp = chat(url, {"model": "reference/error-500", "messages": messages})
    assert resp.status_code == 500
    assert resp.json()["error"]["type"] == "server_error"
    resp = chat(url, {"model": "reference/error-429", "messages": messages})
    assert resp.status_code == 429
    assert resp.headers["retry-after"] == "1"
    assert resp.json()["error"]["type"] == "rate_limit_error"
    assert len(log_of(url)) == 2  # failed requests are logged too


def test_slow_garbage_empty_and_flaky(url: ServerURL) -> None:
    messages = simple_messages()
    normal = chat(url, {"model": "reference", "messages": messages}).json()["choices"][0]["message"]["content"]
    slow = chat(url, {"model": "reference/slow-30", "messages": messages}).json()
    assert slow["choices"][0]["message"]["content"] == normal
    assert slow["model"] == "reference/slow-30"
    garbage = chat(url, {"model": "reference/garbage", "messages": messages}).json()
    assert garbage["choices"][0]["message"]["content"] == GARBAGE_TEXT
    empty = chat(url, {"model": "reference/empty", "messages": messages}).json()
    assert empty["choices"][0]["message"]["content"] == ""
    statuses = [chat(url, {"model": "reference/flaky-2", "messages": messages}).status_code for _ in range(4)]
    assert statuses == [503, 503, 200, 200]


def test_server_wide_fault_and_latency_options() -> None:
    with running_server(fault="error-503", latency_ms=5) as url:
        resp = chat(url, {"model": "reference", "messages": simple_messages()})
        assert resp.status_code == 503
        assert resp.headers["retry-after"] == "1"


@pytest.mark.parametrize("engine", ENGINES)
def test_dspy_sees_injected_faults(url: ServerURL, engine: str) -> None:
    for model, needle in (("openai/reference/error-500", "injected error 500"),
                          ("openai/reference/error-429", "injected error 429")):
        with dspy.context(lm=make_lm(url, engine, model=model)), pytest.raises(Exception, match=needle):
            dspy.Predict("question -> answer")(question="hi")
    with dspy.context(lm=make_lm(url, engine, model="openai/reference/garbage")), pytest.raises(
        dspy.utils.exceptions.AdapterParseError
    ):
        dspy.Predict("question -> answer")(question="hi")


def test_dspy_retries_through_flaky_faults(url: ServerURL) -> None:
    lm = make_lm(url, "litellm", model="openai/reference/flaky-1", num_retries=2)
    with dspy.context(lm=lm):
        assert dspy.Predict("question -> answer")(question="Is this retried?").answer == "Is this retried?"
    assert len(log_of(url)) == 2


# -- cassettes ------------------------------------------------------------------------------------

def test_request_hash_ignores_volatile_fields() -> None:
    base = {"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 0}
    assert request_hash(base) == request_hash({**base, "stream": True, "user": "me", "metadata": {"a": 1}})
    assert request_hash(base) != request_hash({**base, "temperature": 1})
    assert request_hash(base) != request_hash({**base, "messages": [{"role": "user", "content": "y"}]})


def test_record_then_replay(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "sk-stepbridge-test-secret-0123456789"
    monkeypatch.setenv("SB_TEST_UPSTREAM_KEY", secret)
    cassette = tmp_path / "lm.cassette.jsonl"
    log_file = tmp_path / "recorder.jsonl"
    question = "What is the capital of Germany?"
    with running_server() as upstream, running_server(
        cassette=cassette, record=True, upstream=upstream, upstream_key_env="SB_TEST_UPSTREAM_KEY", log_path=log_file
    ) as recorder:
        recorded = {}
        for engine in ENGINES:
            with dspy.context(lm=make_lm(recorder, engine)):
                recorded[engine] = dspy.ChainOfThought(QA)(context=PASSAGES, question=question).toDict()
        # both engines send the same body, so the second is served from the cassette
        assert len(log_of(upstream)) == 1
        assert len(log_of(recorder)) == 2
    assert recorded["lm15"] == recorded["litellm"]
    assert recorded["lm15"]["answer"] == "Berlin is the capital of Germany."
    records = [json.loads(line) for line in cassette.read_text().splitlines()]
    assert len(records) == 1
    assert records[0]["hash"] == request_hash(records[0]["request"])
    assert secret not in cassette.read_text() and secret not in log_file.read_text()

    with running_server(cassette=cassette) as replay:
        for engine in ENGINES:
            with dspy.context(lm=make_lm(replay, engine)):
                again = dspy.ChainOfThought(QA)(context=PASSAGES, question=question).toDict()
            assert again == recorded[engine]
        raw = chat(replay, records[0]["request"]).json()
        assert raw == records[0]["response"]


def test_replay_miss_fails_loudly(tmp_path: Path) -> None:
    cassette = tmp_path / "empty.jsonl"
    cassette.write_text("")
    body = {"model": "reference", "messages": simple_messages("never recorded?")}
    with running_server(cassette=cassette) as replay:
        resp = chat(replay, body)
        assert resp.status_code == 404
        err = resp.json()["error"]
        assert err["code"] == "cassette_miss"
        assert err["hash"] == request_hash(body)
        assert request_hash(body) in err["message"] and str(cassette) in err["message"]
        for engine in ENGINES:
            with dspy.context(lm=make_lm(replay, engine)), pytest.raises(Exception, match="cassette miss"):
                dspy.Predict("question -> answer")(question="never recorded?")


def test_record_mode_needs_upstream_and_cassette(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="upstream"):
        create_app(record=True, cassette=tmp_path / "c.jsonl")
    with pytest.raises(ValueError, match="record"):
        create_app(upstream="http://127.0.0.1:9/v1")


def test_corrupt_cassette_is_rejected(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"hash": "x"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:1"):
        create_app(cassette=bad)


# -- the server as a child process (benchmarks, `stepbridge lm serve`) -----------------------------

def test_running_server_process(tmp_path: Path) -> None:
    with running_server_process(latency_ms=1, log_path=tmp_path / "log.jsonl") as url:
        assert url.log is None and url.port > 0
        resp = chat(url, {"model": "reference", "messages": simple_messages()})
        assert resp.status_code == 200
        assert httpx.get(url.root + "/_stepbridge/requests").json()["count"] == 1


# -- the model in process: properties --------------------------------------------------------------

class Item(pydantic.BaseModel):
    name: str
    score: float
    tags: list[str]


FIELD_NAMES = ["question", "context", "text", "answer", "label", "count", "total", "score", "items", "flag",
               "queries", "summary", "reasoning_notes", "value", "topic", "claim", "extra"]
LITERALS = [Literal["yes", "no"], Literal["positive", "negative", "neutral"], Literal[1, 2, 3],
            Literal["a b", "c-d", "e"]]
OUTPUT_TYPES: list[Any] = [str, int, float, bool, list[str], list[int], dict[str, int], Optional[int],  # noqa: UP045
                           Optional[str], list[Item], Item, *LITERALS]  # noqa: UP045
INPUT_TYPES: list[Any] = [str, int, list[str], bool, float]


def _input_value(draw: Any, typ: Any) -> Any:
    text = st.text(max_size=80)
    if typ is str:
        return draw(text)
    if typ is int:
        return draw(st.integers(-(10**12), 10**12))
    if typ is float:
        return draw(st.floats(allow_nan=False, allow_infinity=False, width=32))
    if typ is bool:
        return draw(st.booleans())
    return draw(st.lists(text, max_size=4))


@st.composite
def signatures_and_inputs(draw: Any) -> tuple[type[dspy.Signature], dict[str, Any], str]:
    names = draw(st.lists(st.sampled_from(FIELD_NAMES), min_size=2, max_size=6, unique=True))
    n_inputs = draw(st.integers(1, len(names) - 1))
    fields: dict[str, Any] = {}
    inputs: dict[str, Any] = {}
    for name in names[:n_inputs]:
        typ = draw(st.sampled_from(INPUT_TYPES))
        fields[name] = (typ, dspy.InputField())
        if draw(st.integers(0, 9)) > 0:  # sometimes an input is left out
            inputs[name] = _input_value(draw, typ)
    for name in names[n_inputs:]:
        fields[name] = (draw(st.sampled_from(OUTPUT_TYPES)), dspy.OutputField(desc=draw(st.text(max_size=30))))
    instructions = draw(st.text(min_size=1, max_size=60).filter(lambda s: s.strip() != ""))
    return dspy.make_signature(fields, instructions), inputs, draw(st.sampled_from(["chat", "json"]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=signatures_and_inputs(), chain_of_thought=st.booleans())
def test_model_always_answers_in_a_parseable_format(
    case: tuple[type[dspy.Signature], dict[str, Any], str], chain_of_thought: bool
) -> None:
    signature, inputs, fmt = case
    if chain_of_thought:
        signature = dspy.ChainOfThought(signature).predict.signature
    adapter = dspy.ChatAdapter() if fmt == "chat" else dspy.JSONAdapter()
    messages = adapter.format(signature, demos=[], inputs=inputs)
    spec = parse_system_message(messages[0]["content"])
    assert spec is not None and spec.format == fmt
    assert [f.name for f in spec.outputs] == list(signature.output_fields)
    model = ReferenceModel()
    completion = model.complete(messages)
    assert ReferenceModel().complete(messages) == completion  # deterministic, across instances too
    parsed = adapter.parse(signature, completion)
    assert set(parsed) == set(signature.output_fields)
    for name, info in signature.output_fields.items():
        pydantic.TypeAdapter(info.annotation).validate_python(parsed[name])
    # the answer, used as a few-shot demo, still leaves the next answer parseable
    with_demo = adapter.format(signature, demos=[{**inputs, **parsed}], inputs=inputs)
    assert set(adapter.parse(signature, model.complete(with_demo))) == set(signature.output_fields)


HALF_PROMPT = ("Your input fields are:\n1. `x` (str):\nYour output fields are:\n1. `y` (int):\n"
               "All interactions will be structured in the following way, with the appropriate values filled in.")


@settings(max_examples=100, deadline=None)
@given(messages=st.lists(
    st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant", "tool"]),
                           "content": st.one_of(st.text(max_size=200), st.none(), st.just(HALF_PROMPT))}),
    max_size=5))
def test_model_never_crashes_on_arbitrary_messages(messages: list[dict[str, Any]]) -> None:
    assert isinstance(ReferenceModel().complete(messages), str)


def test_app_in_memory_through_asgi_transport() -> None:
    """No socket at all: httpx's ASGI transport drives the app (and its direct completion path)."""
    import asyncio

    app = create_app()

    async def go() -> tuple[int, str, int]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ref") as client:
            resp = await client.post("/v1/chat/completions", json={"model": "reference", "messages": simple_messages()})
            logged = (await client.get("/_stepbridge/requests")).json()["count"]
            return resp.status_code, resp.json()["choices"][0]["message"]["content"], logged

    status, content, logged = asyncio.run(go())
    assert (status, logged) == (200, 1)
    assert content == ReferenceModel().complete(simple_messages())
    assert app.state.log.bodies()[0]["messages"] == simple_messages()
