"""The program IR: pydantic models for a program file (format version 1) and its content hash.

A program is data: a signature, named modules and a list of forward steps. These models check
the *shape* of a file; :mod:`stepbridge.validate` checks its *meaning* (references, types,
return placement) and reports every problem at once.

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
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    field_validator,
    model_validator,
)

from .signature import IDENTIFIER, Signature

__all__ = [
    "BestOfNModule",
    "CallStep",
    "ChainOfThoughtModule",
    "DspyModule",
    "LMConfig",
    "MapStep",
    "Module",
    "MultiChainComparisonModule",
    "PredictModule",
    "Program",
    "ReactModule",
    "RefineModule",
    "RetrieveModule",
    "RetrieverSpec",
    "ReturnStep",
    "RewardSpec",
    "Step",
    "ToolModule",
    "canonical_json",
]

FORMAT_VERSION = 1
NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_\-.]*$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class LMConfig(_Strict):
    """LM settings a program may carry. Endpoints and keys never live here: they come from profiles."""

    model: str | None = Field(default=None, max_length=200, description="provider/model, as DSPy spells it")
    profile: str | None = Field(default=None, max_length=200, description="an operator-defined LM profile")
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    max_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    adapter: Literal["chat", "json"] | None = None

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
    threshold: float = Field(allow_inf_nan=False, description="stop at the first attempt scoring at least this")
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
    over: str = Field(max_length=500)
    item: str = Field(default="item", max_length=200)
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")
    as_: str | None = Field(default=None, alias="as", max_length=200)
    concurrency: int | None = Field(default=None, ge=1, le=10_000)


class ReturnStep(_Strict):
    """The program outputs. Exactly one, and last."""

    return_: dict[str, Any] = Field(alias="return")


def _step_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        for key in ("call", "map", "return"):
            if key in value:
                return key
        return None
    kinds: dict[type, str] = {CallStep: "call", MapStep: "map", ReturnStep: "return"}
    return kinds.get(type(value))


Step = Annotated[
    Annotated[CallStep, Tag("call")] | Annotated[MapStep, Tag("map")] | Annotated[ReturnStep, Tag("return")],
    Discriminator(
        _step_kind,
        custom_error_type="step_kind",
        custom_error_message="a step needs one of the keys 'call', 'map' or 'return'",
    ),
]


class Program(_Strict):
    """A whole program file. Build one with :func:`stepbridge.load`, the builder, or ``model_validate``."""

    stepbridge: Literal[1] = Field(description="format version")
    name: str = Field(max_length=200, pattern=NAME_PATTERN)
    description: str | None = Field(default=None, max_length=100_000)
    signature: Signature
    lm: LMConfig | None = None
    modules: dict[str, Module] = Field(default_factory=dict, max_length=10_000)
    steps: list[Step] = Field(max_length=10_000)

    _base_dir: Path | None = PrivateAttr(default=None)
    _lines: dict[str, int] = PrivateAttr(default_factory=dict)

    @field_validator("modules")
    @classmethod
    def _module_names(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name in value:
            if not IDENTIFIER.match(name):
                raise ValueError(f"invalid module name {name!r} (letters, digits and _; not starting with a digit)")
        return value

    @cached_property
    def required_capabilities(self) -> frozenset[str]:
        """Adapter capabilities this program needs (checked by the core before any run)."""
        needs: set[str] = set()
        for module in self.modules.values():
            needs |= {"retrieve": {"retrieve"}, "tool": {"tools"}, "dspy": {"dspy_modules"}, "react": {"agents"},
                      "best_of_n": {"ensembles"}, "refine": {"ensembles"},
                      "multi_chain_comparison": {"ensembles"}}.get(module.type, set())
            lm = getattr(module, "lm", None)
            if lm is not None and lm.adapter == "json":
                needs.add("json_adapter")
        if self.lm is not None and self.lm.adapter == "json":
            needs.add("json_adapter")
        if any(isinstance(s, MapStep) for s in self.steps):
            needs.add("map")
        return frozenset(needs)

    # -- identity --------------------------------------------------------------------------------
    def canonical(self) -> dict[str, Any]:
        """The normalised form the content hash is computed from."""
        data = self.model_dump(mode="json", by_alias=True, exclude_none=True, exclude_defaults=True)
        data["stepbridge"] = FORMAT_VERSION
        data["signature"] = self.signature.canonical()
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
            for cached in ("content_hash", "required_capabilities", "plan_key"):
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

    def with_base_dir(self, base_dir: Path | str | None) -> Program:
        self._base_dir = Path(base_dir) if base_dir is not None else None
        self.__dict__.pop("plan_key", None)
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
        for step in data.get("steps", []):
            if step.get("with") == {}:
                del step["with"]
            if step.get("item") == "item" and "map" in step:
                del step["item"]
        return data

    def to_json(self, *, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True, width=100)

    def dump(self, path: str | Path) -> None:
        """Write to ``path``: YAML for .yaml/.yml, JSON otherwise."""
        path = Path(path)
        text = self.to_yaml() if path.suffix in (".yaml", ".yml") else self.to_json() + "\n"
        path.write_text(text, encoding="utf-8")


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
