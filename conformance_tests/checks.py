"""How the suite compares and how it explains: request bodies field by field, outputs, and failure text.

Every failure says four things (:func:`fail`): what was checked and expected, what the adapter did,
the smallest difference (one request, one field, one output), and which part of the protocol to
look at (:data:`LOOK_AT`, each entry a section of ``docs/conformance.md``).

Requests are compared as the reference LM received them, after :func:`normalise_request` (spelling
differences with one meaning: ``max_completion_tokens`` is ``max_tokens``, ``n: 1`` is no ``n``).
Two request lists are paired request by request (:func:`pair_requests`): identical requests first,
in order, then each remaining request of the baseline with the most similar remaining request of
the adapter (same module prompt first) -- never by sorting both lists, which pairs unrelated
requests and reports a difference that is not the bug. Arrival order is not compared: the
requests of a ``map`` step arrive in any order (step order is checked on the trace).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import pytest

__all__ = [
    "CAPABILITY_PARTS",
    "LOOK_AT",
    "RequestPair",
    "diff_requests",
    "fail",
    "field_difference",
    "first_difference",
    "normalise_request",
    "pair_requests",
    "record_part",
    "request_divergence",
    "request_position",
    "same",
    "short",
    "trace_divergence",
]

#: Where to look, per part of the protocol (``docs/conformance.md`` explains each).
LOOK_AT = {
    "outputs": "outputs: RunResult.outputs are the return step's values by name, parsed with the signature's types "
               "(docs/conformance.md#outputs)",
    "prompt": "prompts: one request per module call, messages built as DSPy's ChatAdapter/JSONAdapter build them "
              "(stepbridge.formats.Prompt; docs/conformance.md#requests)",
    "inputs": "inputs: input values reach prompts, tools and outputs exactly as given: no stripping, "
              "normalising or truncating (docs/conformance.md#inputs)",
    "lm_settings": "LM settings: program `lm` < module `lm` < RunOptions.lm, field by field; each request carries "
                   "the effective model, temperature, max_tokens (docs/conformance.md#lm-settings)",
    "response_format": "JSON format: a JSON-adapter request carries the response_format DSPy's JSONAdapter sends "
                       "(stepbridge.formats.Prompt.response_format; docs/conformance.md#requests)",
    "parsing": "parsing: replies parse as DSPy parses them; a value outside a Literal or a non-number for an int is "
               "an LMParseError, after one JSON-format retry of a chat reply (docs/conformance.md#parsing)",
    "retries": "LM errors: 429/5xx are retried the LM profile's max_retries times, other errors never; a reply that "
               "does not parse is asked again once, in the JSON format, and only for a chat request "
               "(docs/conformance.md#lm-errors)",
    "errors": "errors: typed errors keep their type and details; a failed step is a StepError(step, module, cause) "
              "with the partial trace; across a process boundary send error.to_dict() and rebuild it with "
              "stepbridge.errors.error_from_dict() (docs/conformance.md#errors)",
    "trace": "trace: one StepTrace per executed step in program order; each LM call with the messages sent and the "
             "raw reply, also on a failed step (docs/conformance.md#trace)",
    "usage": "usage: RunResult.usage sums the token counts the LM reported on every call, map elements included "
             "(docs/conformance.md#usage)",
    "map": "map: elements run concurrently (at most the step's `concurrency` at once); results and child records in "
           "input order; the first failure cancels the other elements (docs/conformance.md#map)",
    "state": "state: everything a run computes belongs to that run; nothing is kept on the adapter between or across "
             "runs (docs/conformance.md#concurrency)",
    "plan_cache": "prepare: what prepare() builds is keyed by the program's content and folder (Program.plan_key), "
                  "never by its name (docs/conformance.md#prepare)",
    "side_effects": "side effects: a tool step runs once; a failed step is never retried by the adapter "
                    "(docs/conformance.md#side-effects)",
    "timeout": "timeout: RunOptions.timeout bounds the whole run, not each call; RunTimeoutError(timeout=the run's "
               "timeout) carries the partial trace (docs/conformance.md#timeout)",
    "cancel": "cancel: cancelling the task awaiting run() cancels all of the run's work; no LM request afterwards "
              "(docs/conformance.md#cancel)",
    "aclose": "aclose: closes every connection and process the adapter opened (docs/conformance.md#aclose)",
    "capabilities": "capabilities: declare what you run; refuse the rest with UnsupportedCapabilityError before any "
                    "work (docs/conformance.md#capabilities)",
    "result": "RunResult: outputs, one trace record per step, usage, backend, program_hash, the given execution_id "
              "(docs/conformance.md#result)",
    "protocol": "the adapter protocol: name, capabilities, async prepare/run/aclose (docs/conformance.md#protocol)",
    "fixtures": "the suite's tools: register them where programs run (stepbridge.conformance.fixtures.register(); "
                "docs/conformance.md#out-of-process-adapters)",
    "control_flow": "control flow (format 2): `if` runs `then` when its condition is truthy, `switch` the first case "
                    "with a literal JSON-equal to its value; a loop makes at most `max` passes (one per element of "
                    "`over`) and stops when `until` holds after a pass; `set` and `return` anywhere "
                    "(docs/conformance.md#control-flow)",
    "parallel": "parallel (format 2): the calls run at once; each result is bound to its own call's `as` once all "
                "have finished; the first failure cancels the others (docs/conformance.md#parallel)",
    "agents": "agents (format 2): react as dspy.ReAct 3.4.1: one LM call per step, a failing tool's error text is the "
              "next observation, `finish` or max_iters, then one extraction call (docs/conformance.md#agents)",
    "ensembles": "ensembles (format 2): best_of_n/refine attempts at temperature 1.0, the first reaching the "
                 "threshold ends them; multi_chain_comparison; `n` completions (docs/conformance.md#ensembles)",
    "typed_objects": "typed objects (format 2): declared object types and enums parse to JSON objects with every "
                     "field, null included, and render as DSPy renders them (docs/conformance.md#typed-objects)",
}

#: Format-2 capabilities and the protocol part each points at.
CAPABILITY_PARTS = {"control_flow": "control_flow", "parallel": "parallel", "agents": "agents",
                    "ensembles": "ensembles", "typed_objects": "typed_objects"}


def fail(what: str, *, expected: str | None = None, actual: str | None = None, difference: str | None = None,
         look_at: str | Sequence[str] = ()) -> NoReturn:
    """Fail the test with the suite's four-part message."""
    lines = [what.rstrip()]
    if expected is not None:
        lines.append(f"  expected: {expected}")
    if actual is not None:
        lines.append(f"  adapter:  {actual}")
    if difference is not None:
        lines.append(f"  smallest difference: {difference}")
    for key in [look_at] if isinstance(look_at, str) else look_at:
        lines.append(f"  look at: {LOOK_AT.get(key, key)}")
    pytest.fail("\n".join(lines), pytrace=False)


