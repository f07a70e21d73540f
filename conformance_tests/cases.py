"""The data-driven cases: ``cases/*.yaml`` shipped with the suite.

Each file is one program (inline, with paths relative to the ``cases`` folder) and its runs::

    id: rag
    description: what the case covers
    tags: [retrieve, chain_of_thought, chat]
    capabilities: [retrieve]          # what an adapter must declare to run it
    program: {...}                    # a program file's content
    native_equivalent: {...}         # optional: the program the native adapter runs for comparison
    invalid: {pointers: [...]}        # optional: the program must be refused with these issue pointers
    runs:
      - inputs: {...}
        lm: {model: openai/reference/error-500}   # optional run-time LM override (fault injection)
        outputs: {...}                            # expected outputs, exactly (types included)
        error: {type: StepError, step: 1, module: m, cause: {type: LMError, status: 500}}
        lm_requests: 0                            # optional: how many requests the LM must receive
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

__all__ = ["CAPABILITY_ORDER", "CASES_DIR", "Case", "CaseRun", "load_cases", "name_matches"]

CASES_DIR = Path(str(resources.files("stepbridge.conformance") / "cases"))

#: Capability a case or test is reported under when it needs several (most specific first).
CAPABILITY_ORDER = ("dspy_modules", "parallel", "control_flow", "json_adapter", "tools", "map", "retrieve")


@dataclass(frozen=True)
class CaseRun:
    case: Case
    index: int
    inputs: dict[str, Any]
    outputs: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    lm: dict[str, Any] | None = None
    lm_requests: int | None = None

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
    runs: list[CaseRun] = field(default_factory=list)

    @property
    def capability(self) -> str:
        """The capability this case is reported under (``core`` when it needs none)."""
        for cap in CAPABILITY_ORDER:
            if cap in self.capabilities:
                return cap
        return sorted(self.capabilities)[0] if self.capabilities else "core"

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
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    case = Case(
        id=str(data["id"]),
        description=str(data.get("description", "")),
        tags=tuple(str(t) for t in data.get("tags", [])),
        capabilities=frozenset(data.get("capabilities") or []),
        program_data=data["program"],
        path=path,
        native_equivalent_data=data.get("native_equivalent"),
        invalid=data.get("invalid"),
    )
    for index, raw in enumerate(data.get("runs") or []):
        outputs = raw.get("outputs")
        if outputs == "TBD":
            outputs = None
        case.runs.append(CaseRun(case, index, dict(raw.get("inputs") or {}), outputs, raw.get("error"),
                                 raw.get("lm"), raw.get("lm_requests")))
    return case


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


def name_matches(name: str, pattern: str) -> bool:
    """Whether a test name matches an expected-failure pattern: ``*`` and ``?`` are wildcards, brackets are
    literal (so ``test_case[json_*]`` works)."""
    regex = re.escape(pattern).replace(r"\*", ".*").replace(r"\?", ".")
    return re.fullmatch(regex, name) is not None
