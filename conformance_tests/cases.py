"""The data-driven cases: ``cases/*.yaml`` shipped with the suite.

Each file is one program (inline, with paths relative to the ``cases`` folder) and its runs::

    id: rag
    description: what the case covers
    tags: [retrieve, chain_of_thought, chat]
    capabilities: [retrieve]          # what an adapter must declare to run it (skipped otherwise)
    checked_by: core                  # optional: stepbridge decides the outcome before the adapter runs
                                      # (reported in the core section, never counted for the adapter)
    program: {...}                    # a program file's content (any format version)
    native_equivalent: {...}         # optional: the program the native adapter runs for comparison
    invalid: {pointers: [...]}        # optional: the program must be refused with these issue pointers
    runs:
      - inputs: {...}
        lm: {model: openai/reference/error-500}   # optional run-time LM override (fault injection)
        outputs: {...}                            # expected outputs, exactly (types included)
        error: {type: StepError, step: 1, module: m, cause: {type: LMError, status: 500}}
        lm_requests: 0                            # optional: how many requests the LM must receive
        requests:                                 # optional: fields each request must carry, in order
          - {model: gpt-4o-mini, temperature: 0.7, max_tokens: 400}   # null: the field must not be sent

Capabilities are open-ended: a case may need one the suite has never heard of (format 2's
``control_flow``, ``agents``...); adapters that do not declare it skip the case, and the suite's
negative test checks that they refuse it (:func:`negative_cases`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

__all__ = ["CAPABILITY_ORDER", "CASES_DIR", "FORMAT_2_CAPABILITIES", "Case", "CaseRun", "load_cases", "name_matches",
           "negative_cases"]

CASES_DIR = Path(str(resources.files("stepbridge.conformance") / "cases"))

#: The capabilities format 2 introduces (docs/format-2.md): adapters may declare them, cases may need them,
#: whether or not this stepbridge's core knows them yet.
FORMAT_2_CAPABILITIES = frozenset({"control_flow", "parallel", "agents", "ensembles", "typed_objects", "xml_adapter"})

#: Capability a case or test is reported under when it needs several (most specific first); capabilities
#: not listed come before these, alphabetically.
CAPABILITY_ORDER = ("agents", "ensembles", "typed_objects", "xml_adapter", "parallel", "control_flow", "dspy_modules",
                    "json_adapter", "tools", "map", "retrieve")


@dataclass(frozen=True)
class CaseRun:
    case: Case
    index: int
    inputs: dict[str, Any]
    outputs: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    lm: dict[str, Any] | None = None
    lm_requests: int | None = None
    requests: list[dict[str, Any]] | None = None

    @property
    def id(self) -> str:
        return f"{self.case.id}-{self.index}"

    def __repr__(self) -> str:
        return f"CaseRun({self.id})"


@dataclass(eq=False)
class Case:
    id: str
    description: str
    tags: tuple[str, ...]
    capabilities: frozenset[str]
    program_data: dict[str, Any]
    path: Path
    native_equivalent_data: dict[str, Any] | None = None
    invalid: dict[str, Any] | None = None
    checked_by: str = "adapter"
    runs: list[CaseRun] = field(default_factory=list)

    @property
    def capability(self) -> str:
        """The capability this case is reported under (``core`` when it needs none)."""
        unknown = sorted(self.capabilities - set(CAPABILITY_ORDER))
        if unknown:
            return unknown[0]
        for cap in CAPABILITY_ORDER:
            if cap in self.capabilities:
                return cap
        return "core"

    @cached_property
    def program(self) -> Any:
        from stepbridge.loader import load_program

        return load_program(self.program_data, base_dir=self.path.parent)

    @cached_property
    def native_program(self) -> Any:
        """What the native adapter runs to produce the reference behaviour."""
        if self.native_equivalent_data is None:
            return self.program
        from stepbridge.loader import load_program

        return load_program(self.native_equivalent_data, base_dir=self.path.parent)

    def __repr__(self) -> str:
        return f"Case({self.id})"


def _case(path: Path) -> Case:
    data = yaml.load(path.read_text(encoding="utf-8"), Loader=_LOADER)  # a safe loader (see _LOADER)
    case = Case(
        id=str(data["id"]),
        description=str(data.get("description", "")),
        tags=tuple(str(t) for t in data.get("tags", [])),
        capabilities=frozenset(data.get("capabilities") or []),
        program_data=data["program"],
        path=path,
        native_equivalent_data=data.get("native_equivalent"),
        invalid=data.get("invalid"),
        checked_by=str(data.get("checked_by", "adapter")),
    )
    if case.checked_by not in ("adapter", "core"):
        raise ValueError(f"{path}: checked_by must be 'adapter' or 'core'")
    for index, raw in enumerate(data.get("runs") or []):
        outputs = raw.get("outputs")
        if outputs == "TBD":
            outputs = None
        requests = raw.get("requests")
        if requests is not None and not (isinstance(requests, list) and all(isinstance(r, dict) for r in requests)):
            raise ValueError(f"{path}: runs[{index}].requests must be a list of field maps")
        case.runs.append(CaseRun(case, index, dict(raw.get("inputs") or {}), outputs, raw.get("error"),
                                 raw.get("lm"), raw.get("lm_requests"), requests))
    return case


#: libyaml's safe loader when it is there (several times faster), else PyYAML's
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_CACHE: list[Case] | None = None


def load_cases(directory: Path | None = None) -> list[Case]:
    """Every case in ``directory`` (default: the suite's own), sorted by file name."""
    global _CACHE
    if directory is None and _CACHE is not None:
        return _CACHE
    cases = [_case(p) for p in sorted((directory or CASES_DIR).glob("*.yaml"))]
    ids = [c.id for c in cases]
    if len(ids) != len(set(ids)):
        raise ValueError(f"duplicate case ids in {directory or CASES_DIR}")
    if directory is None:
        _CACHE = cases
    return cases


def negative_cases(cases: list[Case]) -> dict[str, Case]:
    """For each capability a program can need: a case whose program needs exactly that one (the negative
    test runs it on an adapter that does not declare it). A case whose first run succeeds, then the smallest
    program, wins."""
    found: dict[str, Case] = {}
    for case in cases:
        if case.invalid or not case.runs or case.checked_by != "adapter" or len(case.capabilities) != 1:
            continue
        (cap,) = case.capabilities
        if cap not in found or _preference(case) < _preference(found[cap]):
            found[cap] = case
    return dict(sorted(found.items()))


def _preference(case: Case) -> tuple[bool, int]:
    """A case whose first run succeeds, then the smallest program."""
    return case.runs[0].error is not None, len(json.dumps(case.program_data, sort_keys=True, default=str))


def name_matches(name: str, pattern: str) -> bool:
    """Whether a test name matches an expected-failure pattern: ``*`` and ``?`` are wildcards, brackets are
    literal (so ``test_case[json_*]`` works)."""
    regex = re.escape(pattern).replace(r"\*", ".*").replace(r"\?", ".")
    return re.fullmatch(regex, name) is not None
