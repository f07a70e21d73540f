"""The reference LM's faults for the conformance suite (off-type values, chat-only garbage, jitter) and the
answers it notes in its request log (status, reported usage, reply text), over real loopback HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from stepbridge.errors import LMParseError
from stepbridge.formats import Prompt
from stepbridge.reference_lm import GARBAGE_TEXT, ReferenceModel, ServerURL, parse_faults, running_server
from stepbridge.signature import Signature

SIGNATURE = Signature.model_validate(
    "ticket -> team: Literal['billing', 'technical'], count: int, ratio: float, tags: list[str]")
TICKET = {"ticket": "my bill has 3 errors and a 0.5 refund ratio"}


@pytest.fixture(scope="module")
def url() -> Iterator[ServerURL]:
    with running_server() as server:
        yield server


def _post(url: ServerURL, model: str, prompt: Prompt, **extra: Any) -> httpx.Response:
    body = {"model": model, "messages": prompt.messages(TICKET), **extra}
    rf = prompt.response_format()
    if rf is not None:
        body["response_format"] = rf
    return httpx.post(f"{url}/chat/completions", json=body, timeout=30)


def _text(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    return str(response.json()["choices"][0]["message"]["content"])


def test_new_fault_names_parse() -> None:
    faults = parse_faults("reference/off-literal/jitter-250/chat-garbage")
    assert (faults.off_type, faults.jitter_ms, faults.chat_garbage) == ("literal", 250, True)
    assert parse_faults("reference/off-number").off_type == "number"
    assert parse_faults("reference/off-color").off_type is None  # unknown segments are ignored
    assert parse_faults("gpt-4o-mini") == parse_faults("reference")


@pytest.mark.parametrize("adapter", ["chat", "json"])
def test_off_literal_answers_outside_the_set_and_nothing_else(url: ServerURL, adapter: str) -> None:
    prompt = Prompt(SIGNATURE, adapter=adapter)  # type: ignore[arg-type]
    good = prompt.parse(_text(_post(url, "reference", prompt)))
    with pytest.raises(LMParseError, match="team"):
        prompt.parse(_text(_post(url, "reference/off-literal", prompt)))
    # only the Literal is off: with the Literal read as plain text the same reply parses, numbers intact
    loose = Prompt(SIGNATURE.model_copy(update={"outputs": {**SIGNATURE.outputs, "team": SIGNATURE.outputs["count"]
                                                           .model_copy(update={"type": "str"})}}), adapter=adapter)  # type: ignore[arg-type]
    parsed = loose.parse(_text(_post(url, "reference/off-literal", prompt)))
    assert parsed["team"] not in ("billing", "technical")
    assert (parsed["count"], parsed["ratio"], parsed["tags"]) == (good["count"], good["ratio"], good["tags"])


@pytest.mark.parametrize("adapter", ["chat", "json"])
def test_off_number_answers_words_for_numbers_only(url: ServerURL, adapter: str) -> None:
    prompt = Prompt(SIGNATURE, adapter=adapter)  # type: ignore[arg-type]
    with pytest.raises(LMParseError, match="count"):
        prompt.parse(_text(_post(url, "reference/off-number", prompt)))
    text = _text(_post(url, "reference/off-number", prompt))
    assert "billing" in text and "several" in text


def test_chat_garbage_spares_the_json_retry(url: ServerURL) -> None:
    chat = Prompt(SIGNATURE)
    assert _text(_post(url, "reference/chat-garbage", chat)) == GARBAGE_TEXT
    json_prompt = chat.fallback()
    assert json_prompt is not None
    parsed = json_prompt.parse(_text(_post(url, "reference/chat-garbage", json_prompt)))
    assert parsed["team"] == "billing"


def test_log_notes_status_usage_and_reply(url: ServerURL) -> None:
    assert url.log is not None
    mark = url.log.entries()[-1]["seq"] if url.log.entries() else 0
    prompt = Prompt(SIGNATURE)
    ok = _post(url, "reference/jitter-20", prompt)
    failed = _post(url, "reference/error-503", prompt)
    entries = url.log.entries(mark)
    assert [e["status"] for e in entries] == [200, 503]
    assert entries[0]["usage"] == ok.json()["usage"] and entries[0]["reply"] == _text(ok)
    assert "usage" not in entries[1] and failed.status_code == 503


def test_jitter_is_deterministic_per_message() -> None:
    from stepbridge.reference_lm.app import _jitter

    body = {"messages": [{"role": "user", "content": "same"}]}
    assert _jitter(body, 500) == _jitter(dict(body), 500)
    assert all(0 <= _jitter({"messages": [{"role": "user", "content": str(i)}]}, 50) <= 50 for i in range(200))
    assert len({_jitter({"messages": [{"role": "user", "content": str(i)}]}, 1000) for i in range(50)}) > 10


_options = st.lists(st.text(alphabet="abcdefghij", min_size=1, max_size=8), min_size=1, max_size=5, unique=True)


@settings(max_examples=60, deadline=None)
@given(options=_options, adapter=st.sampled_from(["chat", "json"]), kind=st.sampled_from(["literal", "number"]))
def test_off_type_answers_never_parse(options: list[str], adapter: str, kind: str) -> None:
    """Whatever the Literal's options, an off-type answer is a parse error for a DSPy-exact parser."""
    literal = "Literal[" + ", ".join(repr(o) for o in options) + "]"
    signature = Signature.model_validate(f"question -> choice: {literal}, amount: int")
    prompt = Prompt(signature, adapter=adapter)  # type: ignore[arg-type]
    model = ReferenceModel()
    messages = prompt.messages({"question": f"pick {options[0]} and say 4"})
    assert prompt.parse(model.complete(messages, response_format=prompt.response_format()))["choice"] in options
    with pytest.raises(LMParseError):
        prompt.parse(model.complete_off_type(messages, off=kind, response_format=prompt.response_format()))
