"""Write a program in Python and get the same data a file holds.

    b = ProgramBuilder("rag_qa", "question -> answer")
    search = b.retrieve("search", corpus="data/wiki.jsonl", k=3)
    answer = b.chain_of_thought("answer", "context: list[str], question -> answer")
    found = b.call(search, query=b.inputs.question)
    result = b.call(answer, context=found.passages, question=b.inputs.question)
    program = b.returns(answer=result.answer).build()

Attribute access on a result (``found.passages``) gives the reference string ``$found.passages``
(and ``state.a.b`` the path ``$state.a.b``); ``build`` runs the same validation as a file, so a
builder can never make a program a file cannot. Values are written as a file holds them: a string
starting with ``$`` is a reference, ``$$`` escapes a dollar.

Format 2 (``docs/format-2.md``): control flow nests with ``with`` blocks, operations come from
:data:`ops`, and the program is written as ``stepbridge: 2`` as soon as it uses either::

    ctx = b.set(context=[]).context
    with b.loop(max=3) as loop:
        q = b.call(gen, context=ctx, question=b.inputs.question)
        found = b.call(search, query=q.query)
        b.set(context=ops.dedupe(ops.concat(ctx, found.passages)))
        loop.until(ops.ge(ops.len(ctx), 4))
    with b.if_(ops.eq(q.kind, "a")):
        b.returns(answer="A")
    with b.else_():
        b.returns(answer="B")

Declared types (format 2) come from :meth:`~ProgramBuilder.object_type` / :meth:`~ProgramBuilder.enum`, or
from the pydantic models and ``Enum`` classes a DSPy program already has (:meth:`~ProgramBuilder.declare`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .program import Program

__all__ = ["ProgramBuilder", "Ref", "Result", "ops"]


class Ref(str):
    """A reference (``$name.path``) that is also the string a file holds; ``ref.field`` goes one field
    deeper (``ref.at("count")`` for a field named like a ``str`` method)."""

    __slots__ = ()

    def __getattr__(self, field: str) -> Ref:
        if field.startswith("_"):
            raise AttributeError(field)
        return Ref(f"{self}.{field}")

    def at(self, *fields: str) -> Ref:
        return Ref(".".join((self, *fields)))


class Result:
    """A named step result or variable; ``result.field`` is the reference ``$name.field``."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, field: str) -> Ref:
        if field.startswith("_"):
            raise AttributeError(field)
        return Ref(f"${self._name}.{field}")

    def at(self, *fields: str) -> Ref:
        return Ref(".".join((f"${self._name}", *fields)))

    def __str__(self) -> str:
        return f"${self._name}"


class _Ops:
    """Format-2 value operations as builder calls: ``ops.concat(a, b)`` is ``{$concat: [a, b]}``."""

    def __getattr__(self, name: str) -> Any:
        from .operations import OPERATIONS

        op_name = name.rstrip("_")  # ops.and_, ops.or_, ops.not_, ops.in_
        spec = OPERATIONS.get(op_name)
        if spec is None or name.startswith("_"):
            raise AttributeError(f"no operation {name!r} (operations: {', '.join(OPERATIONS)})")
        if op_name == "template":
            def template(text: Any, **fields: Any) -> dict[str, Any]:
                return {"$template": [_value(text), {k: _value(v) for k, v in fields.items()}]}
            return template
        if spec.arity is None:
            return lambda value: {f"${op_name}": _value(value)}
        return lambda *args: {f"${op_name}": [_value(a) for a in args]}


#: The value operations (``ops.concat``, ``ops.len``, ``ops.template(text, **fields)``, ``ops.and_`` ...).
ops: Any = _Ops()


def _value(value: Any) -> Any:
    if isinstance(value, Result):
        return str(value)
    if isinstance(value, Ref):
        return str(value)
    if isinstance(value, list | tuple):
        return [_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _value(v) for k, v in value.items()}
    if callable(value) and not isinstance(value, type):
        method = getattr(value, "__func__", None)
        if method is not None and method.__name__ == "item" and isinstance(value.__self__, ProgramBuilder):
            return _value(value())  # b.item written without the call: it means $item
        name = getattr(value, "__qualname__", type(value).__name__)
        raise TypeError(f"{name} is a function, not a value: call it (e.g. b.item(), b.ref('x')), or pass a "
                        "reference or a literal")
    return value


_escape_literal = _value  # the name format 1 code used


class _Loop:
    """The block of a ``loop`` step: ``until`` sets its stop condition; ``item``/``index`` are references."""

    def __init__(self, spec: dict[str, Any]):
        self._spec = spec

    def until(self, condition: Any) -> None:
        self._spec["until"] = _value(condition)

    @property
    def item(self) -> Ref:
        return Ref(f"${self._spec.get('item', 'item')}")

    @property
    def index(self) -> Ref:
        if "index" not in self._spec:
            raise AttributeError("this loop names no index: loop(..., index='i')")
        return Ref(f"${self._spec['index']}")


