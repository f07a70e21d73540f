"""The program IR: pydantic models for a program file (format versions 1 and 2) and its content hash.

A program is data: a signature, named modules and a list of forward steps. Format 1 has ``call``,
``map`` and one final ``return``; format 2 adds ``set``, ``if``, ``switch``, ``loop``, ``parallel`` and
``return`` wherever a list of steps may end (``docs/format-2.md``). These models check the *shape*
of a file; :mod:`stepbridge.validate` checks its *meaning* (references, types, flow, bounds) and
reports every problem at once.

Content hash: sha256 of the canonical JSON of the normalised model (see :func:`canonical_json`).
Decisions: keys sorted; no insignificant whitespace; UTF-8 with non-ASCII kept as is; integral
floats written as integers (``1`` and ``1.0`` hash alike); strings are *not* Unicode-normalised,
because the hash must identify the exact bytes a program sends to an LM (identifiers are ASCII
by the grammar, so they cannot differ by normalisation); signatures are hashed in their long form,
so ``"q -> a"`` and the equivalent long form are the same program; signature fields are hashed in
their order (it is the order of the prompt), every other mapping is order-free. ``lm: {}`` is no ``lm``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    Tag,
    field_validator,
    model_serializer,
    model_validator,
)

from .errors import Issue
from .named_types import MAX_TYPES, TypeSpace, TypeSpec, parse_type_spec
from .signature import IDENTIFIER, Signature, TypeExpr

__all__ = [
    "BestOfNModule",
    "CallStep",
    "Case",
    "ChainOfThoughtModule",
    "DspyModule",
    "IfStep",
    "LMConfig",
    "LoopSpec",
    "LoopStep",
    "MapStep",
    "Module",
    "MultiChainComparisonModule",
    "ParallelStep",
    "PredictModule",
    "Program",
    "ReactModule",
    "RefineModule",
    "RetrieveModule",
    "RetrieverSpec",
    "ReturnStep",
    "RewardSpec",
    "SetStep",
    "Step",
    "SwitchStep",
    "ToolModule",
    "canonical_json",
    "iter_steps",
]

FORMAT_VERSIONS = (1, 2)
#: The step kinds of each format version (one kind key per step).
STEP_KINDS = {1: ("call", "map", "return"), 2: ("call", "map", "return", "set", "if", "switch", "loop", "parallel")}
MAX_LOOP = 10_000
NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_\-.]*$"
#: At most this many completions per LM call (``lm.n``): DSPy sends one request per completion.
MAX_COMPLETIONS = 100


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class LMConfig(_Strict):
    """LM settings a program may carry. Endpoints and keys never live here: they come from profiles."""

    model: str | None = Field(default=None, max_length=200, description="provider/model, as DSPy spells it")
    profile: str | None = Field(default=None, max_length=200, description="an operator-defined LM profile")
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    max_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    n: int | None = Field(default=None, ge=1, le=MAX_COMPLETIONS,
                          description="completions per call: outputs come from the first, all are in the trace")
    adapter: Literal["chat", "json", "xml"] | None = None

    def merged(self, override: LMConfig | None) -> LMConfig:
        """``override``'s set fields win over ours (program default < module < run)."""
        if override is None:
            return self
        return self.model_copy(update=override.model_dump(exclude_none=True))


class _LMModule(_Strict):
    signature: Signature
    instructions: str | None = Field(default=None, max_length=200_000)
    demos: list[dict[str, Any]] = Field(default_factory=list, max_length=1000)
    lm: LMConfig | None = None

    @property
    def effective_signature(self) -> Signature:
        """The signature with the module's instructions applied (module wins over signature)."""
        if self.instructions is not None:
            return self.signature.with_instructions(self.instructions)
        return self.signature


class PredictModule(_LMModule):
    """One LM call: format the signature, call the LM, parse the outputs (``dspy.Predict``)."""

    type: Literal["predict"] = "predict"


class ChainOfThoughtModule(_LMModule):
    """Like predict with a ``reasoning`` output first (``dspy.ChainOfThought``)."""

    type: Literal["chain_of_thought"] = "chain_of_thought"


