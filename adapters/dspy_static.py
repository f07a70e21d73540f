"""Reading a DSPy ``forward`` statically into format-2 steps, branches included.

Tracing (:mod:`stepbridge.adapters.dspy_import`) sees one path per sample; a forward that branches on
what a predictor said (a router) has paths the samples may never take. This reads the source
(:mod:`ast`) of a small, common subset of Python and writes the same program with ``if`` steps:

* ``x = self.p(a=..., b=...)`` (a predictor kept on the module, in a list or dict), ``x.field``;
* values: forward's parameters, constants, f-strings (``$template``), ``len(...)``, comparisons
  (``== != < <= > >= in``, ``not in``), ``and``/``or``/``not``;
* ``[self.p(k=x).field for x in xs]`` and ``acc = []; for x in xs: acc.append(self.p(k=x).field)``
  as ``map`` steps (one call per element, whatever the length);
* ``if``/``elif``/``else`` blocks; ``return self.p(...)``, ``return x`` (a predictor result) and
  ``return dspy.Prediction(k=v, ...)``; docstrings and ``pass``.

Anything else (loops, calls of other functions, methods, augmented assignment, ``try``...) makes
:func:`compile_forward` return ``None`` with the reason: the caller then traces instead. The result
is never trusted on its own: it is verified like a traced conversion (every sample, outputs and
messages), and its branches are reported by which paths the samples took.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Compiled", "Unsupported", "compile_forward"]

_COMPARE = {ast.Eq: "$eq", ast.NotEq: "$ne", ast.Lt: "$lt", ast.LtE: "$le", ast.Gt: "$gt", ast.GtE: "$ge"}


class Unsupported(Exception):
    """A construct outside the subset (the message says which, ``line`` where)."""

    def __init__(self, message: str, line: int | None = None):
        super().__init__(message)
        self.line = line


@dataclass
class Result:
    """A predictor call's result, bound to ``as_`` (fields read as ``$as_.field``)."""

    as_: str
    module: str


@dataclass
class Results:
    """The list of a map step's results (``results[0].field`` reads one element's field)."""

    as_: str
    module: str


@dataclass
class Called:
    """The results of a ``parallel`` step, in the order of its calls (``results[1].field``, or unpacked)."""

    results: list[Result]


@dataclass
class Compiled:
    steps: list[dict[str, Any]]
    returns: list[dict[str, Any]]  # every return mapping, on every path
    calls: list[str] = field(default_factory=list)  # module names in order of appearance
    branches: int = 0
    mapped: list[int] = field(default_factory=list)  # lines of comprehensions / for loops that became map steps


def _escape(value: Any) -> Any:
    if isinstance(value, str) and value.startswith("$"):
        return "$" + value
    return value