class _Switch:
    def __init__(self, builder: ProgramBuilder, step: dict[str, Any]):
        self._builder = builder
        self._step = step

    @contextlib.contextmanager
    def case(self, *values: Any) -> Iterator[None]:
        """A case matching any of ``values`` (literals)."""
        if not values:
            raise ValueError("a case needs at least one value")
        steps: list[dict[str, Any]] = []
        self._step["cases"].append({"when": values[0] if len(values) == 1 else list(values), "steps": steps})
        with self._builder._into(steps):
            yield

    @contextlib.contextmanager
    def default(self) -> Iterator[None]:
        if "default" in self._step:
            raise ValueError("this switch already has a default")
        steps: list[dict[str, Any]] = []
        self._step["default"] = steps
        with self._builder._into(steps):
            yield


class ProgramBuilder:
    """Collects modules and steps; :meth:`build` validates and returns a :class:`Program`.

    ``version`` is 1 or 2; by default a program is format 1 unless it uses format-2 steps or values."""

    def __init__(self, name: str, signature: str | dict[str, Any], *, description: str | None = None,
                 lm: dict[str, Any] | None = None, version: int | None = None):
        self._data: dict[str, Any] = {"stepbridge": version or 1, "name": name, "signature": signature}
        if description:
            self._data["description"] = description
        if lm:
            self._data["lm"] = lm
        self._version = version
        self._modules: dict[str, dict[str, Any]] = {}
        self._steps: list[dict[str, Any]] = []
        self._current: list[dict[str, Any]] = self._steps
        self._in_parallel = False
        self._names: set[str] = {"inputs"}
        self.inputs = Result("inputs")

    # -- types (format 2) ------------------------------------------------------------------------
    def object_type(self, name: str, fields: dict[str, Any], *, description: str | None = None) -> str:
        """Declare an object type: ``fields`` maps names to type strings or ``{type, desc}``."""
        return self._declare(name, _drop_none({"description": description, "fields": fields}))

    def enum(self, name: str, values: list[str], *, description: str | None = None) -> str:
        """Declare an enum of string values."""
        return self._declare(name, _drop_none({"description": description, "enum": list(values)}))

    def declare(self, cls: type) -> str:
        """Declare a pydantic model or ``Enum`` class (and the types it uses) as a DSPy user wrote it."""
        from .named_types import declarations

        for name, spec in declarations(cls).items():
            if self._data.get("types", {}).get(name, spec) != spec:
                raise ValueError(f"type {name!r} already declared differently")
            self._declare(name, spec, replace=True)
        return cls.__name__

    def _declare(self, name: str, spec: dict[str, Any], *, replace: bool = False) -> str:
        types = self._data.setdefault("types", {})
        if name in types and not replace:
            raise ValueError(f"type {name!r} already declared")
        types[name] = spec
        self._data["stepbridge"] = self._version or 2
        return name

    # -- modules ---------------------------------------------------------------------------------
    def module(self, name: str, spec: dict[str, Any]) -> str:
        """Any module kind, written as the file would hold it; returns ``name`` for :meth:`call`."""
        if name in self._modules:
            raise ValueError(f"module {name!r} already defined")
        self._modules[name] = spec
        return name

    def predict(self, name: str, signature: str | dict[str, Any], *, instructions: str | None = None,
                demos: list[dict[str, Any]] | None = None, lm: dict[str, Any] | None = None) -> str:
        """A ``predict`` module (one LM call, like ``dspy.Predict``); returns ``name``."""
        return self.module(name, _drop_none({"type": "predict", "signature": signature, "instructions": instructions,
                                             "demos": demos, "lm": lm}))

    def chain_of_thought(self, name: str, signature: str | dict[str, Any], *, instructions: str | None = None,
                         demos: list[dict[str, Any]] | None = None, lm: dict[str, Any] | None = None) -> str:
        """A ``chain_of_thought`` module (a ``reasoning`` output first); returns ``name``."""
        return self.module(name, _drop_none({"type": "chain_of_thought", "signature": signature,
                                             "instructions": instructions, "demos": demos, "lm": lm}))

    def retrieve(self, name: str, *, corpus: str, k: int = 3, kind: str = "bm25", **options: Any) -> str:
        """A ``retrieve`` module over ``corpus`` (a JSONL file, relative to the program); returns ``name``."""
        return self.module(name, {"type": "retrieve", "retriever": {"kind": kind, "corpus": corpus, **options}, "k": k})

    def tool(self, name: str, tool: str, *, signature: str | dict[str, Any] | None = None,
             side_effects: bool = False) -> str:
        """A registered tool; a program using one whose types need format 2 (``Any``: a bare ``dict`` or
        ``list`` annotation) becomes format 2 unless ``version`` was given."""
        from .registry import tools

        if signature is None and tool in tools.names() and "Any" in str(tools.get(tool).signature.canonical()):
            self._data["stepbridge"] = self._version or 2
        return self.module(name, _drop_none({"type": "tool", "tool": tool, "signature": signature,
                                             "side_effects": side_effects or None}))

    # -- format 2: agents and ensembles (docs/agents-and-ensembles.md) ---------------------------
    def _v2_module(self, name: str, spec: dict[str, Any]) -> str:
        self._data["stepbridge"] = self._version or 2
        return self.module(name, spec)

    def react(self, name: str, signature: str | dict[str, Any], *, tools: list[str],
              instructions: str | None = None, max_iters: int | None = None,
              lm: dict[str, Any] | None = None) -> str:
        """An agent calling registered tools (``dspy.ReAct``); outputs ``trajectory``, ``reasoning`` and the
        signature's."""
        return self._v2_module(name, _drop_none({"type": "react", "signature": signature, "tools": list(tools),
                                                 "instructions": instructions, "max_iters": max_iters, "lm": lm}))

    def best_of_n(self, name: str, module: str, *, n: int, threshold: float, metric: str | None = None,
                  judge: str | None = None, field: str | None = None, fail_count: int | None = None) -> str:
        """Up to ``n`` attempts of ``module``, the best-rewarded kept (``dspy.BestOfN``); the reward is a
        registered ``metric`` or a ``judge`` module's numeric output ``field``."""
        return self._v2_module(name, _ensemble("best_of_n", module, n, threshold, metric, judge, field, fail_count))

    def refine(self, name: str, module: str, *, n: int, threshold: float, metric: str | None = None,
               judge: str | None = None, field: str | None = None, fail_count: int | None = None) -> str:
        """Like :meth:`best_of_n`, with LM advice passed to the next attempt (``dspy.Refine``)."""
        return self._v2_module(name, _ensemble("refine", module, n, threshold, metric, judge, field, fail_count))

    def multi_chain_comparison(self, name: str, signature: str | dict[str, Any], *, m: int | None = None,
                               instructions: str | None = None, lm: dict[str, Any] | None = None) -> str:
        """Compare ``m`` completions (input ``completions``) and answer with a ``rationale``
        (``dspy.MultiChainComparison``)."""
        return self._v2_module(name, _drop_none({"type": "multi_chain_comparison", "signature": signature, "m": m,
                                                 "instructions": instructions, "lm": lm}))

    # -- steps -----------------------------------------------------------------------------------
    def _add(self, step: dict[str, Any], *, control: bool = False) -> None:
        if self._in_parallel and "call" not in step:
            raise ValueError("a parallel block holds only call steps")
        if control:
            self._data["stepbridge"] = self._version or 2
        self._current.append(step)

    @contextlib.contextmanager
    def _into(self, steps: list[dict[str, Any]]) -> Iterator[None]:
        outer, self._current = self._current, steps
        try:
            yield
        finally:
            self._current = outer

    def _result_name(self, module: str, as_: str | None) -> str:
        if as_ is not None:  # an explicit name is kept: format 2 rebinds names (loops, branches)
            self._names.add(as_)
            return as_
        name = module
        n = 2
        while name in self._names:
            name = f"{module}_{n}"
            n += 1
        self._names.add(name)
        return name

    def call(self, module: str, *, as_: str | None = None, **args: Any) -> Result:
        """A step calling ``module`` once; the result stands for its outputs in later steps (``result.answer``)."""
        name = self._result_name(module, as_)
        self._add({"call": module, "with": {k: _value(v) for k, v in args.items()}, "as": name})
        return Result(name)

    def map(self, module: str, over: Any, *, item: str = "item", as_: str | None = None,
            concurrency: int | None = None, **args: Any) -> Result:
        """A step calling ``module`` on each element of ``over`` (:meth:`item` is the element); results are lists."""
        name = self._result_name(module, as_)
        step: dict[str, Any] = {"map": module, "over": _value(over), "item": item,
                                "with": {k: _value(v) for k, v in args.items()}, "as": name}
        if concurrency:
            step["concurrency"] = concurrency
        self._add(step)
        return Result(name)

    def item(self, name: str = "item") -> Result:
        """The current element inside a ``map`` step's arguments (``$item``)."""
        return Result(name)

    def ref(self, name: str, *fields: str) -> Ref:
        """The reference ``$name.field...`` to any bound name."""
        return Ref(".".join((f"${name}", *fields)))

    def set(self, **values: Any) -> _Scope:
        """A ``set`` step (format 2); returns the scope, so ``b.set(ctx=[]).ctx`` is ``$ctx``."""
        if not values:
            raise ValueError("set needs at least one name=value")
        self._add({"set": {k: _value(v) for k, v in values.items()}}, control=True)
        self._names.update(values)
        return _Scope()

    @contextlib.contextmanager
    def if_(self, condition: Any) -> Iterator[None]:
        """An ``if`` step; the block is ``then``. Follow it with :meth:`else_` for an ``else``."""
        then: list[dict[str, Any]] = []
        self._add({"if": _value(condition), "then": then}, control=True)
        with self._into(then):
            yield

    @contextlib.contextmanager
    def else_(self) -> Iterator[None]:
        """The ``else`` of the ``if`` step just before."""
        last = self._current[-1] if self._current else None
        if last is None or "if" not in last or "else" in last:
            raise ValueError("else_() must follow an if_() block (without an else)")
        steps: list[dict[str, Any]] = []
        last["else"] = steps
        with self._into(steps):
            yield

    @contextlib.contextmanager
    def switch(self, value: Any) -> Iterator[_Switch]:
        """A ``switch`` step; add cases with ``sw.case(...)`` and ``sw.default()`` blocks."""
        step: dict[str, Any] = {"switch": _value(value), "cases": []}
        self._add(step, control=True)
        yield _Switch(self, step)

    @contextlib.contextmanager
    def loop(self, *, max: int, over: Any = None, item: str | None = None,
             index: str | None = None) -> Iterator[_Loop]:
        """A ``loop`` step; the block is its steps. ``loop.until(condition)`` sets when it stops."""
        body: list[dict[str, Any]] = []
        spec: dict[str, Any] = {"max": max, "steps": body}
        if over is not None:
            spec["over"] = _value(over)
            spec["item"] = item or "item"
        elif item is not None:
            spec["item"] = item
        if index is not None:
            spec["index"] = index
        self._add({"loop": spec}, control=True)
        with self._into(body):
            yield _Loop(spec)

    @contextlib.contextmanager
    def parallel(self) -> Iterator[None]:
        """A ``parallel`` step: the calls in the block run concurrently."""
        calls: list[dict[str, Any]] = []
        self._add({"parallel": calls}, control=True)
        self._in_parallel = True
        try:
            with self._into(calls):
                yield
        finally:
            self._in_parallel = False

    def returns(self, **outputs: Any) -> ProgramBuilder:
        """The program's outputs (the last step); then :meth:`build`."""
        self._add({"return": {k: _value(v) for k, v in outputs.items()}})
        return self

    def to_dict(self) -> dict[str, Any]:
        """The program as data, unvalidated (format 2 when a step needs it and no ``version`` was given)."""
        data = {**self._data, "modules": dict(self._modules), "steps": list(self._steps)}
        if self._version is None and data["stepbridge"] == 1 and _uses_v2_values(self._steps):
            data["stepbridge"] = 2
        return data

    def build(self, *, base_dir: str | Path | None = None) -> Program:
        """Validate like a file (every issue at once) and return the program."""
        from .validate import validate_data

        return validate_data(self.to_dict(), base_dir=base_dir)


