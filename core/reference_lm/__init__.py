"""The reference LM: a deterministic, OpenAI-compatible chat-completions server (design section 6).

It exists so that every backend, test and benchmark has an LM that needs no network, answers the
same request the same way forever, and speaks the exact prompt format DSPy's ChatAdapter,
JSONAdapter and XMLAdapter build (XML nested outputs name no leaf types: where a leaf needs one the
reference LM cannot know, such as an enum inside an object, the reply does not parse and the adapter
falls back to JSON, as DSPy's does). Answers are *extracted from the inputs* (the context sentence that best
overlaps the question, the Literal option mentioned in the text, numbers found in the inputs...)
so example programs give sensible outputs.

One concept per module, in the order a request flows through them:

* :mod:`.prompts` — reads a DSPy-formatted request: :func:`parse_system_message` ->
  :class:`PromptSpec` (its :class:`PromptField` s carry a JSON schema per output type).
* :mod:`.facts` — what the input values say (:class:`~.facts.Facts`: query, passages, numbers).
* :mod:`.answers` — :class:`~.answers.ValueGenerator`: a value of a JSON schema from the facts
  (typed answers and option choice are extended here).
* :mod:`.agents` — how the model plays ReAct (choose a tool and its arguments, finish after one or
  two observations), MultiChainComparison and Refine's advice step.
* :mod:`.model` — :class:`ReferenceModel`, the deterministic model, callable in-process.
* :mod:`.faults` — fault injection by model name (:func:`parse_faults`).
* :mod:`.request_log` — :class:`RequestLog`, what the server received (for equivalence tests).
* :mod:`.cassettes` — record/replay of real LM traffic (:class:`Cassette`, :func:`request_hash`).
* :mod:`.responses` — OpenAI-shaped completion, stream and error bodies.
* :mod:`.app` — :func:`create_app`, the ASGI app tying the above together.
* :mod:`.server` — :func:`running_server` / :func:`running_server_process` for tests and
  benchmarks, :func:`serve` behind ``stepbridge lm serve``.
"""

from __future__ import annotations

from .app import MODEL_NAME, create_app
from .cassettes import VOLATILE_FIELDS, Cassette, CassetteMiss, request_hash
from .faults import GARBAGE_TEXT, Faults, parse_faults
from .model import ReferenceModel
from .prompts import PromptField, PromptSpec, parse_system_message
from .request_log import RequestLog
from .server import DEFAULT_PORT, ServerURL, main, running_server, running_server_process, serve

__all__ = [
    "DEFAULT_PORT",
    "GARBAGE_TEXT",
    "MODEL_NAME",
    "VOLATILE_FIELDS",
    "Cassette",
    "CassetteMiss",
    "Faults",
    "PromptField",
    "PromptSpec",
    "ReferenceModel",
    "RequestLog",
    "ServerURL",
    "create_app",
    "main",
    "parse_faults",
    "parse_system_message",
    "request_hash",
    "running_server",
    "running_server_process",
    "serve",
]