class RetrieverSpec(_Strict):
    """Which retriever to use. ``kind`` is a registered retriever name (``bm25`` is built in)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    kind: str = Field(max_length=200)
    corpus: str | None = Field(default=None, max_length=4096, description="path relative to the program file")

    @field_validator("corpus")
    @classmethod
    def _relative_corpus(cls, value: str | None) -> str | None:
        # A program may only read files beside it: no URLs, no absolute paths, no way out with '..'.
        if value is None:
            return value
        if "://" in value or value.startswith("~"):
            raise ValueError("corpus must be a file path relative to the program file, not a URL")
        parts = value.replace("\\", "/").split("/")
        if value.startswith(("/", "\\")) or (len(value) > 1 and value[1] == ":") or ".." in parts:
            raise ValueError("corpus must be a path inside the program's folder (no absolute paths, no '..')")
        return value


RETRIEVE_SIGNATURE = Signature.model_validate("query -> passages: list[str], ids: list[str], scores: list[float]")


class RetrieveModule(_Strict):
    """Top-``k`` passages for a query: input ``query``, outputs ``passages``, ``ids``, ``scores``."""

    type: Literal["retrieve"] = "retrieve"
    retriever: RetrieverSpec
    k: int = Field(default=3, ge=1, le=1000)

    @property
    def effective_signature(self) -> Signature:
        return RETRIEVE_SIGNATURE


class ToolModule(_Strict):
    """A named callable from the tool registry; never an import path."""

    type: Literal["tool"] = "tool"
    tool: str = Field(max_length=200, pattern=NAME_PATTERN)
    signature: Signature | None = None
    side_effects: bool = Field(default=False, description="if true, a failed run is never retried elsewhere")


class DspyModule(_Strict):
    """An existing DSPy module, by exact registered name, with its saved state."""

    type: Literal["dspy"] = "dspy"
    module: str = Field(max_length=200, pattern=NAME_PATTERN)
    signature: Signature
    state: dict[str, Any] | None = None
    lm: LMConfig | None = None

    @field_validator("state")
    @classmethod
    def _state_is_data_for_predictors(cls, state: dict[str, Any] | None) -> dict[str, Any] | None:
        """Only signature text and demos (see :mod:`stepbridge.dspy_state`); validation reports every
        problem with its pointer, this refuses what reaches the model another way."""
        from .dspy_state import state_problems

        problems = state_problems(state) if state is not None else []
        if problems:
            where, message = problems[0]
            raise ValueError(f"state{where}: {message}")
        return state

    @property
    def effective_signature(self) -> Signature:
        return self.signature


# -- format 2: agents and ensembles (docs/format-2.md, "Modules") ------------------------------------
MAX_ENSEMBLE = 100


class ReactModule(_Strict):
    """An agent that calls registered tools until it finishes, then extracts the outputs (``dspy.ReAct``).

    Outputs: ``trajectory`` (the thoughts, tool calls and observations), ``reasoning`` and the
    signature's outputs."""

    type: Literal["react"] = "react"
    signature: Signature
    instructions: str | None = Field(default=None, max_length=200_000)
    tools: list[str] = Field(default_factory=list, max_length=100,
                             description="registered tool names (never import paths); 'finish' is added")
    max_iters: int = Field(default=20, ge=1, le=100, description="tool calls at most, before extracting")
    lm: LMConfig | None = None

    @field_validator("tools")
    @classmethod
    def _tool_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not isinstance(name, str) or not re.match(NAME_PATTERN, name) or len(name) > 200:
                raise ValueError(f"invalid tool name {name!r}: tools are registered names, never import paths")
        return value

    @property
    def effective_signature(self) -> Signature:
        if self.instructions is not None:
            return self.signature.with_instructions(self.instructions)
        return self.signature


class RewardSpec(_Strict):
    """What scores an attempt: a registered metric, or a numeric output of a module of the file (a judge)."""

    metric: str | None = Field(default=None, max_length=200, pattern=NAME_PATTERN,
                               description="a metric registered under 'stepbridge.metrics'")
    module: str | None = Field(default=None, max_length=200, description="a module of this file (an LM judge)")
    field: str | None = Field(default=None, max_length=200, description="the judge's numeric output")

    @model_validator(mode="after")
    def _one_kind(self) -> RewardSpec:
        if (self.metric is None) == (self.module is None):
            raise ValueError("a reward is either {metric: NAME} or {module: NAME, field: FIELD}")
        if self.module is not None and self.field is None:
            raise ValueError("a module reward names the judge's numeric output: {module: NAME, field: FIELD}")
        if self.metric is not None and self.field is not None:
            raise ValueError("'field' belongs to a module reward; a metric reward is {metric: NAME}")
        return self


