"""Typed errors survive the process boundary (msgpack/JSON) and never carry secrets out."""

from __future__ import annotations

import json
from typing import Any

import msgpack
import pytest
from stepbridge.errors import (
    ConfigurationError,
    ContextWindowExceededError,
    ConversionError,
    ExecutionNotFound,
    InputValidationError,
    Issue,
    LMError,
    LMParseError,
    OperationError,
    PoolSaturatedError,
    ProgramNotFound,
    ProgramValidationError,
    RunCancelledError,
    RunTimeoutError,
    StepbridgeError,
    StepError,
    StorageError,
    UnsupportedCapabilityError,
    WorkerLostError,
    error_from_dict,
    register_secret,
    scrub_secrets,
)

SECRET = "sk-proj-AbCdEf0123456789xyz"

EXAMPLES: list[StepbridgeError] = [
    StepbridgeError("base"),
    ProgramValidationError([Issue("/steps/0/call", "unknown module 'serch'", "error", 14, "search"),
                            Issue("/steps/0/as", "result 'x' is never used", "warning", 15)]),
    InputValidationError("missing input 'q'", field="q"),
    LMError("rate limited", status=429, retriable=True),
    LMError("bad request", status=400),
    LMParseError("no [[ ## answer ## ]] field", response="[[ ## reasoning ## ]]\nhm"),
    StepError("step 1 failed", step=1, module="answer", cause=LMError("boom", status=503, retriable=True)),
    StepError("step 0 failed", step=0),
    StepError("pass 3 failed", step=1, pointer="/steps/1/loop/steps/0", module="q",
              cause=OperationError("/steps/1/loop/steps/0/with/x: $index out of range", pointer="/steps/1/loop/"
                                   "steps/0/with/x", operation="index")),
    OperationError("the value $concat builds has more than 1,000,000 values", pointer="/steps/0/set/x",
                   operation="concat"),
    RunTimeoutError("run exceeded 2.5 s", timeout=2.5),
    RunCancelledError("cancelled by caller"),
    WorkerLostError("worker w1 died", worker="w1", attempts=2),
    PoolSaturatedError("queue full", queue_size=128),
    UnsupportedCapabilityError("no map", capability="map", adapter="dspy"),
    StorageError("database is newer than this code"),
    ProgramNotFound("no stored program matches 'qa@prod'"),
    ExecutionNotFound("no execution 0123abcd"),
    ContextWindowExceededError("prompt too long", status=400),
    ConversionError("cannot convert", construct="QA.forward", file="qa.py", line=12, hint="register it"),
    ConfigurationError("unknown LM profile 'locl'", where="--lm", suggestion="local"),
]


def test_every_error_type_has_a_round_trip_case() -> None:
    covered = {type(e) for e in EXAMPLES}
    missing = {cls.__name__ for cls in StepbridgeError._registry.values()
               if cls.__module__ == "stepbridge.errors"} - {c.__name__ for c in covered}
    assert not missing


def _through_json(data: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(data))  # type: ignore[no-any-return]


def _through_msgpack(data: dict[str, Any]) -> dict[str, Any]:
    return msgpack.unpackb(msgpack.packb(data), raw=False)  # type: ignore[no-any-return]


@pytest.mark.parametrize("wire", [_through_json, _through_msgpack], ids=["json", "msgpack"])
@pytest.mark.parametrize("error", EXAMPLES, ids=lambda e: f"{type(e).__name__}:{e.message[:12]}")
def test_round_trip_keeps_type_message_and_details(error: StepbridgeError, wire: Any) -> None:
    data = error.to_dict()
    again = error_from_dict(wire(data))
    assert type(again) is type(error)
    assert again.message == error.message
    assert str(again) == str(error)
    assert again.details() == error.details()
    assert again.retriable == error.retriable
    assert again.to_dict() == data


def test_step_error_cause_is_rebuilt_typed_and_drives_retriable() -> None:
    err = error_from_dict(_through_msgpack(EXAMPLES[6].to_dict()))
    assert isinstance(err, StepError)
    assert isinstance(err.cause, LMError) and err.cause.status == 503
    assert err.__cause__ is err.cause
    assert err.retriable is True
    assert StepError("x", step=0, cause=LMError("y", status=400)).retriable is False