# ------------------------------------------------------------------------------------------------
# values
# ------------------------------------------------------------------------------------------------
def same(a: Any, b: Any) -> bool:
    """Equality that also compares types: ``1``, ``1.0`` and ``True`` are three different outputs."""
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


def short(value: Any, limit: int = 160) -> str:
    text = value if isinstance(value, str) and value.startswith("(") else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def first_difference(expected: Any, actual: Any, path: str = "") -> str | None:
    """Where two values first differ, as ``/pointer: expected ... got ...`` (None when they are the same)."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        for key in expected:
            if key not in actual:
                return f"{path}/{key}: missing (expected {short(expected[key])})"
        for key in actual:
            if key not in expected:
                return f"{path}/{key}: unexpected field (value {short(actual[key])})"
        for key in expected:
            diff = first_difference(expected[key], actual[key], f"{path}/{key}")
            if diff:
                return diff
        return None
    if isinstance(expected, list | tuple) and isinstance(actual, list | tuple):
        for i, (x, y) in enumerate(zip(expected, actual, strict=False)):
            diff = first_difference(x, y, f"{path}/{i}")
            if diff:
                if len(expected) != len(actual):
                    diff += f" (and {len(expected)} items expected, {len(actual)} given)"
                return diff
        if len(expected) != len(actual):
            return f"{path or '/'}: expected {len(expected)} items, got {len(actual)} ({short(actual)})"
        return None
    if not same(expected, actual):
        return (f"{path or '/'}: expected {short(expected)} ({type(expected).__name__}), "
                f"got {short(actual)} ({type(actual).__name__})")
    return None


def text_difference(expected: str, actual: str, context: int = 60) -> str:
    """The first differing character of two texts, with context."""
    at = next((i for i, (x, y) in enumerate(zip(expected, actual, strict=False)) if x != y),
              min(len(expected), len(actual)))
    lo = max(0, at - context)
    return (f"at character {at}: expected ...{expected[lo:at + context]!r}... "
            f"got ...{actual[lo:at + context]!r}...")


# ------------------------------------------------------------------------------------------------
# requests
# ------------------------------------------------------------------------------------------------
#: Body fields compared in this order (then any other field, by name).
FIELD_ORDER = ("messages", "model", "temperature", "max_tokens", "n", "response_format", "top_p", "stop", "seed",
               "presence_penalty", "frequency_penalty", "logit_bias", "tools", "tool_choice")


def _message_content(content: Any) -> Any:
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "".join(str(p.get("text", "")) for p in content)
    return content


def normalise_request(body: Any) -> dict[str, Any]:
    """A request body with one spelling per meaning: no ``None`` fields, ``max_completion_tokens`` read as
    ``max_tokens``, ``n: 1`` and ``stream: false`` dropped, text-part message content joined."""
    if not isinstance(body, dict):
        return {"_body": body}
    out = {k: v for k, v in body.items() if v is not None}
    if "max_completion_tokens" in out and "max_tokens" not in out:
        out["max_tokens"] = out.pop("max_completion_tokens")
    if out.get("n") == 1:
        del out["n"]
    if out.get("stream") is False:
        del out["stream"]
        out.pop("stream_options", None)
    if isinstance(out.get("messages"), list):
        out["messages"] = [{**m, "content": _message_content(m.get("content"))} if isinstance(m, dict) else m
                           for m in out["messages"]]
    return out


def _ordered_fields(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    keys = set(a) | set(b)
    return [k for k in FIELD_ORDER if k in keys] + sorted(keys - set(FIELD_ORDER))


def field_difference(expected: dict[str, Any], actual: dict[str, Any], *, tolerate: frozenset[str] = frozenset()
                     ) -> tuple[str, str] | None:
    """(field, description) of the first field two normalised bodies differ in; None when equal.

    ``tolerate``: fields the adapter may leave out (an omission there is not a difference)."""
    for key in _ordered_fields(expected, actual):
        if key in tolerate and key not in actual:
            continue
        if key not in actual:
            return key, f"{key}: expected {short(expected[key])}, the adapter did not send it"
        if key not in expected:
            return key, f"{key}: the adapter sent {short(actual[key])}, expected no {key}"
        if key == "messages" and isinstance(expected[key], list) and isinstance(actual[key], list):
            diff = _messages_difference(expected[key], actual[key])
            if diff:
                return diff
            continue
        if not same(expected[key], actual[key]):
            inner = first_difference(expected[key], actual[key]) if isinstance(expected[key], dict) else None
            return key, (f"{key}: expected {short(expected[key])}, the adapter sent {short(actual[key])}"
                         + (f" (first difference {inner})" if inner else ""))
    return None


def _messages_difference(expected: list[Any], actual: list[Any]) -> tuple[str, str] | None:
    """(``messages.<role>``, description) of the first differing message; the role says where the bug is
    (system: the prompt's fields, instructions, format; user: the input values; assistant: the demos)."""
    for i, (x, y) in enumerate(zip(expected, actual, strict=False)):
        if not isinstance(x, dict) or not isinstance(y, dict):
            if x != y:
                return "messages", f"messages[{i}]: expected {short(x)}, got {short(y)}"
            continue
        role = f"messages.{x.get('role')}"
        if x.get("role") != y.get("role"):
            return "messages", f"messages[{i}].role: expected {x.get('role')!r}, got {y.get('role')!r}"
        cx, cy = x.get("content"), y.get("content")
        if cx != cy:
            if isinstance(cx, str) and isinstance(cy, str):
                return role, f"messages[{i}] ({x.get('role')}) content differs {text_difference(cx, cy)}"
            return role, f"messages[{i}] ({x.get('role')}) content: expected {short(cx)}, got {short(cy)}"
        if {k: v for k, v in x.items() if k != "content"} != {k: v for k, v in y.items() if k != "content"}:
            return role, f"messages[{i}]: expected {short(x)}, got {short(y)}"
    if len(expected) != len(actual):
        return "messages", (
            f"messages: expected {len(expected)} messages ({', '.join(str(m.get('role')) for m in expected)}), "
            f"got {len(actual)} ({', '.join(str(m.get('role')) if isinstance(m, dict) else '?' for m in actual)})")
    return None


@dataclass
class RequestPair:
    """A baseline request and the adapter request it is compared with (either may be missing)."""

    expected_index: int | None
    actual_index: int | None
    expected: dict[str, Any] | None
    actual: dict[str, Any] | None


def _system(body: dict[str, Any] | None) -> Any:
    messages = (body or {}).get("messages")
    if isinstance(messages, list) and messages and isinstance(messages[0], dict):
        return messages[0].get("content")
    return None


def _similarity(a: dict[str, Any], b: dict[str, Any]) -> tuple[int, int, int]:
    same_prompt = int(_system(a) == _system(b))
    ja = json.dumps(a.get("messages"), sort_keys=True, ensure_ascii=False, default=str)
    jb = json.dumps(b.get("messages"), sort_keys=True, ensure_ascii=False, default=str)
    prefix = next((i for i, (x, y) in enumerate(zip(ja, jb, strict=False)) if x != y), min(len(ja), len(jb)))
    fields = sum(1 for k in set(a) | set(b) if k != "messages" and a.get(k) == b.get(k))
    return same_prompt, prefix, fields


def pair_requests(expected: list[dict[str, Any]], actual: list[dict[str, Any]]) -> list[RequestPair]:
    """Pair two lists of normalised bodies request by request (see the module docstring); in baseline order,
    then the adapter's unpaired extra requests."""
    used: set[int] = set()
    match: dict[int, int] = {}
    for i, body in enumerate(expected):  # identical requests, in order
        for j, other in enumerate(actual):
            if j not in used and body == other:
                match[i] = j
                used.add(j)
                break
    for i, body in enumerate(expected):  # the rest: the most similar remaining request
        if i in match:
            continue
        candidates = [j for j in range(len(actual)) if j not in used]
        if not candidates:
            continue
        j = max(candidates, key=lambda c: (_similarity(body, actual[c]), -c))
        if _system(body) != _system(actual[j]) and any(_system(expected[k]) == _system(actual[j])
                                                       for k in range(len(expected)) if k not in match and k != i):
            continue  # that request belongs to another module's call: leave it for that one
        match[i] = j
        used.add(j)
    pairs = [RequestPair(i, match.get(i), body, actual[match[i]] if i in match else None)
             for i, body in enumerate(expected)]
    pairs += [RequestPair(None, j, None, actual[j]) for j in range(len(actual)) if j not in used]
    return pairs


def diff_requests(expected: list[Any], actual: list[Any], *, labels: dict[str, str] | None = None,
                  tolerate: Callable[[dict[str, Any]], frozenset[str]] | None = None) -> tuple[str, str] | None:
    """(field, one-line description) of the smallest difference between two request lists, request by request;
    None when they are the same. ``labels``: a system message -> "module 'x'" map for the description;
    ``tolerate``: for a baseline request, the fields the adapter may leave out of it."""
    found = request_divergence(expected, actual, labels=labels, tolerate=tolerate)
    return (found[0], found[1]) if found is not None else None


def request_divergence(expected: list[Any], actual: list[Any], *, labels: dict[str, str] | None = None,
                       tolerate: Callable[[dict[str, Any]], frozenset[str]] | None = None
                       ) -> tuple[str, str, dict[str, Any] | None] | None:
    """:func:`diff_requests` and the baseline request (normalised) the difference is about, None when it is an
    extra request of the adapter's."""
    norm_e = [normalise_request(b) for b in expected]
    norm_a = [normalise_request(b) for b in actual]
    pairs = pair_requests(norm_e, norm_a)
    counts = f"(native sent {len(norm_e)} request(s), the adapter {len(norm_a)})"

    def where(body: dict[str, Any] | None, index: int | None, who: str) -> str:
        module = (labels or {}).get(str(_system(body)), "")
        return f"{who} request {index + 1 if index is not None else '?'}" + (f" ({module})" if module else "")

    for pair in pairs:
        if pair.expected is not None and pair.actual is not None:
            diff = field_difference(pair.expected, pair.actual,
                                    tolerate=tolerate(pair.expected) if tolerate else frozenset())
            if diff is not None:
                return diff[0], (f"{where(pair.expected, pair.expected_index, 'native')} vs the adapter's request "
                                 f"{(pair.actual_index or 0) + 1}: {diff[1]} {counts}"), pair.expected
    for pair in pairs:
        if pair.actual is None:
            return "requests", (f"{where(pair.expected, pair.expected_index, 'native')} has no counterpart: the "
                                f"adapter never sent it {counts}"), pair.expected
        if pair.expected is None:
            return "requests", (f"the adapter's request {(pair.actual_index or 0) + 1}"
                                f"{' (' + labels.get(str(_system(pair.actual)), '') + ')' if labels else ''} has no "
                                f"counterpart at native: an extra request {counts}"), None
    return None


# ------------------------------------------------------------------------------------------------
# outcomes
# ------------------------------------------------------------------------------------------------
def describe_error(error: BaseException) -> str:
    """An error for a failure message: type, key details, cause, message (short)."""
    from stepbridge.errors import StepbridgeError, StepError

    text = type(error).__name__
    if isinstance(error, StepError):
        cause = error.cause
        text += f"(step={error.step}, module={error.module!r}, cause={describe_error(cause) if cause else None})"
        return text
    if isinstance(error, StepbridgeError):
        details = {k: v for k, v in error.details().items() if v is not None and k not in ("issues", "response")}
        if details:
            text += "(" + ", ".join(f"{k}={v!r}" for k, v in details.items()) + ")"
    message = str(error)
    return f"{text}: {message[:200]}" if message and not isinstance(error, StepError) else text


def describe_outcome(result: Any, error: BaseException | None) -> str:
    if error is not None:
        return "raised " + describe_error(error)
    outputs = getattr(result, "outputs", None)
    return "succeeded with outputs " + short(json.dumps(outputs, ensure_ascii=False, default=repr), 300)


def trace_labels(trace: Any) -> dict[str, str]:
    """system message -> ``step i, module 'x'`` from a (native) trace: names the module each request was for."""
    labels: dict[str, str] = {}

    def visit(records: Any) -> None:
        for record in records or []:
            for call in getattr(record, "lm_calls", None) or []:
                messages = getattr(call, "messages", None) or []
                if messages and isinstance(messages[0], dict):
                    labels.setdefault(str(messages[0].get("content")),
                                      f"step {record.step}, module {record.module!r}")
            visit(getattr(record, "children", None))

    visit(trace)
    return labels


def _subset_difference(expected: Any, actual: Any, path: str) -> str | None:
    """Where ``actual`` lacks what ``expected`` states: a dict states only its own keys (recursively)."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        for key, value in expected.items():
            if key not in actual:
                return f"{path}/{key}: missing (expected {short(value)})"
            diff = _subset_difference(value, actual[key], f"{path}/{key}")
            if diff:
                return diff
        return None
    return None if same(expected, actual) else f"{path}: expected {short(expected)}, got {short(actual)}"


def expected_fields_difference(expected: list[dict[str, Any]], bodies: list[Any]) -> tuple[str, str] | None:
    """(field, description) of the first request (in order) that lacks a field value a case expects; None when
    all match.
    An expected value of ``None`` means the field must not be sent; an expected mapping states only the
    keys it names (``response_format: {type: json_schema}``)."""
    norm = [normalise_request(b) for b in bodies]
    for i, fields in enumerate(expected):
        if i >= len(norm):
            return "requests", (f"request {i + 1} was never sent (expected {len(expected)} requests, the LM "
                                f"received {len(norm)})")
        for key, value in fields.items():
            got = norm[i].get(key)
            if value is None and key in norm[i]:
                return key, f"request {i + 1}: {key} should not be sent, the adapter sent {short(got)}"
            if value is not None and key not in norm[i]:
                return key, f"request {i + 1}: {key} should be {short(value)}, the adapter sent none"
            diff = _subset_difference(value, got, key) if value is not None else None
            if diff:
                return key, (f"request {i + 1}: {diff}" if isinstance(value, dict) else
                             f"request {i + 1}: {key} should be {short(value)}, the adapter sent {short(got)}")
    if len(norm) > len(expected):
        return "requests", f"{len(norm) - len(expected)} request(s) more than the {len(expected)} expected"
    return None


def trace_difference(expected: Any, actual: Any) -> str | None:
    """The first record where two traces differ in what a step did: its position, kind and module, a call
    step's inputs, any step's outputs, and each map element's inputs and outputs. None when they agree."""
    found = trace_divergence(expected, actual)
    return found[2] if found is not None else None


def record_part(record: Any) -> str:
    """The part of the protocol a trace record's step belongs to (``look at``)."""
    kind = getattr(record, "kind", None)
    if kind in ("if", "switch", "loop", "set"):
        return "control_flow"
    if kind == "parallel":
        return "parallel"
    if kind == "return":
        return "outputs"
    module_type = getattr(record, "module_type", None)
    if module_type == "react":
        return "agents"
    if module_type in ("best_of_n", "refine", "multi_chain_comparison"):
        return "ensembles"
    if kind == "map":
        return "map"
    return "parsing"


def trace_divergence(expected: Any, actual: Any) -> tuple[int, Any, str] | None:
    """(position, the baseline's record, description) of the first record where two traces differ (see
    :func:`trace_difference`; the record is None when one trace only has more records); None when they agree."""
    for i, (x, y) in enumerate(zip(expected, actual, strict=False)):
        where = f"trace record {i} (step {x.step}{' at ' + x.pointer if x.pointer else ''}, {x.kind}" + (
            f" {x.module!r})" if x.module else ")")
        if (x.step, x.kind, x.module) != (y.step, y.kind, y.module):
            return i, x, f"{where}: the adapter recorded step {y.step}, {y.kind} {y.module!r}"
        if x.kind == "call":
            diff = first_difference(x.inputs, y.inputs)
            if diff:
                return i, x, f"{where} inputs {diff}"
        diff = first_difference(x.outputs, y.outputs)
        if diff:
            return i, x, f"{where} outputs {diff}"
        if x.kind == "map":
            if len(x.children) != len(y.children):
                return i, x, f"{where}: {len(x.children)} element records expected, {len(y.children)} recorded"
            for j, (cx, cy) in enumerate(zip(x.children, y.children, strict=True)):
                diff = first_difference(cx.inputs, cy.inputs) or first_difference(cx.outputs, cy.outputs)
                if diff:
                    return i, x, f"{where} element {j} {diff}"
    if len(expected) != len(actual):
        return min(len(expected), len(actual)), None, f"{len(expected)} trace records expected, {len(actual)} recorded"
    return None


def request_position(trace: Any, messages: Any) -> int | None:
    """The position of the (top-level) trace record whose LM calls, or its children's, sent ``messages``."""
    def sent(record: Any) -> bool:
        calls = list(getattr(record, "lm_calls", None) or [])
        for child in getattr(record, "children", None) or []:
            calls.extend(getattr(child, "lm_calls", None) or [])
        return any(normalise_request({"messages": getattr(c, "messages", None)}).get("messages") == messages
                   for c in calls)

    for i, record in enumerate(trace or []):
        if sent(record):
            return i
    return None