class _EnsembleModule(_Strict):
    module: str = Field(max_length=200, description="the module of this file to run up to n times")
    n: int = Field(ge=1, le=MAX_ENSEMBLE, description="attempts at most")
    reward: RewardSpec
    # an integer stays one: Refine shows the LM its threshold (DSPy writes 1, not 1.0)
    threshold: int | Annotated[float, Field(allow_inf_nan=False)] = Field(
        description="stop at the first attempt scoring at least this")
    fail_count: int | None = Field(default=None, ge=1, le=MAX_ENSEMBLE,
                                   description="failed attempts tolerated (default n)")


class BestOfNModule(_EnsembleModule):
    """Run a module up to ``n`` times at temperature 1.0 and keep the best-rewarded prediction (``dspy.BestOfN``)."""

    type: Literal["best_of_n"] = "best_of_n"


class RefineModule(_EnsembleModule):
    """Like ``best_of_n``, with LM advice fed to the next attempt as a hint (``dspy.Refine``)."""

    type: Literal["refine"] = "refine"


class MultiChainComparisonModule(_Strict):
    """Compare ``m`` completions (input ``completions``) and answer with a ``rationale``
    (``dspy.MultiChainComparison``)."""

    type: Literal["multi_chain_comparison"] = "multi_chain_comparison"
    signature: Signature
    instructions: str | None = Field(default=None, max_length=200_000)
    m: int = Field(default=3, ge=1, le=MAX_ENSEMBLE, description="completions compared (DSPy's M)")
    lm: LMConfig | None = None

    @property
    def effective_signature(self) -> Signature:
        if self.instructions is not None:
            return self.signature.with_instructions(self.instructions)
        return self.signature


Module = Annotated[
    Annotated[PredictModule, Tag("predict")]
    | Annotated[ChainOfThoughtModule, Tag("chain_of_thought")]
    | Annotated[RetrieveModule, Tag("retrieve")]
    | Annotated[ToolModule, Tag("tool")]
    | Annotated[DspyModule, Tag("dspy")]
    | Annotated[ReactModule, Tag("react")]
    | Annotated[BestOfNModule, Tag("best_of_n")]
    | Annotated[RefineModule, Tag("refine")]
    | Annotated[MultiChainComparisonModule, Tag("multi_chain_comparison")],
    Discriminator(lambda v: v.get("type") if isinstance(v, dict) else getattr(v, "type", None)),
]
MODULE_TYPES = ("predict", "chain_of_thought", "retrieve", "tool", "dspy", "react", "best_of_n", "refine",
                "multi_chain_comparison")
#: Module types of format 2 only.
MODULE_TYPES_V2 = ("react", "best_of_n", "refine", "multi_chain_comparison")
#: The module types a best_of_n / refine module may wrap (an ensemble of ensembles is refused).
WRAPPABLE_TYPES = ("predict", "chain_of_thought", "react", "multi_chain_comparison")


class CallStep(_Strict):
    """Call a module once with an argument map; its outputs are named ``as``."""

    call: str = Field(max_length=200)
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")
    as_: str | None = Field(default=None, alias="as", max_length=200)


class MapStep(_Strict):
    """Call a module once per element of the list ``over``; each element is ``$<item>``."""

    map: str = Field(max_length=200)
    over: Any = Field(description="a list value: a reference such as $found.passages (format 2: any value)")
    item: str = Field(default="item", max_length=200)
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")
    as_: str | None = Field(default=None, alias="as", max_length=200)
    concurrency: int | None = Field(default=None, ge=1, le=10_000)


class ReturnStep(_Strict):
    """The program outputs; ends the run (format 1: exactly one, last; format 2: wherever steps end)."""

    return_: dict[str, Any] = Field(alias="return")


class SetStep(_Strict):
    """Bind or rebind variables (format 2); every value is computed before any is assigned."""

    set: dict[str, Any] = Field(min_length=1, max_length=1000)