class _Scope:
    """``b.set(...)``'s return value: attribute access gives the variable's reference."""

    def __getattr__(self, name: str) -> Ref:
        if name.startswith("_"):
            raise AttributeError(name)
        return Ref(f"${name}")


def _uses_v2_values(value: Any) -> bool:
    """Operations (a one-key ``$op`` mapping) or references with paths anywhere in the steps."""
    from .operations import OPERATIONS

    if isinstance(value, str):
        return value.startswith("$") and not value.startswith("$$") and value.count(".") > 1
    if isinstance(value, list):
        return any(_uses_v2_values(v) for v in value)
    if isinstance(value, dict):
        if len(value) == 1:
            key = next(iter(value))
            if isinstance(key, str) and key.startswith("$") and key[1:] in OPERATIONS:
                return True
        return any(_uses_v2_values(v) for v in value.values())
    return False


def _drop_none(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if v is not None}


def _ensemble(kind: str, module: str, n: int, threshold: float, metric: str | None, judge: str | None,
              field: str | None, fail_count: int | None) -> dict[str, Any]:
    reward = {"metric": metric} if judge is None else _drop_none({"module": judge, "field": field})
    return _drop_none({"type": kind, "module": module, "n": n, "reward": reward, "threshold": threshold,
                       "fail_count": fail_count})