def test_program_validation_issues_round_trip_as_issues() -> None:
    err = error_from_dict(_through_json(EXAMPLES[1].to_dict()))
    assert isinstance(err, ProgramValidationError)
    assert err.issues == EXAMPLES[1].issues
    assert "1 problem" in err.message  # the warning is not counted as a problem
    assert "/steps/0/call (line 14): unknown module 'serch' (did you mean search?)" in err.message


def test_unknown_or_malformed_types_degrade_to_the_base_class() -> None:
    for data in ({"type": "FutureError", "message": "m", "details": {"x": 1}},
                 {"type": "os.system", "message": "m"},
                 {"type": "LMError", "message": "m", "details": {"unexpected": 1}},
                 {"type": "StepError", "message": "m", "details": "not a dict"},
                 {"message": "m"}):
        err = error_from_dict(data)
        assert type(err) is StepbridgeError
        assert err.message == "m"


def test_remote_traceback_survives_and_is_scrubbed() -> None:
    err = LMError("x")
    err.remote_traceback = f"Traceback...\nopenai.AuthenticationError: key {SECRET} rejected"
    data = err.to_dict()
    assert SECRET not in json.dumps(data)
    again = error_from_dict(_through_msgpack(data))
    assert again.remote_traceback is not None and "[REDACTED]" in again.remote_traceback


def test_secrets_are_scrubbed_from_messages_and_details() -> None:
    errors = [
        LMError(f"401 from upstream: invalid api key {SECRET}", status=401),
        LMParseError("unparseable", response=f"here is my key: {SECRET}"),
        StepError("failed", step=0, cause=LMError(f"Bearer {SECRET}")),
        InputValidationError(f"input 'q' must be int, got '{SECRET}'", field="q"),
        ProgramValidationError([Issue("/steps/0/with/n", f"type mismatch: literal '{SECRET}' is not a int")]),
    ]
    for err in errors:
        wire = json.dumps(err.to_dict())
        assert SECRET not in wire, type(err).__name__
        assert "AbCdEf0123456789" not in wire
        assert "[REDACTED]" in wire


@pytest.mark.parametrize(
    ("text", "leak"),
    [
        (f"key={SECRET}", SECRET),
        ("Authorization: Bearer abcdefgh12345678.xyz", "abcdefgh12345678"),
        ('{"api_key": "hunter2hunter2"}', "hunter2hunter2"),
        ("api-key=Zm9vYmFyYmF6cXV4", "Zm9vYmFyYmF6cXV4"),
        ("https://user:p4ssw0rd@llm.example/v1", "p4ssw0rd"),
        ("rk-live_0123456789abcdef", "0123456789abcdef"),
    ],
)
def test_scrub_secrets_patterns(text: str, leak: str) -> None:
    scrubbed = scrub_secrets(text)
    assert leak not in scrubbed
    assert "[REDACTED]" in scrubbed


@pytest.mark.parametrize("text", ["task-management overview", "the risk-assessment framework", "sk-short",
                                  "http://llm.example:8080/v1", "a bearer of news"])
def test_scrub_secrets_leaves_ordinary_text_alone(text: str) -> None:
    assert scrub_secrets(text) == text


def test_registered_secret_values_are_scrubbed_anywhere() -> None:
    value = "plain-looking-value-42"
    assert scrub_secrets(f"x {value} y") == f"x {value} y"
    register_secret(value)
    assert scrub_secrets(f"x {value} y") == "x [REDACTED] y"
    register_secret("abc")  # too short to be a secret: would redact ordinary words
    assert scrub_secrets("abc") == "abc"


def test_retriable_flags() -> None:
    assert WorkerLostError("x").retriable is True
    assert PoolSaturatedError("x").retriable is True
    assert RunTimeoutError("x").retriable is False
    assert LMParseError("x").retriable is False
    assert LMError("x", retriable=True).retriable is True


def test_issue_str_and_dict() -> None:
    issue = Issue("", "empty file")
    assert str(issue) == "/: empty file"
    assert issue.to_dict() == {"pointer": "", "message": "empty file", "severity": "error", "line": None,
                               "suggestion": None}