def _keep_key(key: str, attr: str) -> Any:
    """A serializer keeping a step's kind key even when its value is ``null`` (``if: null`` is a
    valid, if pointless, condition; dropping the key would lose the step's kind)."""

    def serialize(self: BaseModel, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> Any:
        data = handler(self)
        name = key if info.by_alias else attr
        if isinstance(data, dict) and name not in data:
            data = {name: None, **data}
        return data

    return model_serializer(mode="wrap")(serialize)


class IfStep(_Strict):
    """Run ``then`` when the condition is truthy, else ``else`` (format 2)."""

    if_: Any = Field(alias="if", description="a condition: any value, read by truthiness")
    then: list[Step] = Field(min_length=1, max_length=10_000)
    else_: list[Step] | None = Field(default=None, alias="else", min_length=1, max_length=10_000)

    _serialize = _keep_key("if", "if_")


class Case(_Strict):
    """One case of a ``switch``: a literal (or a list of literals) and the steps to run."""

    when: Any = Field(description="a literal, or a list of literals (any of them matches)")
    steps: list[Step] = Field(min_length=1, max_length=10_000)

    _serialize = _keep_key("when", "when")


class SwitchStep(_Strict):
    """Run the first case whose ``when`` equals the value (JSON equality), else ``default`` (format 2)."""

    switch: Any = Field(description="the value compared with each case's literals")
    cases: list[Case] = Field(min_length=1, max_length=1000)
    default: list[Step] | None = Field(default=None, min_length=1, max_length=10_000)

    _serialize = _keep_key("switch", "switch")


class LoopSpec(_Strict):
    """A bounded loop: at most ``max`` passes; after each, stop when ``until`` is truthy; with
    ``over``, one pass per element (bound to ``item``); ``index`` names the 0-based pass number."""

    max: int = Field(ge=1, le=MAX_LOOP, description="the most passes the loop makes (required)")
    steps: list[Step] = Field(min_length=1, max_length=10_000)
    until: Any = Field(default=None, description="checked after each pass: stop when truthy")
    over: Any = Field(default=None, description="a list: one pass per element (longer than max: the step fails)")
    item: str = Field(default="item", max_length=200)
    index: str | None = Field(default=None, max_length=200)


class LoopStep(_Strict):
    """``loop: {max, steps, until, over, item, index}`` (format 2)."""

    loop: LoopSpec


class ParallelStep(_Strict):
    """Run the listed ``call`` steps concurrently; their results are bound when all have finished."""

    parallel: list[CallStep] = Field(min_length=1, max_length=1000)


_STEP_CLASSES: dict[type, str] = {CallStep: "call", MapStep: "map", ReturnStep: "return", SetStep: "set",
                                  IfStep: "if", SwitchStep: "switch", LoopStep: "loop", ParallelStep: "parallel"}


def _step_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        for key in STEP_KINDS[2]:
            if key in value:
                return key
        return None
    return _STEP_CLASSES.get(type(value))


Step = Annotated[
    Annotated[CallStep, Tag("call")] | Annotated[MapStep, Tag("map")] | Annotated[ReturnStep, Tag("return")]
    | Annotated[SetStep, Tag("set")] | Annotated[IfStep, Tag("if")] | Annotated[SwitchStep, Tag("switch")]
    | Annotated[LoopStep, Tag("loop")] | Annotated[ParallelStep, Tag("parallel")],
    Discriminator(
        _step_kind,
        custom_error_type="step_kind",
        custom_error_message="a step needs one of the keys 'call', 'map', 'return', 'set', 'if', 'switch', "
                             "'loop' or 'parallel'",
    ),
]
for _model in (IfStep, Case, SwitchStep, LoopSpec, LoopStep):
    _model.model_rebuild()


def step_kind(step: Any) -> str:
    """``call``, ``map``, ``return``, ``set``, ``if``, ``switch``, ``loop`` or ``parallel``."""
    return _STEP_CLASSES[type(step)]


def child_lists(step: Any, pointer: str) -> list[tuple[str, list[Any]]]:
    """The lists of steps directly inside ``step``, with their JSON pointers."""
    if isinstance(step, IfStep):
        out = [(f"{pointer}/then", step.then)]
        if step.else_ is not None:
            out.append((f"{pointer}/else", step.else_))
        return out
    if isinstance(step, SwitchStep):
        out = [(f"{pointer}/cases/{i}/steps", case.steps) for i, case in enumerate(step.cases)]
        if step.default is not None:
            out.append((f"{pointer}/default", step.default))
        return out
    if isinstance(step, LoopStep):
        return [(f"{pointer}/loop/steps", step.loop.steps)]
    if isinstance(step, ParallelStep):
        return [(f"{pointer}/parallel", list(step.parallel))]
    return []


def iter_steps(steps: list[Any], pointer: str = "/steps") -> Iterator[tuple[str, Any]]:
    """Every step at any depth with its JSON pointer, in document order."""
    todo = [(f"{pointer}/{i}", s) for i, s in enumerate(steps)][::-1]
    while todo:
        where, step = todo.pop()
        yield where, step
        for list_pointer, children in reversed(child_lists(step, where)):
            todo.extend([(f"{list_pointer}/{i}", s) for i, s in enumerate(children)][::-1])


class Program(_Strict):
    """A whole program file. Build one with :func:`stepbridge.load`, the builder, or ``model_validate``."""

    stepbridge: Literal[1, 2] = Field(description="format version (2 adds control flow: docs/format-2.md)")
    name: str = Field(max_length=200, pattern=NAME_PATTERN)
    description: str | None = Field(default=None, max_length=100_000)
    signature: Signature
    types: dict[str, TypeSpec] = Field(
        default_factory=dict, max_length=MAX_TYPES,
        description="format 2: named object types ({description, fields}) and enums ({enum: [values]})")
    lm: LMConfig | None = None
    modules: dict[str, Module] = Field(default_factory=dict, max_length=10_000)
    steps: list[Step] = Field(max_length=10_000)

    _base_dir: Path | None = PrivateAttr(default=None)
    _lines: dict[str, int] = PrivateAttr(default_factory=dict)
    _warnings: tuple[Issue, ...] = PrivateAttr(default=())

    @field_validator("modules")
    @classmethod
    def _module_names(cls, value: dict[str, Any]) -> dict[str, Any]:
        from .names import module_name_problem

        for name in value:
            if not IDENTIFIER.match(name):
                raise ValueError(f"invalid module name {name!r} (letters, digits and _; not starting with a digit)")
            if (problem := module_name_problem(name)) is not None:
                raise ValueError(problem)
        return value

    @field_validator("types", mode="before")
    @classmethod
    def _type_specs(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            return {name: parse_type_spec(spec) for name, spec in value.items()}
        return value

    @model_validator(mode="after")
    def _version_constructs(self) -> Program:
        if self.stepbridge == 1:
            for pointer, step in iter_steps(self.steps):
                if step_kind(step) not in STEP_KINDS[1]:
                    raise ValueError(f"{pointer}: '{step_kind(step)}' steps need 'stepbridge: 2'")
            for name, module in self.modules.items():
                if module.type in MODULE_TYPES_V2:
                    raise ValueError(f"/modules/{name}: module type {module.type!r} needs 'stepbridge: 2'")
            if self.types:
                raise ValueError("a 'types' section needs 'stepbridge: 2'")
        if self.types:
            _, problems = TypeSpace.build(self.types)
            if problems:
                first = problems[0]
                raise ValueError(f"/types{first.pointer}: {first.message}")
        return self

    @cached_property
    def type_space(self) -> TypeSpace:
        """The declared types, checked and resolved (signatures' type names resolve against it)."""
        space, _ = TypeSpace.build(self.types)
        return space

    @cached_property
    def input_types(self) -> tuple[tuple[str, TypeExpr], ...]:
        """Each program input with its type resolved against the declared types (checked on every run)."""
        space = self.type_space
        return tuple((name, space.resolve(spec.type_expr)) for name, spec in self.signature.inputs.items())

    @cached_property
    def required_capabilities(self) -> frozenset[str]:
        """Adapter capabilities this program needs (checked by the core before any run)."""
        needs: set[str] = set()
        for module in self.modules.values():
            needs |= {"retrieve": {"retrieve"}, "tool": {"tools"}, "dspy": {"dspy_modules"}, "react": {"agents"},
                      "best_of_n": {"ensembles"}, "refine": {"ensembles"},
                      "multi_chain_comparison": {"ensembles"}}.get(module.type, set())
            needs |= lm_capabilities(getattr(module, "lm", None))
        needs |= lm_capabilities(self.lm)
        if self._uses_typed_objects():
            needs.add("typed_objects")
        for _, step in iter_steps(self.steps):
            kind = step_kind(step)
            if kind == "map":
                needs.add("map")
            elif kind == "parallel":
                needs.add("parallel")
            elif kind in ("set", "if", "switch", "loop"):
                needs.add("control_flow")
        if self.stepbridge == 2 and "control_flow" not in needs and self._uses_v2_values():
            needs.add("control_flow")
        return frozenset(needs)

    def _uses_typed_objects(self) -> bool:
        """A ``types`` section, or Any, a union, a tuple, History or a declared type in a signature."""
        if getattr(self, "types", None):
            return True
        sigs = [self.signature, *(getattr(m, "signature", None) for m in self.modules.values())]
        return any(isinstance(sig, Signature) and any(
            spec.type_expr.needs_typed_objects for spec in (*sig.inputs.values(), *sig.outputs.values()))
            for sig in sigs)
    def _uses_v2_values(self) -> bool:
        """Operations or references with paths anywhere in the values (format 2 only)."""
        from .values import Op, Ref, parse_value, walk_values

        for _, step in iter_steps(self.steps):
            raw: list[Any] = []
            if isinstance(step, CallStep):
                raw.append(step.with_)
            elif isinstance(step, MapStep):
                raw += [step.with_, step.over]
            elif isinstance(step, ReturnStep):
                raw.append(step.return_)
            for value in raw:
                for _, node in walk_values(parse_value(value, version=2)):
                    if isinstance(node, Op) or (isinstance(node, Ref) and len(node.path) > 1):
                        return True
        return False

    # -- identity --------------------------------------------------------------------------------
    def canonical(self) -> dict[str, Any]:
        """The normalised form the content hash is computed from."""
        data = self.model_dump(mode="json", by_alias=True, exclude_none=True, exclude_defaults=True)
        data["stepbridge"] = self.stepbridge
        data["signature"] = self.signature.canonical()
        if self.types:  # each object's fields in declared order (part of the prompt)
            data["types"] = {name: spec.canonical() for name, spec in self.types.items()}
        if data.get("lm") == {}:  # ``lm: {}`` sets nothing: the same program as no ``lm``
            del data["lm"]
        for name, module in self.modules.items():
            sig = getattr(module, "signature", None)
            if data["modules"][name].get("lm") == {}:
                del data["modules"][name]["lm"]
            data["modules"][name]["type"] = module.type
            if isinstance(sig, Signature):
                data["modules"][name]["signature"] = sig.canonical()
        return data

    @cached_property
    def content_hash(self) -> str:
        """sha256 of the canonical JSON: the program's identity in storage, on the wire, in caches."""
        return hashlib.sha256(canonical_json(self._hash_form()).encode("utf-8")).hexdigest()

    def _hash_form(self) -> dict[str, Any]:
        """:meth:`canonical` with every signature's fields as ordered ``[name, spec]`` pairs: field order
        is part of the prompt, and sorted JSON keys would otherwise hide it."""
        data = self.canonical()

        def ordered(sig: dict[str, Any]) -> dict[str, Any]:
            return {**sig, "inputs": [[k, v] for k, v in sig["inputs"].items()],
                    "outputs": [[k, v] for k, v in sig["outputs"].items()]}

        data["signature"] = ordered(data["signature"])
        for module in data.get("modules", {}).values():
            if isinstance(module.get("signature"), dict):
                module["signature"] = ordered(module["signature"])
        return data

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Program:
        """A copy; with ``update``, the cached hash and capabilities are recomputed, not carried over."""
        copied = super().model_copy(update=update, deep=deep)
        if update:
            for cached in ("content_hash", "required_capabilities", "plan_key", "type_space", "input_types"):
                copied.__dict__.pop(cached, None)
        return copied

    @cached_property
    def plan_key(self) -> tuple[str, Path | None]:
        """What a compiled plan depends on: the content and the folder relative corpora resolve against."""
        return self.content_hash, self._base_dir

    @property
    def base_dir(self) -> Path:
        """Directory that relative paths (corpora) resolve against."""
        return self._base_dir or Path.cwd()

    @property
    def source_dir(self) -> Path | None:
        """The folder the program was loaded from (or stored with); None when it has none. Outside the
        content hash: storage keeps it beside the row, a worker never uses it."""
        return self._base_dir

    @property
    def source_lines(self) -> Mapping[str, int]:
        """JSON pointer -> source line, when loaded from a file (empty otherwise); see :meth:`line_of`."""
        return self._lines

    @property
    def warnings(self) -> tuple[Issue, ...]:
        """The warnings validation found (errors would have refused the program)."""
        return self._warnings

    def with_base_dir(self, base_dir: Path | str | None) -> Program:
        """Resolve relative data paths (a retriever's corpus) against ``base_dir``, as for a file in that folder."""
        self._base_dir = Path(base_dir) if base_dir is not None else None
        self.__dict__.pop("plan_key", None)
        return self

    def with_source(self, *, lines: Mapping[str, int] | None = None, warnings: Iterable[Issue] = ()) -> Program:
        """Attach what validating the source found (line numbers, warnings): set once, by the validator.
        Neither is part of the program's content (or its hash)."""
        self._lines = dict(lines or {})
        self._warnings = tuple(warnings)
        return self

    def line_of(self, pointer: str) -> int | None:
        """The source line of a JSON pointer (or its nearest ancestor), when loaded from a file."""
        while pointer:
            if pointer in self._lines:
                return self._lines[pointer]
            pointer = pointer.rsplit("/", 1)[0]
        return self._lines.get("")

    # -- serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The program as a file would hold it (short signatures where possible)."""
        data = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        modules = data.get("modules", {})
        for name, mod in modules.items():
            if mod.get("demos") == []:
                del mod["demos"]
            modules[name] = {"type": mod.pop("type"), **mod}  # the type first: it says how to read the rest
        _tidy_steps(data.get("steps", []))
        if not data.get("types"):
            data.pop("types", None)
        else:  # short forms: a field without a description is its type string
            data["types"] = {name: spec.to_file() for name, spec in self.types.items()}
        return data

    def to_json(self, *, indent: int | None = 2) -> str:
        """The program as a JSON file would hold it."""
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    def to_yaml(self) -> str:
        """The program as a YAML file would hold it (keys in the file's order)."""
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True, width=100)

    def dump(self, path: str | Path) -> None:
        """Write to ``path``: YAML for .yaml/.yml, JSON otherwise."""
        path = Path(path)
        text = self.to_yaml() if path.suffix in (".yaml", ".yml") else self.to_json() + "\n"
        path.write_text(text, encoding="utf-8")


def lm_capabilities(lm: LMConfig | None) -> set[str]:
    """Capabilities an LM setting needs: the JSON or XML adapter format, several completions per call."""
    if lm is None:
        return set()
    needs = {f"{lm.adapter}_adapter"} if lm.adapter in ("json", "xml") else set()
    if lm.n is not None and lm.n > 1:
        needs.add("ensembles")
    return needs


def _tidy_steps(steps: list[Any]) -> None:
    """Drop what a file leaves out (``with: {}``, ``item: item``) at every depth."""
    for step in steps:
        if not isinstance(step, dict):
            continue
        if step.get("with") == {}:
            del step["with"]
        if step.get("item") == "item" and "map" in step:
            del step["item"]
        loop = step.get("loop")
        if isinstance(loop, dict):
            if loop.get("item") == "item":
                del loop["item"]
            _tidy_steps(loop.get("steps") or [])
        for key in ("then", "else", "default", "parallel"):
            if isinstance(step.get(key), list):
                _tidy_steps(step[key])
        for case in step.get("cases") or []:
            if isinstance(case, dict):
                _tidy_steps(case.get("steps") or [])


def _normalise(value: Any) -> Any:
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("NaN and infinity have no canonical JSON form")
        if value.is_integer() and abs(value) < 2**53:
            return int(value)
        return value
    if isinstance(value, dict):
        return {str(k): _normalise(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_normalise(v) for v in value]
    return value


def canonical_json(value: Any) -> str:
    """Canonical JSON: sorted keys, compact separators, UTF-8 text, integral floats as ints."""
    return json.dumps(_normalise(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)