class _Compiler:
    def __init__(self, obj: Any, names: dict[int, str], outputs: dict[str, list[str]], offset: int,
                 params: list[str]):
        self.obj = obj
        self.names = names  # id(leaf) -> module name
        self.outputs = outputs  # module name -> its result fields, in order
        self.offset = offset
        self.counts: dict[str, int] = {}
        self.calls: list[str] = []
        self.returns: list[dict[str, Any]] = []
        self.branches = 0
        self.params = params
        self.mapped_lines: list[int] = []
        self.in_condition = False

    def fail(self, what: str, node: ast.AST) -> Unsupported:
        return Unsupported(what, getattr(node, "lineno", 0) + self.offset)

    # -- values ------------------------------------------------------------------------------------
    def leaf(self, node: ast.AST) -> str | None:
        """The module name of ``self.x``, ``self.x[0]``, ``self.x['k']`` when it is a converted predictor."""
        return self.names.get(id(self.resolve(node)))

    def resolve(self, node: ast.AST) -> Any:
        """The object ``self.x``, ``self.x[0]``, ``self.x['k']`` names on the module (attributes and constant
        subscripts only: nothing is called), or ``None``."""
        target: Any = None
        chain: list[Any] = []
        cur = node
        while True:
            if isinstance(cur, ast.Attribute):
                chain.append(("attr", cur.attr))
                cur = cur.value
            elif isinstance(cur, ast.Subscript) and isinstance(cur.slice, ast.Constant):
                chain.append(("item", cur.slice.value))
                cur = cur.value
            else:
                break
        if not (isinstance(cur, ast.Name) and cur.id == "self") or not chain:
            return None
        target = self.obj
        try:
            for kind, key in reversed(chain):
                target = getattr(target, key) if kind == "attr" else target[key]
        except (AttributeError, KeyError, IndexError, TypeError):
            return None
        return target

    def value(self, node: ast.AST, env: dict[str, Any]) -> Any:
        if isinstance(node, ast.Constant) and (node.value is None or isinstance(node.value, str | int | float | bool)):
            return _escape(node.value)
        if isinstance(node, ast.List) and not node.elts:
            return []
        if isinstance(node, ast.Name):
            if node.id not in env:
                raise self.fail(f"name {node.id!r} is not a parameter or an earlier assignment", node)
            bound = env[node.id]
            if isinstance(bound, Result | Results | Called):
                raise self.fail(f"a whole predictor result ({node.id}) used as a value", node)
            return bound
        if isinstance(node, ast.Attribute):
            base = node.value
            index = _int_index(base.slice) if isinstance(base, ast.Subscript) else None
            if (isinstance(base, ast.Subscript) and isinstance(base.value, ast.Name)
                    and isinstance(env.get(base.value.id), Results) and index is not None):
                results = env[base.value.id]
                if node.attr not in self.outputs[results.module]:
                    raise self.fail(f"{node.attr} is not an output of {results.module}", node)
                return {"$index": [f"${results.as_}.{node.attr}", index]}
            if (isinstance(base, ast.Subscript) and isinstance(base.value, ast.Name)
                    and isinstance(env.get(base.value.id), Called) and index is not None):
                called = env[base.value.id].results
                if not -len(called) <= index < len(called):
                    raise self.fail(f"{base.value.id}[{index}] is out of range", node)
                result = called[index]
                if node.attr not in self.outputs[result.module]:
                    raise self.fail(f"{node.attr} is not an output of {result.module}", node)
                return f"${result.as_}.{node.attr}"
            if isinstance(base, ast.Name) and isinstance(env.get(base.id), Result):
                result = env[base.id]
                if node.attr not in self.outputs[result.module]:
                    raise self.fail(f"{base.id}.{node.attr} is not an output of {result.module}", node)
                return f"${result.as_}.{node.attr}"
            if isinstance(base, ast.Call):
                result = self.call(base, env, [])
                if result is None:
                    raise self.fail("a call of something other than a predictor", base)
                raise self.fail("a predictor called inside an expression", node)
            raise self.fail("an attribute of something other than a predictor result", node)
        if isinstance(node, ast.JoinedStr):
            text: list[str] = []
            names: dict[str, Any] = {}
            for part in node.values:
                if isinstance(part, ast.Constant):
                    text.append(str(part.value).replace("{", "{{").replace("}", "}}"))
                elif isinstance(part, ast.FormattedValue) and part.conversion == -1 and part.format_spec is None:
                    ref = self.value(part.value, env)
                    if not (isinstance(ref, str) and ref.startswith("$") and not ref.startswith("$$")):
                        raise self.fail("an f-string part that is not a reference", part)
                    name = f"v{len(names)}"
                    names[name] = ref
                    text.append("{" + name + "}")
                else:
                    raise self.fail("an f-string with a conversion or format spec", part)
            return {"$template": ["".join(text), names]}
        if isinstance(node, ast.Compare) and len(node.ops) == 1:
            left, right = self.value(node.left, env), self.value(node.comparators[0], env)
            op = node.ops[0]
            if type(op) in _COMPARE:
                return {_COMPARE[type(op)]: [left, right]}
            if isinstance(op, ast.In):
                return {"$in": [left, right]}
            if isinstance(op, ast.NotIn):
                return {"$not": {"$in": [left, right]}}
        if isinstance(node, ast.BoolOp):  # only as a condition: Python's `a or b` is a or b, not a bool
            if not self.in_condition:
                raise self.fail("`and`/`or` used as a value (Python returns an operand, an operation a bool)", node)
            return {"$and" if isinstance(node.op, ast.And) else "$or": [self.value(v, env) for v in node.values]}
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            return {"$not": self.value(node.operand, env)}
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "len"
                and len(node.args) == 1 and not node.keywords):
            return {"$len": self.value(node.args[0], env)}
        raise self.fail(f"the expression {type(node).__name__} has no program equivalent here", node)

    def call(self, node: ast.Call, env: dict[str, Any], steps: list[dict[str, Any]]) -> Result | None:
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr in ("__call__", "forward"):
            func = func.value
        module = self.leaf(func)
        if module is None:
            return None
        if node.args or any(k.arg is None for k in node.keywords):
            raise self.fail(f"{module} called with positional or ** arguments", node)
        with_ = {k.arg: self.value(k.value, env) for k in node.keywords if k.arg is not None}
        self.counts[module] = self.counts.get(module, 0) + 1
        as_ = f"{module}_out" if self.counts[module] == 1 else f"{module}_out{self.counts[module]}"
        steps.append({"call": module, "with": with_, "as": as_})
        self.calls.append(module)
        return Result(as_, module)

    # -- statements --------------------------------------------------------------------------------
    def block(self, body: list[ast.stmt], env: dict[str, Any]) -> tuple[list[dict[str, Any]], bool]:
        """The steps of ``body`` (``env`` updated in place) and whether every path through it returns."""
        steps: list[dict[str, Any]] = []
        for stmt in body:
            if isinstance(stmt, ast.Pass) or (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant)):
                continue
            if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
                env[stmt.targets[0].id] = self.expression(stmt.value, env, steps)
            elif (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1
                  and isinstance(stmt.targets[0], ast.Tuple | ast.List)
                  and all(isinstance(t, ast.Name) for t in stmt.targets[0].elts) and isinstance(stmt.value, ast.Call)):
                # a, b = self.parallel([...]): each name is one call's result
                called = self.parallel(stmt.value, env, steps, unpacked=True)
                names = [t.id for t in stmt.targets[0].elts]  # type: ignore[attr-defined]
                if not isinstance(called, Called) or len(called.results) != len(names):
                    raise self.fail("an unpacking of something other than the results of dspy.Parallel", stmt)
                env.update(zip(names, called.results, strict=True))
            elif isinstance(stmt, ast.Return):
                steps.append({"return": self.returned(stmt, env, steps)})
                return steps, True
            elif isinstance(stmt, ast.For) and not stmt.orelse and len(stmt.body) == 1:
                # acc = [] ; for x in xs: acc.append(self.p(...).field)  ->  a map step
                inner = stmt.body[0]
                if not (isinstance(inner, ast.Expr) and isinstance(inner.value, ast.Call)
                        and isinstance(inner.value.func, ast.Attribute) and inner.value.func.attr == "append"
                        and isinstance(inner.value.func.value, ast.Name) and len(inner.value.args) == 1
                        and env.get(inner.value.func.value.id) == []):
                    raise self.fail("a for loop other than appending one predictor field per element", stmt)
                env[inner.value.func.value.id] = self.mapped(inner.value.args[0], stmt.target, stmt.iter, env,
                                                             steps, stmt)
            elif isinstance(stmt, ast.If):
                step, returns = self.if_(stmt, env)
                steps.append(step)
                if returns:
                    return steps, True
            else:
                raise self.fail(f"the statement {type(stmt).__name__}", stmt)
        return steps, False

    def mapped(self, element: ast.AST, target: ast.AST, iterable: ast.AST, env: dict[str, Any],
               steps: list[dict[str, Any]], line_node: ast.AST) -> str:
        """``[self.p(k=...x...).field for x in xs]``: a map step over ``xs``; the list of fields."""
        if not isinstance(target, ast.Name):
            raise self.fail("a loop target that is not a name", target)
        if not (isinstance(element, ast.Attribute) and isinstance(element.value, ast.Call)):
            raise self.fail("a loop whose element is not a predictor result's field", element)
        call = element.value
        module = self.leaf(call.func.value if isinstance(call.func, ast.Attribute) and call.func.attr in (
            "__call__", "forward") else call.func)
        if module is None or call.args or any(k.arg is None for k in call.keywords):
            raise self.fail("a loop element that is not a predictor called with keywords", call)
        if element.attr not in self.outputs[module]:
            raise self.fail(f"{element.attr} is not an output of {module}", element)
        over = self.value(iterable, env)
        item = f"item_{target.id}"
        inner = {**env, target.id: f"${item}"}
        with_ = {k.arg: self.value(k.value, inner) for k in call.keywords if k.arg is not None}
        self.counts[module] = self.counts.get(module, 0) + 1
        as_ = f"{module}_all" if self.counts[module] == 1 else f"{module}_all{self.counts[module]}"
        steps.append({"map": module, "over": over, "item": item, "with": with_, "as": as_})
        self.calls.append(module)
        self.mapped_lines.append(getattr(line_node, "lineno", 0) + self.offset)
        return f"${as_}.{element.attr}"

    def parallel(self, node: ast.Call, env: dict[str, Any], steps: list[dict[str, Any]],
                 unpacked: bool = False) -> Results | Called | None:
        """``self.parallel([(self.p, dspy.Example(k=v).with_inputs("k")), (self.q, {"k": v}), ...])`` (a
        ``dspy.Parallel``): one predictor with the same arguments in every pair is a ``map`` over a list of
        argument objects; otherwise (several predictors, other arguments, or results unpacked into names)
        a ``parallel`` step of one call per pair. Either way the calls run concurrently, results in order."""
        import dspy

        runner = self.resolve(node.func)
        if not isinstance(runner, dspy.Parallel):
            return None
        if not getattr(runner, "access_examples", True) or getattr(runner, "return_failed_examples", False):
            raise self.fail("dspy.Parallel with access_examples=False or return_failed_examples=True", node)
        if len(node.args) == 1 and not node.keywords and isinstance(node.args[0], ast.ListComp) and not unpacked:
            return self.parallel_map(node.args[0], env, steps)
        if len(node.args) != 1 or node.keywords or not isinstance(node.args[0], ast.List):
            raise self.fail("dspy.Parallel called with something other than a list of (module, example) pairs", node)
        calls: list[tuple[str, dict[str, Any]]] = []
        for pair in node.args[0].elts:
            if not (isinstance(pair, ast.Tuple) and len(pair.elts) == 2):
                raise self.fail("a dspy.Parallel item that is not a (module, example) pair", pair)
            module = self.leaf(pair.elts[0])
            if module is None:
                raise self.fail("a dspy.Parallel item whose module is not a converted predictor", pair)
            calls.append((module, self.parallel_arguments(pair.elts[1], env)))
        if not calls:
            raise self.fail("dspy.Parallel over an empty list", node)
        line = getattr(node, "lineno", 0) + self.offset
        if not unpacked and len({m for m, _ in calls}) == 1 and len({tuple(a) for _, a in calls}) == 1:
            module = calls[0][0]
            self.counts[module] = self.counts.get(module, 0) + 1
            as_ = f"{module}_all" if self.counts[module] == 1 else f"{module}_all{self.counts[module]}"
            item = f"item_{as_}"
            steps.append({"map": module, "over": [a for _, a in calls], "item": item,
                          "with": {k: f"${item}.{k}" for k in calls[0][1]}, "as": as_})
            self.calls.append(module)
            self.mapped_lines.append(line)
            return Results(as_, module)
        results, listed = [], []
        for module, args in calls:
            self.counts[module] = self.counts.get(module, 0) + 1
            as_ = f"{module}_out" if self.counts[module] == 1 else f"{module}_out{self.counts[module]}"
            listed.append({"call": module, "with": args, "as": as_})
            results.append(Result(as_, module))
            self.calls.append(module)
        steps.append({"parallel": listed})
        self.mapped_lines.append(line)
        return Called(results)

    def parallel_map(self, comp: ast.ListComp, env: dict[str, Any], steps: list[dict[str, Any]]) -> Results:
        """``self.parallel([(self.p, dspy.Example(k=x).with_inputs("k")) for x in xs])``: a ``map`` over ``xs``."""
        gen = comp.generators
        if len(gen) != 1 or gen[0].ifs or gen[0].is_async or not isinstance(gen[0].target, ast.Name):
            raise self.fail("a dspy.Parallel comprehension with several loops, a filter or an unpacking target", comp)
        pair = comp.elt
        module = self.leaf(pair.elts[0]) if isinstance(pair, ast.Tuple) and len(pair.elts) == 2 else None
        if module is None:
            raise self.fail("a dspy.Parallel comprehension whose item is not (self.<predictor>, example)", comp)
        over = self.value(gen[0].iter, env)
        item = f"item_{gen[0].target.id}"
        args = self.parallel_arguments(pair.elts[1], {**env, gen[0].target.id: f"${item}"})  # type: ignore[attr-defined]
        self.counts[module] = self.counts.get(module, 0) + 1
        as_ = f"{module}_all" if self.counts[module] == 1 else f"{module}_all{self.counts[module]}"
        steps.append({"map": module, "over": over, "item": item, "with": args, "as": as_})
        self.calls.append(module)
        self.mapped_lines.append(getattr(comp, "lineno", 0) + self.offset)
        return Results(as_, module)

    def parallel_arguments(self, example: ast.AST, env: dict[str, Any]) -> dict[str, Any]:
        """The keyword arguments DSPy's Parallel calls a module with: ``example.inputs()`` of a
        ``dspy.Example(...).with_inputs(...)``, or a dict literal with text keys."""
        if isinstance(example, ast.Dict):
            if not all(isinstance(k, ast.Constant) and isinstance(k.value, str) for k in example.keys):
                raise self.fail("a dspy.Parallel argument dict whose keys are not text constants", example)
            return {k.value: self.value(v, env) for k, v in zip(example.keys, example.values, strict=True)}  # type: ignore[union-attr]
        if not (isinstance(example, ast.Call) and isinstance(example.func, ast.Attribute)
                and example.func.attr == "with_inputs"):
            raise self.fail("a dspy.Parallel example without .with_inputs(...) (DSPy raises on it)", example)
        if example.keywords or not all(isinstance(a, ast.Constant) and isinstance(a.value, str)
                                       for a in example.args):
            raise self.fail("with_inputs of something other than names", example)
        keys = [a.value for a in example.args]  # type: ignore[attr-defined]
        made = example.func.value
        if not (isinstance(made, ast.Call) and isinstance(made.func, ast.Attribute) and made.func.attr == "Example"
                and isinstance(made.func.value, ast.Name) and made.func.value.id == "dspy" and not made.args
                and all(k.arg is not None for k in made.keywords)):
            raise self.fail("a dspy.Parallel item other than (self.<predictor>, dspy.Example(k=v, ...))", example)
        fields = {k.arg: k.value for k in made.keywords if k.arg is not None}
        return {k: self.value(fields[k], env) for k in fields if k in keys}

    def expression(self, node: ast.AST, env: dict[str, Any], steps: list[dict[str, Any]]) -> Any:
        if isinstance(node, ast.Call):
            results = self.parallel(node, env, steps)
            if results is not None:
                return results
        if isinstance(node, ast.ListComp):
            gen = node.generators
            if len(gen) != 1 or gen[0].ifs or gen[0].is_async:
                raise self.fail("a comprehension with several loops or a filter", node)
            return self.mapped(node.elt, gen[0].target, gen[0].iter, env, steps, node)
        if isinstance(node, ast.Call):
            result = self.call(node, env, steps)
            if result is None:
                raise self.fail("a call of something other than a predictor", node)
            return result
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Call):
            result = self.call(node.value, env, steps)
            if result is None:
                raise self.fail("a call of something other than a predictor", node)
            if node.attr not in self.outputs[result.module]:
                raise self.fail(f"{node.attr} is not an output of {result.module}", node)
            return f"${result.as_}.{node.attr}"
        return self.value(node, env)

    def returned(self, stmt: ast.Return, env: dict[str, Any], steps: list[dict[str, Any]]) -> dict[str, Any]:
        node = stmt.value
        if node is None:
            raise self.fail("a bare return", stmt)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "Prediction" \
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "dspy":
            if node.args or any(k.arg is None for k in node.keywords):
                raise self.fail("dspy.Prediction with positional or ** arguments", node)
            mapping = {k.arg: self.expression(k.value, env, steps) for k in node.keywords if k.arg is not None}
            if any(isinstance(v, Result) for v in mapping.values()):
                raise self.fail("a whole predictor result as an output", node)
        else:
            value = self.expression(node, env, steps)
            if not isinstance(value, Result):
                raise self.fail("a return of something other than a prediction", node)
            mapping = {k: f"${value.as_}.{k}" for k in self.outputs[value.module]}
        self.returns.append(mapping)
        return mapping

    def if_(self, stmt: ast.If, env: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        self.branches += 1
        self.in_condition = True
        try:
            condition = self.value(stmt.test, env)
        finally:
            self.in_condition = False
        then_env, else_env = dict(env), dict(env)
        then, then_returns = self.block(stmt.body, then_env)
        other, else_returns = self.block(stmt.orelse, else_env) if stmt.orelse else ([], False)
        if then_returns and not else_returns:  # only the path that falls through continues
            env.clear()
            env.update(else_env)
        elif else_returns and not then_returns:
            env.clear()
            env.update(then_env)
        elif not then_returns:  # both fall through: a name bound differently becomes a variable set on both
            for name in set(then_env) | set(else_env):
                a, b = then_env.get(name), else_env.get(name)
                if a is None or b is None:
                    env.pop(name, None)  # bound on one path only: not usable after the if
                elif a == b:
                    env[name] = a
                elif isinstance(a, Result) or isinstance(b, Result):
                    raise self.fail(f"{name} is a whole predictor result bound differently on the two paths", stmt)
                else:
                    var = f"v_{name}"
                    then.append({"set": {var: a}})
                    other.append({"set": {var: b}})
                    env[name] = f"${var}"
        step: dict[str, Any] = {"if": condition, "then": then}
        if other:
            step["else"] = other
        return step, then_returns and else_returns


def _int_index(node: ast.AST) -> int | None:
    """The integer of a constant subscript (``[2]``, ``[-1]``), else ``None``."""
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        inner = _int_index(node.operand)
        return -inner if inner is not None else None
    if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
        return node.value
    return None


def compile_forward(obj: Any, method: str, names: dict[int, str], outputs: dict[str, list[str]]) -> Compiled:
    """The steps of ``type(obj).method`` (see the module docstring), or :class:`Unsupported`."""
    func = getattr(type(obj), method)
    try:
        lines, start = inspect.getsourcelines(func)
        tree = ast.parse(textwrap.dedent("".join(lines)))
    except (OSError, TypeError, SyntaxError) as exc:
        raise Unsupported(f"its source cannot be read ({exc})") from None
    fdef = tree.body[0]
    if not isinstance(fdef, ast.FunctionDef | ast.AsyncFunctionDef):
        raise Unsupported("not a function definition")
    args = fdef.args
    if args.vararg or args.posonlyargs:
        raise Unsupported("forward takes *args or positional-only parameters", start)
    params = [a.arg for a in args.args[1:]] + [a.arg for a in args.kwonlyargs]  # **kwargs: never an input
    compiler = _Compiler(obj, names, outputs, start - 1, params)
    env: dict[str, Any] = {p: f"$inputs.{p}" for p in params}
    body = fdef.body
    if isinstance(fdef, ast.AsyncFunctionDef):
        body = [_unawait(s) for s in body]
    steps, returns = compiler.block(body, env)
    if not returns:
        raise Unsupported("a path through forward does not return", start)
    return Compiled(steps, compiler.returns, compiler.calls, compiler.branches, compiler.mapped_lines)


def _unawait(stmt: ast.stmt) -> ast.stmt:
    """``await self.p.acall(...)`` read as ``self.p(...)`` (aforward's form of a predictor call)."""

    class Strip(ast.NodeTransformer):
        def visit_Await(self, node: ast.Await) -> Any:
            inner = self.visit(node.value)
            if isinstance(inner, ast.Call) and isinstance(inner.func, ast.Attribute) and inner.func.attr in (
                    "acall", "aforward"):
                return ast.copy_location(ast.Call(func=inner.func.value, args=inner.args,
                                                  keywords=inner.keywords), node)
            return inner

    return Strip().visit(stmt)
