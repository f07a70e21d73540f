"""LM replies are untrusted: a reply built to make parsing expensive or to overflow the stack is a
typed error, on the native executor (issue 9 sweep). A real upstream on loopback sends the replies.

Found by the sweep: json_repair (DSPy's leniency for invalid JSON, reproduced by native) is quadratic
on some texts (32 KB of ``["`` took ~20 s of CPU, 1 MB of ``x,[{`` minutes, blocking the event loop),
and a reply nested deeper than the recursion limit escaped parsing as a bare ``RecursionError``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sb_http import _Recording, _serve
from stepbridge import Runner, StepbridgeError, field_values, load_program
from stepbridge.field_values import MAX_REPAIR_CHARS, FieldType
from stepbridge.signature import parse_type

HOSTILE = {
    "quadratic": '["' * 100_000,
    "slow": "x,[{" * 250_000,
    "deep-list": "[" * 100_000 + "]" * 100_000,
    "deep-object": '{"a":' * 50_000,
    "deep-parens": "(" * 100_000,
    "deep-small": "[" * 3_000,  # under the repair limit, deeper than the recursion limit
}


class _HostileLM(_Recording):
    def do_POST(self) -> None:
        entry = self._record()
        model = str(json.loads(entry["body"] or "{}").get("model", "")).split("/")[-1]
        content = f"[[ ## answer ## ]]\n{HOSTILE[model]}\n\n[[ ## completed ## ]]"
        self._reply(200, {"id": "x", "object": "chat.completion", "model": model,
                          "choices": [{"index": 0, "finish_reason": "stop",
                                       "message": {"role": "assistant", "content": content}}],
                          "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})


@pytest.fixture(scope="module")
def upstream() -> Iterator[Any]:
    with _serve(_HostileLM) as server:
        yield server


@pytest.fixture
def repairs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The length of every text handed to json_repair (the real one still runs)."""
    import json_repair

    seen: list[int] = []
    real = json_repair.loads

    def counting(text: str, *args: Any, **kwargs: Any) -> Any:
        seen.append(len(text))
        return real(text, *args, **kwargs)

    monkeypatch.setattr(json_repair, "loads", counting)
    return seen


@pytest.mark.parametrize("name", list(HOSTILE))
@pytest.mark.parametrize("type_text", ["list[str]", "dict[str, int]", "int", "tuple[int, str]"])
def test_a_hostile_value_is_a_value_error_and_never_repaired_at_length(name: str, type_text: str,
                                                                       repairs: list[int]) -> None:
    with pytest.raises(ValueError):
        FieldType(parse_type(type_text)).parse(HOSTILE[name])
    assert all(n <= MAX_REPAIR_CHARS for n in repairs)


def test_short_invalid_json_is_still_repaired_like_dspy(repairs: list[int]) -> None:
    assert FieldType(parse_type("list[str]")).parse('["a", "b",]') == ["a", "b"]
    assert field_values.json_repair_loads("{'a': 1,}") == {"a": 1}
    assert repairs


@pytest.mark.parametrize("name", list(HOSTILE))
def test_a_hostile_reply_is_a_typed_error_on_native(name: str, upstream: Any, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch, repairs: list[int]) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[lm.profiles.default]\nbase_url = "{upstream.url}/v1"\nmodel = "openai/x"\n'
                      "max_retries = 0\ntimeout = 60\n")
    monkeypatch.setenv("STEPBRIDGE_CONFIG", str(config))
    program = load_program({
        "stepbridge": 1, "name": "hostile", "signature": "question -> answer: list[str]",
        "lm": {"model": f"openai/{name}"},
        "modules": {"m": {"type": "predict", "signature": "question -> answer: list[str]"}},
        "steps": [{"call": "m", "with": {"question": "$inputs.question"}, "as": "a"},
                  {"return": {"answer": "$a.answer"}}]})

    async def go() -> None:
        async with Runner("native") as runner:
            await runner.run(program, {"question": "q"})

    with pytest.raises(StepbridgeError):
        asyncio.run(go())
    assert all(n <= MAX_REPAIR_CHARS for n in repairs)


class _HugeLM(_Recording):
    """Streams a body far over the client's limit (no Content-Length, or a false one) and counts
    what it managed to send before the client hung up."""

    def do_POST(self) -> None:
        entry = self._record()
        claim = "claim" in entry["body"]
        self.send_response(200)
        self.send_header("content-type", "application/json")
        if claim:
            self.send_header("content-length", str(500 * 2**20))
        self.end_headers()
        chunk = b" " * 2**20
        sent = 0
        try:
            while sent < 200 * 2**20:
                self.wfile.write(chunk)
                sent += len(chunk)
        except OSError:
            pass
        finally:
            with self.server.lock:
                self.server.requests[-1]["sent"] = sent
        self.close_connection = True


@pytest.mark.parametrize("model", ["stream", "claim"])
def test_a_huge_reply_is_refused_without_reading_it_all(model: str, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from stepbridge.lm import MAX_RESPONSE_BYTES

    with _serve(_HugeLM) as server:
        config = tmp_path / "config.toml"
        config.write_text(f'[lm.profiles.default]\nbase_url = "{server.url}/v1"\nmodel = "openai/x"\n'
                          "max_retries = 0\ntimeout = 120\n")
        monkeypatch.setenv("STEPBRIDGE_CONFIG", str(config))
        program = load_program({"stepbridge": 1, "name": "huge", "signature": "question -> answer",
                                "lm": {"model": f"openai/{model}"},
                                "modules": {"m": {"type": "predict", "signature": "question -> answer"}},
                                "steps": [{"call": "m", "with": {"question": "$inputs.question"}, "as": "a"},
                                          {"return": {"answer": "$a.answer"}}]})

        async def go() -> None:
            async with Runner("native") as runner:
                await runner.run(program, {"question": "q"})

        with pytest.raises(StepbridgeError) as info:  # "exceeds ..." (or the server gave up first)
            asyncio.run(go())
        for _ in range(1200):  # the handler records what it sent once the client has gone
            if "sent" in server.requests[-1]:
                break
            time.sleep(0.1)
        sent = server.requests[-1].get("sent")
        assert sent is not None, f"the client never hung up ({info.value})"
        assert sent < MAX_RESPONSE_BYTES + 32 * 2**20, str(info.value)
