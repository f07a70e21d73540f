"""Write a program in Python and get the same data a file holds.

    b = ProgramBuilder("rag_qa", "question -> answer")
    search = b.retrieve("search", corpus="data/wiki.jsonl", k=3)
    answer = b.chain_of_thought("answer", "context: list[str], question -> answer")
    found = b.call(search, query=b.inputs.question)
    result = b.call(answer, context=found.passages, question=b.inputs.question)
    program = b.returns(answer=result.answer).build()

Attribute access on a result (``found.passages``) gives the reference string ``$found.passages``;
``build`` runs the same validation as a file, so a builder can never make a program a file cannot.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .program import Program

__all__ = ["ProgramBuilder", "Result"]


class Result:
    """A named step result; ``result.field`` is the reference ``$name.field``."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, field: str) -> str:
        if field.startswith("_"):
            raise AttributeError(field)
        return f"${self._name}.{field}"

    def __str__(self) -> str:
        return f"${self._name}"


def _escape_literal(value: Any) -> Any:
    if isinstance(value, Result):
        return str(value)
    return value


class ProgramBuilder:
    """Collects modules and steps; :meth:`build` validates and returns a :class:`Program`."""

    def __init__(self, name: str, signature: str | dict[str, Any], *, description: str | None = None,
                 lm: dict[str, Any] | None = None):
        self._data: dict[str, Any] = {"stepbridge": 1, "name": name, "signature": signature}
        if description:
            self._data["description"] = description
        if lm:
            self._data["lm"] = lm
        self._modules: dict[str, dict[str, Any]] = {}
        self._steps: list[dict[str, Any]] = []
        self._names: set[str] = {"inputs"}
        self.inputs = Result("inputs")

    # -- modules ---------------------------------------------------------------------------------
    def module(self, name: str, spec: dict[str, Any]) -> str:
        if name in self._modules:
            raise ValueError(f"module {name!r} already defined")
        self._modules[name] = spec
        return name

    def predict(self, name: str, signature: str | dict[str, Any], *, instructions: str | None = None,
                demos: list[dict[str, Any]] | None = None, lm: dict[str, Any] | None = None) -> str:
        return self.module(name, _drop_none({"type": "predict", "signature": signature, "instructions": instructions,
                                             "demos": demos, "lm": lm}))

    def chain_of_thought(self, name: str, signature: str | dict[str, Any], *, instructions: str | None = None,
                         demos: list[dict[str, Any]] | None = None, lm: dict[str, Any] | None = None) -> str:
        return self.module(name, _drop_none({"type": "chain_of_thought", "signature": signature,
                                             "instructions": instructions, "demos": demos, "lm": lm}))

    def retrieve(self, name: str, *, corpus: str, k: int = 3, kind: str = "bm25", **options: Any) -> str:
        return self.module(name, {"type": "retrieve", "retriever": {"kind": kind, "corpus": corpus, **options}, "k": k})

    def tool(self, name: str, tool: str, *, signature: str | dict[str, Any] | None = None,
             side_effects: bool = False) -> str:
        return self.module(name, _drop_none({"type": "tool", "tool": tool, "signature": signature,
                                             "side_effects": side_effects or None}))

    # -- steps -----------------------------------------------------------------------------------
    def _result_name(self, module: str, as_: str | None) -> str:
        name = as_ or module
        n = 2
        while name in self._names:
            name = f"{as_ or module}_{n}"
            n += 1
        self._names.add(name)
        return name

    def call(self, module: str, *, as_: str | None = None, **args: Any) -> Result:
        name = self._result_name(module, as_)
        self._steps.append({"call": module, "with": {k: _escape_literal(v) for k, v in args.items()}, "as": name})
        return Result(name)

    def map(self, module: str, over: str, *, item: str = "item", as_: str | None = None,
            concurrency: int | None = None, **args: Any) -> Result:
        name = self._result_name(module, as_)
        step: dict[str, Any] = {"map": module, "over": over, "item": item,
                                "with": {k: _escape_literal(v) for k, v in args.items()}, "as": name}
        if concurrency:
            step["concurrency"] = concurrency
        self._steps.append(step)
        return Result(name)

    def item(self, name: str = "item") -> Result:
        """The current element inside a ``map`` step's arguments (``$item``)."""
        return Result(name)

    def returns(self, **outputs: Any) -> ProgramBuilder:
        self._steps.append({"return": {k: _escape_literal(v) for k, v in outputs.items()}})
        return self

    def to_dict(self) -> dict[str, Any]:
        return {**self._data, "modules": dict(self._modules), "steps": list(self._steps)}

    def build(self, *, base_dir: str | Path | None = None) -> Program:
        """Validate like a file (every issue at once) and return the program."""
        from .validate import validate_data

        return validate_data(self.to_dict(), base_dir=base_dir)


def _drop_none(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if v is not None}
