"""Reading a DSPy ``forward`` statically into format-2 steps: branches, fixed loops with state, retrievers,
tools and value operations.

Tracing (:mod:`stepbridge.adapters.dspy_import`) sees one path per sample; a forward that branches on
what a predictor said (a router) has paths the samples may never take, and a loop's state is computed
by Python the trace cannot see. This reads the source (:mod:`ast`) of a common subset of Python and
writes the same program:

* ``x = self.p(a=..., b=...)`` (a predictor kept on the module, in a list or dict), ``x.field``;
  ``self.retrieve(q)`` (a ``dspy.Retrieve`` whose RM is registered) and ``search(q, k=self.k)`` (a
  registered tool's function) as ``retrieve``/``tool`` steps;
* values: forward's parameters, constants, the module's own plain settings (``self.k``), list literals,
  f-strings and ``str(...)`` (``$template``), ``len(...)``, ``x[0]``/``x["k"]`` (``$index``/``$get``),
  ``a + b`` on two known lists or strings (``$concat``), ``list(dict.fromkeys(x))`` (``$dedupe``),
  one-expression helper functions (inlined), comparisons (``== != < <= > >= in``, ``not in``), ``and``/``or``/``not``;
* ``[self.p(k=x).field for x in xs]`` and ``acc = []; for x in xs: acc.append(self.p(k=x).field)``
  as ``map`` steps (one call per element, whatever the length);
* ``for i in range(N)`` (``N`` a literal or the module's own int setting) as a ``loop`` step; names it
  rebinds or grows (``=``, ``+=``, ``append``, ``extend``) are variables ``set`` before and in it;
  ``if <condition>: ...; break`` (or ``continue``) blocks at the top level of its body: the condition is a
  variable, what follows the ``if`` runs only when it is false, and a break's variable is the ``until``;
* ``for x in xs`` / ``for i, x in enumerate(xs)`` (``xs`` known to be a list) as a ``loop`` over ``xs``, read
  the same way;
* ``x = a if test else b`` as an ``if`` step setting one variable; arithmetic on constants, done at import;
* ``if``/``elif``/``else`` blocks; ``return self.p(...)``, ``return x`` (a predictor result, or a
  ``dspy.Prediction(k=v, ...)`` built before), a bare value, and ``return dspy.Prediction(k=v, ...)``;
  docstrings and ``pass``.

Anything else (``while``, other breaks and continues, calls of other functions, methods, ``try``, ``list(set(...))``...)
raises :class:`Unsupported` with the reason: the caller then traces instead. The result is never
trusted on its own: it is verified like a traced conversion (every sample, outputs and messages), and
its branches are reported by which paths the samples took.
"""

from __future__ import annotations

import ast
import inspect
import math
import operator
import textwrap
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Compiled", "Unsupported", "compile_forward"]

_COMPARE = {ast.Eq: "$eq", ast.NotEq: "$ne", ast.Lt: "$lt", ast.LtE: "$le", ast.Gt: "$gt", ast.GtE: "$ge"}
_ARITHMETIC: dict[type, Any] = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
                                ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod}


def _number(value: Any) -> bool:
    """A number known at import (a constant: references are text, operations mappings; ``True`` is no number)."""
    return type(value) in (int, float)


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
class Fields:
    """A ``dspy.Prediction(k=v, ...)`` forward built itself: its fields' values."""

    fields: dict[str, Any]


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
    loops: list[int] = field(default_factory=list)  # lines of for loops that became loop steps
    as_modules: dict[str, str] = field(default_factory=dict)  # result name -> its module
    whole: list[str] = field(default_factory=list)  # output fields holding a whole prediction (as an object)
    proven: dict[tuple[int, str], str] = field(default_factory=dict)  # (line, kind) -> why every input's paths ran
    over: list[int] = field(default_factory=list)  # lines of for loops over a list (at most MAX_LOOP passes)


def _escape(value: Any) -> Any:
    if isinstance(value, str) and value.startswith("$"):
        return "$" + value
    return value


def _escape_all(value: Any) -> Any:
    if isinstance(value, list):
        return [_escape_all(v) for v in value]
    return _escape(value)


def _infinite(value: Any) -> bool:
    """A float a program cannot hold (``inf``, ``nan``: JSON has no such number, a program file would say null)."""
    if type(value) is list:
        return any(_infinite(v) for v in value)
    return type(value) is float and not math.isfinite(value)


def _plain_constant(value: Any) -> bool:
    """A module setting a program may hold as a literal (no objects, no mappings: their keys may be ``$``)."""
    if type(value) in (str, int, float, bool, type(None)):
        return True
    return type(value) is list and all(_plain_constant(v) for v in value)


def _rooted_at_self(node: ast.AST) -> bool:
    while isinstance(node, ast.Attribute | ast.Subscript):
        if isinstance(node, ast.Subscript) and not isinstance(node.slice, ast.Constant):
            return False
        node = node.value
    return isinstance(node, ast.Name) and node.id == "self"


def _is_range(node: ast.AST) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range"


def _assigned(node: ast.AST) -> list[ast.Name]:
    """The names a statement rebinds or grows (``x = ...``, ``x += ...``, ``x.append(...)``, ``x.extend(...)``)."""
    if isinstance(node, ast.Assign):
        return [t for t in node.targets if isinstance(t, ast.Name)]
    if isinstance(node, ast.AugAssign | ast.AnnAssign) and isinstance(node.target, ast.Name):
        return [node.target]
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("append", "extend")
            and isinstance(node.func.value, ast.Name)):
        return [node.func.value]
    return []


def _mentions_variable(value: Any) -> bool:
    """Whether a value reads a variable (``$v_x``) a later ``set`` may change: it is then bound by a ``set``
    of its own, so it keeps the value it had where forward computed it."""
    if isinstance(value, str):
        return value.startswith("$v_")
    if isinstance(value, list):
        return any(_mentions_variable(v) for v in value)
    if isinstance(value, dict):
        return any(_mentions_variable(v) for v in value.values())
    return False


def _is_result_field(value: Any, as_modules: dict[str, str]) -> bool:
    """``$step.field``: a field of a step's result (rebound per pass, read where it is bound)."""
    return (isinstance(value, str) and value.startswith("$") and not value.startswith("$$") and value.count(".") == 1
            and value[1:].split(".")[0] in as_modules)


#: The str methods with a value operation, and how many arguments each takes.
_STR_METHODS = {"strip": 0, "lower": 0, "upper": 0, "replace": 2, "startswith": 1, "endswith": 1}


class _Compiler:
    def __init__(self, obj: Any, names: dict[int, str], outputs: dict[str, list[str]], offset: int,
                 params: list[str], *, types: dict[str, dict[str, str]] | None = None,
                 tools: dict[int, tuple[str, list[str]]] | None = None, positional: dict[str, str] | None = None,
                 globals_: dict[str, Any] | None = None):
        self.types = types or {}  # module name -> output field -> type string
        self.tools = tools or {}  # id(registered tool function) -> (module name, parameter names)
        self.positional = positional or {}  # module name -> the input a single positional argument is
        self.globals = globals_ or {}  # forward's module globals (functions it calls by name)
        self.loop_index: dict[str, tuple[str, int]] = {}  # loop variable -> (index name, passes)
        self.in_loop = 0
        self.kinds: dict[str, str] = {}  # variable -> list | str | num (what `+` means on it)
        self.owned: set[str] = set()  # names bound to a list forward built itself (safe to extend)
        self.inlining = 0
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
        self.as_modules: dict[str, str] = {}
        self.mapped_as: set[str] = set()
        self.loops: list[int] = []  # lines of for loops that became loop steps
        self.bare: set[str] = set()  # tool modules whose one output 'result' is the function's return value
        self.whole: list[str] = []  # output fields that are whole predictions (returned as objects of fields)
        self.source_names: set[str] = set()  # every name forward's source binds or reads (variables stay apart)
        self.made: set[str] = set()  # the compiler's own variables
        # (line, construct kind, condition, depth) of tests inside loops, proven when they read only the pass
        # number and stand in no `if` of the loop's body (depth: how many paths of tests they are inside)
        self.pending: list[tuple[int, str, Any, int]] = []
        self.depth = 0
        self.proven: dict[tuple[int, str], str] = {}  # (line, construct kind) -> why every input takes its paths
        self.over_lines: list[int] = []  # lines of for loops over a list that became loop steps
        self.lists: dict[str, bool] = {}  # `$inputs.x` -> whether x is a list on every sample (the input's type)
        self.strs: set[str] = set()  # `$inputs.x` of the inputs that are strings on every sample

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
            if _infinite(node.value):
                raise self.fail(f"{node.value} is not a finite number (a program holds JSON numbers only)", node)
            return _escape(node.value)
        if isinstance(node, ast.List) and not any(isinstance(e, ast.Starred) for e in node.elts):
            items = [self.value(e, env) for e in node.elts]
            if any(isinstance(i, Result | Results | Fields | Called) for i in items):
                raise self.fail("a whole predictor result inside a list", node)
            return items
        if isinstance(node, ast.Name):
            if node.id not in env:
                raise self.fail(f"name {node.id!r} is not a parameter or an earlier assignment", node)
            bound = env[node.id]
            if isinstance(bound, Result | Results | Fields | Called):
                raise self.fail(f"a whole predictor result ({node.id}) used as a value", node)
            return bound
        if isinstance(node, ast.Attribute | ast.Subscript) and _rooted_at_self(node):
            setting = self.resolve(node)  # the module's own setting, fixed at import
            if _infinite(setting):
                raise self.fail(f"a setting that is not a finite number ({setting}: a program holds JSON numbers "
                                "only)", node)
            if _plain_constant(setting):
                return _escape_all(setting)
            raise self.fail("an attribute of the module that is not a plain constant setting", node)
        if isinstance(node, ast.Attribute):
            base = node.value
            index = _int_index(base.slice) if isinstance(base, ast.Subscript) else None
            if (isinstance(base, ast.Subscript) and isinstance(base.value, ast.Name)
                    and isinstance(env.get(base.value.id), Results) and index is not None):
                results = env[base.value.id]
                if node.attr not in self.outputs[results.module]:
                    raise self.fail(f"{node.attr} is not an output of {results.module}", node)
                return {"$index": [f"${results.as_}.{node.attr}", index]}
            if isinstance(base, ast.Name) and isinstance(env.get(base.id), Fields):
                built = env[base.id].fields
                if node.attr not in built:
                    raise self.fail(f"{base.id}.{node.attr} is not a field of the prediction built here", node)
                return built[node.attr]
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
                    if not (isinstance(ref, str) and ref.startswith("$") and not ref.startswith("$$")) and not (
                            isinstance(ref, dict) and self.kind(ref) == "str"):  # text an operation built: as is
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
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
            return self.arithmetic(node.op, 0, self.value(node.operand, env), node)
        if isinstance(node, ast.BinOp) and type(node.op) in _ARITHMETIC:
            left, right = self.value(node.left, env), self.value(node.right, env)
            if (_number(left) and _number(right)) or not isinstance(node.op, ast.Add):  # of constants (the
                return self.arithmetic(node.op, left, right, node)  # module's settings are fixed at import)
            return self.plus(left, right, node)  # `+` of lists or texts: $concat
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "str"
                and len(node.args) == 1 and not node.keywords and "str" not in env
                and self.globals.get("str", str) is str):  # the builtin: str() of JSON data, as $template does
            return {"$template": ["{v0}", {"v0": self.value(node.args[0], env)}]}
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "len"
                and len(node.args) == 1 and not node.keywords and "len" not in env
                and self.globals.get("len", len) is len):  # the builtin, not a shadowing name
            return {"$len": self.value(node.args[0], env)}
        if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) \
                and type(node.slice.value) is int:
            return {"$index": [self.value(node.value, env), node.slice.value]}
        if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) \
                and type(node.slice.value) is str:  # a key of a mapping (messages[0]["content"])
            return {"$get": [self.value(node.value, env), _escape(node.slice.value)]}
        if isinstance(node, ast.Call) and not node.keywords and len(node.args) == 1 \
                and isinstance(node.func, ast.Name) and node.func.id == "list" \
                and self.globals.get("list", list) is list and "list" not in env:
            inner = node.args[0]
            if (isinstance(inner, ast.Call) and isinstance(inner.func, ast.Attribute) and inner.func.attr == "fromkeys"
                    and isinstance(inner.func.value, ast.Name) and inner.func.value.id == "dict"
                    and self.globals.get("dict", dict) is dict and "dict" not in env
                    and len(inner.args) == 1 and not inner.keywords):
                operand = self.value(inner.args[0], env)
                if self.kind(operand) != "list":
                    raise self.fail("list(dict.fromkeys(x)) of something not known to be a list", node)
                return {"$dedupe": operand}
            if isinstance(inner, ast.Call) and isinstance(inner.func, ast.Name) and inner.func.id == "set":
                raise self.fail("list(set(...)): its order is Python's hash order, which no program reproduces", node)
            operand = self.value(inner, env)
            if self.kind(operand) != "list":
                raise self.fail("list(x) of something not known to be a list", node)
            return {"$concat": [operand, []]}
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("join", "split")
                and len(node.args) == 1 and not node.keywords):
            return self.text_method(node, env)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in _STR_METHODS:
            return self.str_method(node, env)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            return self.inline(node, env)
        raise self.fail(f"the expression {type(node).__name__} has no program equivalent here", node)

    def str_method(self, node: ast.Call, env: dict[str, Any]) -> Any:
        """``text.strip()``, ``.lower()``, ``.upper()``, ``.replace(old, new)``, ``.startswith(p)``,
        ``.endswith(s)`` on a known string, as Python's str methods are: ``$strip`` ... ``$endswith``. The forms
        the operations do not have (``strip("xy")``, a ``replace`` count, a tuple of prefixes, keywords) are
        refused: the program would mean something else."""
        func = node.func
        assert isinstance(func, ast.Attribute)
        method = func.attr
        count = _STR_METHODS[method]
        if node.keywords or len(node.args) != count or any(isinstance(a, ast.Starred) for a in node.args):
            shown = {0: "no arguments", 1: "one argument", 2: "two arguments"}[count]
            raise self.fail(f"str.{method} with other than {shown} (only {method}({', '.join(['x'] * count)}) has "
                            "a program equivalent)", node)
        text = self.value(func.value, env)
        if self.kind(text) != "str":
            raise self.fail(f".{method}() of something not known to be a string", node)
        if any(isinstance(a, ast.Tuple) for a in node.args):
            raise self.fail(f"str.{method} with a tuple (one string only: test each with `or`)", node)
        args = [self.value(a, env) for a in node.args]
        for arg, given in zip(args, node.args, strict=True):
            if self.kind(arg) != "str":
                raise self.fail(f"str.{method} with an argument not known to be a string", given)
        return {f"${method}": text if not args else [text, *args]}

    def text_method(self, node: ast.Call, env: dict[str, Any]) -> Any:
        """``"sep".join(xs)`` (``$join``, a known list) and ``text.split("sep")`` (``$split``, a known string and
        a non-empty literal separator: ``split()`` without one splits on runs of whitespace)."""
        func = node.func
        assert isinstance(func, ast.Attribute)
        if func.attr == "join":
            if not (isinstance(func.value, ast.Constant) and isinstance(func.value.value, str)):
                raise self.fail("join on something other than a literal separator", node)
            items = self.value(node.args[0], env)
            if self.kind(items) != "list":
                raise self.fail("join of something not known to be a list", node)
            return {"$join": [items, _escape(func.value.value)]}
        sep = node.args[0]
        if not (isinstance(sep, ast.Constant) and isinstance(sep.value, str) and sep.value):
            raise self.fail("split with other than a non-empty literal separator", node)
        text = self.value(func.value, env)
        if self.kind(text) != "str":
            raise self.fail("split of something not known to be a string", node)
        return {"$split": [text, _escape(sep.value)]}

    def arithmetic(self, op: ast.operator | ast.unaryop, left: Any, right: Any, node: ast.AST) -> Any:
        """Arithmetic on two numbers known at import (``self.num_hops - 1``, ``-1``), done now as Python does it."""
        if not (_number(left) and _number(right)):
            raise self.fail("arithmetic on a value not known at import (only constants and the module's own "
                            "settings are computed)", node)
        if isinstance(op, ast.UAdd | ast.USub):
            return right if isinstance(op, ast.UAdd) else -right
        if isinstance(op, ast.FloorDiv | ast.Mod) and right == 0:
            raise self.fail("a division by zero", node)
        result = _ARITHMETIC[type(op)](left, right)
        if _infinite(result):
            raise self.fail(f"arithmetic whose result is not a finite number ({result}: a program holds JSON "
                            "numbers only)", node)
        if not (isinstance(result, float) or abs(result) <= 2**63 - 1):
            raise self.fail("arithmetic whose result does not fit in 64 bits", node)
        return result

    def plus(self, left: Any, right: Any, node: ast.AST) -> Any:
        """``left + right``: ``$concat`` of two lists or two strings (numbers, or kinds not known, refused)."""
        if {self.kind(left), self.kind(right)} in ({"list"}, {"str"}):
            return {"$concat": [left, right]}
        raise self.fail("`+` on values whose kinds are not both known lists or both known strings", node)

    def kind(self, value: Any) -> str | None:
        """``list``, ``str`` or ``num`` when the value's kind is known statically (what ``+`` means)."""
        if isinstance(value, list):
            return "list"
        if isinstance(value, bool):
            return None
        if isinstance(value, str):
            if not value.startswith("$") or value.startswith("$$"):
                return "str"
            name, _, fld = value[1:].partition(".")
            if not fld:
                return self.kinds.get(name)
            if name == "inputs" and value in self.strs:
                return "str"
            module = self.as_modules.get(name)
            ftype = self.types.get(module or "", {}).get(fld, "")
            if name in self.mapped_as:
                return "list"
            return "list" if ftype.startswith("list[") else "str" if ftype == "str" else None
        if isinstance(value, int | float):
            return "num"
        if isinstance(value, dict) and len(value) == 1:
            op, args = next(iter(value.items()))
            if op in ("$dedupe", "$split"):
                return "list"
            if op in ("$template", "$join", "$strip", "$lower", "$upper", "$replace"):
                return "str"
            if op == "$concat" and isinstance(args, list) and args:
                return self.kind(args[0])
        return None

    def inline(self, node: ast.Call, env: dict[str, Any]) -> Any:
        """A call of a plain Python function of forward's module whose body is one ``return <expr>``:
        its expression, with the parameters bound to the arguments (nothing else is run or guessed)."""
        name = node.func.id if isinstance(node.func, ast.Name) else ""
        func = self.globals.get(name) if name not in env else None  # a local name is no module function
        if not inspect.isfunction(func) or self.inlining >= 8:
            raise self.fail("a call of something other than a predictor or a one-expression function", node)
        try:
            lines, _ = inspect.getsourcelines(func)
            fdef = ast.parse(textwrap.dedent("".join(lines))).body[0]
            bound = inspect.signature(func).bind(*[object()] * len(node.args),
                                                 **{k.arg: object() for k in node.keywords if k.arg})
        except (OSError, TypeError, SyntaxError, IndexError):
            raise self.fail(f"{name}: its source cannot be read or its arguments do not bind", node) from None
        body = [b for b in getattr(fdef, "body", [])
                if not (isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant))]
        if not (isinstance(fdef, ast.FunctionDef) and len(body) == 1 and isinstance(body[0], ast.Return)
                and body[0].value is not None and not fdef.args.vararg and not fdef.args.kwarg):
            raise self.fail(f"{name} is not a function of one `return <expression>`", node)
        if func.__code__.co_freevars:
            raise self.fail(f"{name} is a closure", node)
        values = [self.value(a, env) for a in node.args]
        kw = {k.arg: self.value(k.value, env) for k in node.keywords if k.arg}
        params = list(inspect.signature(func).parameters)
        local = {p: values[i] for i, p in enumerate(params[:len(values)])}
        local.update(kw)
        if set(bound.arguments) != set(params):
            raise self.fail(f"{func.__name__} called without every parameter (defaults are not read)", node)
        saved = (self.globals, self.offset)
        self.globals = func.__globals__
        self.inlining += 1
        try:
            return self.value(body[0].value, local)
        finally:
            self.globals, self.offset = saved
            self.inlining -= 1

    def call(self, node: ast.Call, env: dict[str, Any], steps: list[dict[str, Any]]) -> Result | None:
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr in ("__call__", "forward"):
            func = func.value
        if isinstance(func, ast.Name):  # a registered tool's function, called by forward itself
            if func.id in env:
                raise self.fail(f"a call of the local name {func.id}", node)
            target = self.globals.get(func.id)
            known = self.tools.get(id(inspect.unwrap(target))) if callable(target) else None
            if known is None:
                return None
            module, params = known
            if self.outputs.get(module) == ["result"]:
                self.bare.add(module)
            if any(k.arg is None for k in node.keywords) or len(node.args) > len(params):
                raise self.fail(f"{func.id} called with ** or too many arguments", node)
            with_ = {params[i]: self.argument(a, env, steps) for i, a in enumerate(node.args)}
            with_.update({k.arg: self.argument(k.value, env, steps) for k in node.keywords if k.arg is not None})
            return self.emit(module, with_, steps)
        if isinstance(func, ast.Subscript) and isinstance(func.slice, ast.Name) and func.slice.id in self.loop_index:
            return self.indexed(node, func, env, steps)
        leaf = self.leaf(func)
        if leaf is None:
            return None
        module = leaf
        positional = self.positional.get(module)
        if any(k.arg is None for k in node.keywords) or (node.args and (positional is None or len(node.args) > 1)):
            raise self.fail(f"{module} called with positional or ** arguments", node)
        with_ = {k.arg: self.argument(k.value, env, steps) for k in node.keywords if k.arg is not None}
        if node.args:
            with_[positional] = self.argument(node.args[0], env, steps)  # type: ignore[index]
        if positional is not None and set(with_) != {positional}:
            raise self.fail(f"{module} called with arguments other than {positional}", node)
        return self.emit(module, with_, steps)

    def argument(self, node: ast.AST, env: dict[str, Any], steps: list[dict[str, Any]]) -> Any:
        """A call's argument: a value, or ``a if test else b`` (an ``if`` step before the call, as Python
        evaluates arguments before calling)."""
        return self.choice(node, env, steps) if isinstance(node, ast.IfExp) else self.value(node, env)

    def emit(self, module: str, with_: dict[str, Any], steps: list[dict[str, Any]]) -> Result:
        self.counts[module] = self.counts.get(module, 0) + 1
        as_ = f"{module}_out" if self.counts[module] == 1 else f"{module}_out{self.counts[module]}"
        steps.append({"call": module, "with": with_, "as": as_})
        self.calls.append(module)
        self.as_modules[as_] = module
        return Result(as_, module)

    def indexed(self, node: ast.Call, func: ast.Subscript, env: dict[str, Any], steps: list[dict[str, Any]]) -> Result:
        """``self.stages[i](...)`` with ``i`` a loop's variable: a ``switch`` on the pass number, one case
        per predictor of the list (the last as the default), all bound to one name."""
        index, passes = self.loop_index[func.slice.id]  # type: ignore[attr-defined]
        container = self.resolve(func.value)
        try:
            modules = [self.names.get(id(container[i])) for i in range(passes)]
        except (TypeError, IndexError, KeyError):
            raise self.fail("a predictor list indexed by the loop variable is shorter than the loop", node) from None
        if container is None or not all(modules) or node.args or any(k.arg is None for k in node.keywords):
            raise self.fail("a call of a list element that is not a converted predictor, with keywords", node)
        if len({tuple(self.outputs[m]) for m in modules}) != 1:  # type: ignore[index]
            raise self.fail("the predictors of the list have different outputs", node)
        if passes == 1:
            return self.emit(str(modules[0]), {k.arg: self.value(k.value, env) for k in node.keywords if k.arg}, steps)
        as_ = f"{modules[0]}_pass"
        cases = []
        for i, module in enumerate(modules):
            with_ = {k.arg: self.value(k.value, env) for k in node.keywords if k.arg is not None}
            cases.append({"when": i, "steps": [{"call": module, "with": with_, "as": as_}]})
            self.calls.append(module)  # type: ignore[arg-type]
            self.as_modules[as_] = module  # type: ignore[assignment]
        step: dict[str, Any] = {"switch": f"${index}", "cases": cases[:-1] or cases}
        if len(cases) > 1:
            step["default"] = cases[-1]["steps"]
        steps.append(step)
        return Result(as_, modules[0])  # type: ignore[arg-type]

    # -- statements --------------------------------------------------------------------------------
    def block(self, body: list[ast.stmt], env: dict[str, Any]) -> tuple[list[dict[str, Any]], bool]:
        """The steps of ``body`` (``env`` updated in place) and whether every path through it returns."""
        steps: list[dict[str, Any]] = []
        for stmt in body:
            if isinstance(stmt, ast.Pass) or (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant)):
                continue
            if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
                self.assign(stmt.targets[0].id, self.expression(stmt.value, env, steps), env, steps, stmt.value)
            elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
                self.assign(stmt.target.id, self.expression(stmt.value, env, steps), env, steps, stmt.value)
            elif isinstance(stmt, ast.AugAssign) and isinstance(stmt.target, ast.Name) and isinstance(stmt.op, ast.Add):
                if stmt.target.id not in env:
                    raise self.fail(f"{stmt.target.id} is not bound before +=", stmt)
                right = self.expression(stmt.value, env, steps)
                if isinstance(right, Result | Results | Fields | Called):
                    raise self.fail("a whole predictor result added to a value", stmt)
                self.assign(stmt.target.id, self.plus(env[stmt.target.id], right, stmt), env, steps, None)
            elif (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call)
                  and isinstance(stmt.value.func, ast.Attribute) and stmt.value.func.attr in ("append", "extend")
                  and isinstance(stmt.value.func.value, ast.Name) and len(stmt.value.args) == 1
                  and not stmt.value.keywords):
                name = stmt.value.func.value.id
                if name not in self.owned or self.kind(env.get(name)) != "list":
                    raise self.fail(f"{name}.{stmt.value.func.attr}(...) mutates a list forward did not build itself "
                                    "(another name may share it)", stmt)
                if stmt.value.func.attr == "append" and isinstance(stmt.value.args[0], ast.Name):
                    self.owned.discard(stmt.value.args[0].id)  # now inside another list: mutating it changes both
                added = self.expression(stmt.value.args[0], env, steps)
                if isinstance(added, Result | Results | Fields | Called):
                    raise self.fail(f"a whole predictor result added to {name}", stmt)
                if stmt.value.func.attr == "extend" and self.kind(added) != "list":
                    raise self.fail(f"{name}.extend of something not known to be a list", stmt)
                grown_value = {"$concat": [env[name], added if stmt.value.func.attr == "extend" else [added]]}
                self.assign(name, grown_value, env, steps, None)
            elif (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1
                  and isinstance(stmt.targets[0], ast.Tuple | ast.List)
                  and all(isinstance(t, ast.Name) for t in stmt.targets[0].elts) and isinstance(stmt.value, ast.Call)):
                # a, b = self.parallel([...]): each name is one call's result
                called = self.parallel(stmt.value, env, steps, unpacked=True)
                names = [t.id for t in stmt.targets[0].elts]  # type: ignore[attr-defined]
                if not isinstance(called, Called) or len(called.results) != len(names):
                    raise self.fail("an unpacking of something other than the results of dspy.Parallel", stmt)
                for target, result in zip(names, called.results, strict=True):
                    self.assign(target, result, env, steps, None)
            elif isinstance(stmt, ast.Return):
                steps.append({"return": self.returned(stmt, env, steps)})
                return steps, True
            elif isinstance(stmt, ast.For) and not _is_range(stmt.iter) and _appends_a_field(stmt, env):
                # acc = [] ; for x in xs: acc.append(self.p(...).field)  ->  a map step (concurrent calls)
                inner = stmt.body[0].value  # type: ignore[attr-defined]
                env[inner.func.value.id] = self.mapped(inner.args[0], stmt.target, stmt.iter, env, steps, stmt)
            elif isinstance(stmt, ast.For):
                steps += self.loop(stmt, env)
            elif isinstance(stmt, ast.If):
                step, returns = self.if_(stmt, env)
                steps.append(step)
                if returns:
                    return steps, True
            else:
                raise self.fail(f"the statement {type(stmt).__name__}", stmt)
        return steps, False

    def assign(self, name: str, value: Any, env: dict[str, Any], steps: list[dict[str, Any]],
               node: ast.AST | None) -> None:
        """Bind ``name``. A variable (state a loop updates, a list that grows) is a ``set`` step; so is any
        computed value inside a loop (an expression left inline would read later values of its parts)."""
        if isinstance(node, ast.Name):  # `b = a`: one list under two names, mutating one would change both
            self.owned.discard(node.id)
        fresh = not isinstance(node, ast.Name) and (isinstance(value, list) or (
            isinstance(value, dict) and len(value) == 1 and next(iter(value)) in ("$concat", "$dedupe")))
        computed = not isinstance(value, Result | Results | Fields | Called) \
            and not _is_result_field(value, self.as_modules)
        if env.get(name) == f"$v_{name}" or (computed and (self.in_loop or _mentions_variable(value))):
            kind = self.kind(value)
            if self.kinds.get(f"v_{name}", kind) != kind:
                raise Unsupported(f"{name} holds values of different kinds", None)
            steps.append({"set": {f"v_{name}": value}})
            self.kinds[f"v_{name}"] = kind  # type: ignore[assignment]
            env[name] = f"$v_{name}"
        else:
            env[name] = value
        if fresh:
            self.owned.add(name)
        else:
            self.owned.discard(name)

    def loop(self, stmt: ast.For, env: dict[str, Any]) -> list[dict[str, Any]]:
        """``for i in range(N)`` (``N`` a literal or the module's own integer setting): a ``loop`` step of
        ``N`` passes, ``i`` its index; ``for x in xs`` / ``for i, x in enumerate(xs)`` (``xs`` known to be a
        list): a ``loop`` over ``xs``. Names the body rebinds become variables (``set`` before and in it)."""
        from stepbridge.program import MAX_LOOP

        if stmt.orelse:
            raise self.fail("a for loop with an else", stmt)
        for inner in ast.walk(stmt):
            if isinstance(inner, ast.Return | ast.Raise | ast.Try | ast.While | ast.Yield | ast.Global | ast.Nonlocal):
                raise self.fail(f"a {type(inner).__name__.lower()} inside a for loop", inner)
        at = _break_at(stmt.body)
        if isinstance(at, ast.AST):
            raise self.fail("a break or continue other than one ending an `if <condition>:` block (without else) at "
                            "the top level of the loop's body", at)
        rebound = {t.id for inner in ast.walk(ast.Module(body=stmt.body, type_ignores=[]))
                   for t in _assigned(inner)}
        spec: dict[str, Any] = {}
        index_name, item_name = self.loop_names(stmt, rebound, env)
        if _is_range(stmt.iter):
            passes: int | None = self.range_count(stmt.iter)
            spec["max"] = passes
        else:  # over a list: evaluated once, before the first pass, as Python's iterator is
            iterable = stmt.iter.args[0] if index_name is not None else stmt.iter  # type: ignore[attr-defined]
            over = self.value(iterable, env)
            if self.kind(over) != "list" and not (isinstance(over, str) and self.lists.get(over)):
                raise self.fail("a for loop over something not known to be a list", stmt.iter)
            passes = None
            spec.update({"max": MAX_LOOP, "over": over, "item": f"item_{item_name}"})
        steps: list[dict[str, Any]] = []
        for name in sorted(rebound & set(env)):
            if env[name] != f"$v_{name}":
                if isinstance(env[name], Result | Results | Fields | Called):
                    raise self.fail(f"{name} is a whole predictor result rebound in a loop", stmt)
                steps.append({"set": {f"v_{name}": env[name]}})
                self.kinds[f"v_{name}"] = self.kind(env[name])  # type: ignore[assignment]
                env[name] = f"$v_{name}"
        bound_before = set(env)
        loop_vars = {n: f"{prefix}_{n}" for n, prefix in ((index_name, "pass"), (item_name, "item")) if n is not None}
        for name, var in loop_vars.items():
            if name in env or var in self.as_modules:
                raise self.fail(f"the loop variable {name} is bound elsewhere", stmt)
            env[name] = f"${var}"
        if index_name is not None:
            spec["index"] = loop_vars[index_name]
            if passes is not None:
                self.loop_index[index_name] = (loop_vars[index_name], passes)
        self.in_loop += 1
        pending, depth = len(self.pending), self.depth
        try:
            if at is None:
                body, returns = self.block(stmt.body, env)
            else:  # A; if c: S; break|continue; B  ->  A; set jump = c; if jump: S; if not jump: B
                kinds = [isinstance(stmt.body[i].body[-1], ast.Break) for i in at]  # type: ignore[attr-defined]
                brk = self.fresh("v_break") if any(kinds) else None  # (until brk: no pass after a break)
                body, returns = self.jumps(stmt.body, at, env, brk), False
                if brk is not None and not kinds[0]:  # a continue may pass over every break: false until one
                    body.insert(0, {"set": {brk: False}})
                if brk is not None:
                    spec["until"] = f"${brk}"
        finally:
            self.in_loop -= 1
            self.loop_index.pop(index_name or "", None)
            for name in loop_vars:
                env.pop(name, None)
        if passes is None:  # a list may be empty: what the body bound first is not bound after it
            for name in set(env) - bound_before:
                env.pop(name)
        if returns:
            raise self.fail("a return inside a for loop", stmt)
        if not body:
            raise self.fail("a for loop that does nothing", stmt)
        line = getattr(stmt, "lineno", 0) + self.offset
        self.loops.append(line)
        if passes is not None:
            self.prove(line, loop_vars.get(index_name or "", ""), passes, self.pending[pending:], depth)
        else:
            self.over_lines.append(line)
        del self.pending[pending:]
        spec["steps"] = body
        return [*steps, {"loop": spec}]

    def loop_names(self, stmt: ast.For, rebound: set[str], env: dict[str, Any]) -> tuple[str | None, str | None]:
        """(index name, item name) of ``for i in range(N)``, ``for x in xs`` or ``for i, x in enumerate(xs)``."""
        target, it = stmt.target, stmt.iter
        if _is_range(it):
            if not isinstance(target, ast.Name):
                raise self.fail("a range loop whose target is not a name", stmt)
            return target.id, None
        iterable: ast.AST = it
        if (isinstance(it, ast.Call) and isinstance(it.func, ast.Name) and it.func.id == "enumerate"
                and "enumerate" not in env and self.globals.get("enumerate", enumerate) is enumerate):
            if len(it.args) != 1 or it.keywords:
                raise self.fail("enumerate() with other than one argument", it)
            if not (isinstance(target, ast.Tuple) and len(target.elts) == 2
                    and all(isinstance(e, ast.Name) for e in target.elts)):
                raise self.fail("a loop over enumerate() whose target is not (index, item)", stmt)
            iterable = it.args[0]
            names = [e.id for e in target.elts]  # type: ignore[attr-defined]
            index, item = names[0], names[1]
        elif isinstance(target, ast.Name):
            index, item = None, target.id
        else:
            raise self.fail("a for loop whose target is not a name, or (index, item) of enumerate()", stmt)
        if isinstance(iterable, ast.Name) and iterable.id in rebound:
            raise self.fail(f"a loop over {iterable.id}, which its body changes (Python would see the change)", stmt)
        return index, item

    def jumps(self, body: list[ast.stmt], at: list[int], env: dict[str, Any], brk: str | None) -> list[dict[str, Any]]:
        """The steps of a loop's ``body`` whose top-level statements ``at`` are ``if c: S; break|continue``: the
        first becomes ``set jump = c; if jump: S; if not jump: <the rest, read the same way>``."""
        k = at[0]
        steps, _ = self.block(body[:k], env)
        jump = body[k]
        assert isinstance(jump, ast.If)
        breaks = isinstance(jump.body[-1], ast.Break)
        test = self.condition(jump.test, env)
        var = brk if breaks and brk is not None else self.fresh("v_skip")
        steps.append({"set": {var: test}})
        self.pending.append((getattr(jump, "lineno", 0) + self.offset, "break" if breaks else "continue", test,
                             self.depth))
        before, changed = dict(env), set()
        rest_at = [i - k - 1 for i in at[1:]]
        for block, when, sub in ((jump.body[:-1], f"${var}", []), (body[k + 1:], {"$not": f"${var}"}, rest_at)):
            block_env = dict(before)
            inner = self.jumps(block, sub, block_env, brk) if sub else self.block(block, block_env)[0]
            if inner:
                steps.append({"if": when, "then": inner})
            changed |= {n for n in set(before) | set(block_env) if before.get(n) != block_env.get(n)}
        for name in changed:  # bound on one path of the pass only: not known after it
            env.pop(name, None)
        return steps

    def prove(self, line: int, index: str, passes: int, tests: list[tuple[int, str, Any, int]], depth: int) -> None:
        """Tests in a loop that read nothing but its pass number take the same paths on every input: the
        samples then ran every path any input takes. Said of the loop (its number of passes, when its break
        reads only the pass number) and of its conditional expressions standing in no ``if`` of its body
        (one inside an ``if`` runs on the passes that ``if`` chooses, which may depend on the input)."""
        from stepbridge.values import compile_value, find_refs, parse_value

        def only_index(test: Any) -> Any:
            try:
                parsed = parse_value(test, version=2)
            except Exception:  # not a value this version reads: nothing is proven
                return None
            if any(ref.source != index for _, ref in find_refs(parsed)):
                return None
            return compile_value(parsed)

        jumps = [(kind, test) for _, kind, test, _ in tests if kind in ("break", "continue")]
        if len(jumps) > 1 or any(kind == "continue" for kind, _ in jumps):  # which passes run what: not proven
            return
        count = passes
        if jumps:
            stop = only_index(jumps[0][1])
            if stop is None:
                return
            try:
                count = next((i + 1 for i in range(passes) if stop({index: i})), passes)
            except Exception:  # the condition fails on some pass (an operation outside its domain): not proven
                return
        if jumps:
            self.proven[(line, "for")] = f"always {count} pass(es): its break's condition reads only the pass number"
        for test_line, kind, test, at_depth in tests:
            if kind not in ("break", "continue") and at_depth == depth and only_index(test) is not None:
                self.proven[(test_line, kind)] = ("every input takes the same path on each pass: its condition "
                                                  "reads only the pass number, and the number of passes is fixed")

    def range_count(self, node: ast.expr) -> int:
        """The number of passes of ``range(N)``: ``N`` an int literal or the module's own int setting."""
        assert isinstance(node, ast.Call)
        if len(node.args) != 1 or node.keywords:
            raise self.fail("range() with other than one argument", node)
        arg = node.args[0]
        count = arg.value if isinstance(arg, ast.Constant) else (
            self.resolve(arg) if _rooted_at_self(arg) else None)
        if type(count) is not int or not 1 <= count <= 10_000:
            raise self.fail("range() of something other than a literal or the module's own integer setting "
                            "(1 to 10,000)", node)
        return count

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
        self.as_modules[as_] = module
        self.mapped_as.add(as_)
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
            self.as_modules[as_] = module
            self.mapped_as.add(as_)
            self.calls.append(module)
            self.mapped_lines.append(line)
            return Results(as_, module)
        results, listed = [], []
        for module, args in calls:
            self.counts[module] = self.counts.get(module, 0) + 1
            as_ = f"{module}_out" if self.counts[module] == 1 else f"{module}_out{self.counts[module]}"
            listed.append({"call": module, "with": args, "as": as_})
            self.as_modules[as_] = module
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
        self.as_modules[as_] = module
        self.mapped_as.add(as_)
        self.calls.append(module)
        self.mapped_lines.append(getattr(comp, "lineno", 0) + self.offset)
        return Results(as_, module)

    def prediction(self, node: ast.Call, env: dict[str, Any], steps: list[dict[str, Any]]) -> Fields:
        """``dspy.Prediction(k=v, ...)``: its fields (a value reading a variable is kept as it is now)."""
        if node.args or any(k.arg is None for k in node.keywords):
            raise self.fail("dspy.Prediction with positional or ** arguments", node)
        fields: dict[str, Any] = {}
        for k in node.keywords:
            value = self.expression(k.value, env, steps)
            if isinstance(value, Result) and (value.module in self.positional
                                              or value.module in {m for m, _ in self.tools.values()}):
                raise self.fail("a whole retriever or tool result as an output (the step keeps only its declared "
                                "fields; the Python value may hold more)", node)
            if isinstance(value, Result | Fields):  # a whole prediction: the object of its fields
                self.whole.append(str(k.arg))
                value = f"${value.as_}" if isinstance(value, Result) else dict(value.fields)
            elif isinstance(value, Results | Called):
                raise self.fail("a list of predictor results as an output", node)
            if isinstance(k.value, ast.Name):  # the same list now also inside the prediction
                self.owned.discard(k.value.id)
            if _mentions_variable(value):  # a later set may change the variable; the prediction keeps this value
                var = f"v_field_{k.arg}"
                steps.append({"set": {var: value}})
                value = f"${var}"
            fields[str(k.arg)] = value
        return Fields(fields)

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

    def fresh(self, base: str) -> str:
        """A variable of the compiler's own (``v_break``, ``v_choice2``), named apart from every name forward
        binds (those are ``v_<name>``)."""
        n = 1
        while True:
            name = base if n == 1 else f"{base}{n}"
            if name.removeprefix("v_") not in self.source_names and name not in self.made:
                self.made.add(name)
                return name
            n += 1

    def condition(self, node: ast.AST, env: dict[str, Any]) -> Any:
        self.in_condition = True
        try:
            return self.value(node, env)
        finally:
            self.in_condition = False

    def choice(self, node: ast.IfExp, env: dict[str, Any], steps: list[dict[str, Any]]) -> str:
        """``a if test else b`` (a predictor may be called on either side): an ``if`` step setting one variable
        on each path; only the path the test takes runs, as in Python."""
        test = self.condition(node.test, env)
        var = self.fresh("v_choice")
        then: list[dict[str, Any]] = []
        other: list[dict[str, Any]] = []
        self.depth += 1  # a test inside either path runs only when this one takes that path
        try:
            a = self.expression(node.body, dict(env), then)
            b = self.expression(node.orelse, dict(env), other)
        finally:
            self.depth -= 1
        if any(isinstance(v, Result | Results | Fields | Called) for v in (a, b)):
            raise self.fail("a whole predictor result in a conditional expression", node)
        then.append({"set": {var: a}})
        other.append({"set": {var: b}})
        steps.append({"if": test, "then": then, "else": other})
        self.branches += 1
        kinds = {self.kind(a), self.kind(b)}
        self.kinds[var] = kinds.pop() if len(kinds) == 1 else None  # type: ignore[assignment]
        self.pending.append((getattr(node, "lineno", 0) + self.offset, "conditional expression", test, self.depth))
        return f"${var}"

    def expression(self, node: ast.AST, env: dict[str, Any], steps: list[dict[str, Any]]) -> Any:
        if isinstance(node, ast.IfExp):
            return self.choice(node, env, steps)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "Prediction" \
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "dspy":
            return self.prediction(node, env, steps)
        if isinstance(node, ast.Name) and isinstance(env.get(node.id), Result | Results | Fields | Called):
            return env[node.id]  # a whole result, where one may stand (return x, y = x)
        if isinstance(node, ast.Call):
            results = self.parallel(node, env, steps)
            if results is not None:
                return results
        if isinstance(node, ast.ListComp):
            gen = node.generators
            if len(gen) != 1 or gen[0].ifs or gen[0].is_async:
                raise self.fail("a comprehension with several loops or a filter", node)
            return self.mapped(node.elt, gen[0].target, gen[0].iter, env, steps, node)
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Call) \
                and isinstance(node.slice, ast.Constant) and type(node.slice.value) is int:  # search(q)[0]
            base = self.expression(node.value, env, steps)
            if isinstance(base, Result | Results | Fields | Called):
                raise self.fail("an index of a whole predictor result", node)
            return {"$index": [base, node.slice.value]}
        if isinstance(node, ast.Call):
            result = self.call(node, env, steps)
            if result is None:  # a pure helper function of forward's module, inlined (or refused)
                return self.value(node, env)
            if result.module in self.bare:  # a tool returns its value itself, not an object of fields
                return f"${result.as_}.result"
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
        value = self.expression(node, env, steps)
        if isinstance(value, Fields):
            mapping = dict(value.fields)
        else:
            if isinstance(value, Results | Called):
                raise self.fail("a return of a list of predictions", node)
            # a bare value (``return pred.answer``) is the program's one output, keyed "" until it is named
            mapping = {k: f"${value.as_}.{k}" for k in self.outputs[value.module]} if isinstance(value, Result) \
                else {"": value}
        if any(("" in m) != ("" in mapping) for m in self.returns):
            raise self.fail("one path returns a bare value, another a prediction", node)
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
        self.depth += 1
        try:
            then, then_returns = self.block(stmt.body, then_env)
            other, else_returns = self.block(stmt.orelse, else_env) if stmt.orelse else ([], False)
        finally:
            self.depth -= 1
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


def _appends_a_field(stmt: ast.For, env: dict[str, Any]) -> bool:
    """``for x in xs: acc.append(self.p(...).field)`` with ``acc`` an empty list bound just before."""
    inner = stmt.body[0] if len(stmt.body) == 1 and not stmt.orelse else None
    return (isinstance(inner, ast.Expr) and isinstance(inner.value, ast.Call)
            and isinstance(inner.value.func, ast.Attribute) and inner.value.func.attr == "append"
            and isinstance(inner.value.func.value, ast.Name) and len(inner.value.args) == 1
            and env.get(inner.value.func.value.id) == []
            and isinstance(inner.value.args[0], ast.Attribute) and isinstance(inner.value.args[0].value, ast.Call))


def _break_at(body: list[ast.stmt]) -> list[int] | ast.AST | None:
    """Where the loop's ``if <condition>: ...; break`` (or ``continue``) blocks stand in its body (indexes),
    ``None`` without a break or continue of this loop, or the offending node (a break or continue elsewhere)."""
    own: list[ast.AST] = []
    todo: list[ast.AST] = list(body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Break | ast.Continue):
            own.append(node)
        elif not isinstance(node, ast.For | ast.AsyncFor | ast.While | ast.FunctionDef | ast.AsyncFunctionDef
                            | ast.Lambda | ast.ClassDef):  # their breaks are their own
            todo.extend(ast.iter_child_nodes(node))
    if not own:
        return None
    at = [i for i, stmt in enumerate(body)  # each ends an `if` block without else
          if isinstance(stmt, ast.If) and not stmt.orelse and any(stmt.body[-1] is n for n in own)]
    elsewhere = [n for n in own if not any(body[i].body[-1] is n for i in at)]  # type: ignore[attr-defined]
    if elsewhere:
        return min(elsewhere, key=lambda n: (getattr(n, "lineno", 0), getattr(n, "col_offset", 0)))
    return at


def _int_index(node: ast.AST) -> int | None:
    """The integer of a constant subscript (``[2]``, ``[-1]``), else ``None``."""
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        inner = _int_index(node.operand)
        return -inner if inner is not None else None
    if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
        return node.value
    return None


def compile_forward(obj: Any, method: str, names: dict[int, str], outputs: dict[str, list[str]], *,
                    types: dict[str, dict[str, str]] | None = None,
                    tools: dict[int, tuple[str, list[str]]] | None = None,
                    positional: dict[str, str] | None = None, list_inputs: tuple[str, ...] = (),
                    str_inputs: tuple[str, ...] = ()) -> Compiled:
    """The steps of ``type(obj).method`` (see the module docstring), or :class:`Unsupported`. ``types``:
    each module's output types; ``tools``: registered tool functions (by ``id``) as (module, parameters);
    ``positional``: the input a module's one positional argument is (``dspy.Retrieve``: ``query``);
    ``list_inputs``: inputs typed as lists in the program (a loop may go over them); ``str_inputs``: inputs
    that are strings on every sample (typed str: a str method may read them)."""
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
    compiler = _Compiler(obj, names, outputs, start - 1, params, types=types, tools=tools, positional=positional,
                         globals_=getattr(inspect.unwrap(func), "__globals__", {}))
    compiler.source_names = {n.id for n in ast.walk(fdef) if isinstance(n, ast.Name)} | set(params)
    compiler.lists = {f"$inputs.{name}": True for name in list_inputs}
    compiler.strs = {f"$inputs.{name}" for name in str_inputs}
    env: dict[str, Any] = {p: f"$inputs.{p}" for p in params}
    body = fdef.body
    if isinstance(fdef, ast.AsyncFunctionDef):
        body = [_unawait(s) for s in body]
    steps, returns = compiler.block(body, env)
    if not returns:
        raise Unsupported("a path through forward does not return", start)
    return Compiled(steps, compiler.returns, compiler.calls, compiler.branches, compiler.mapped_lines,
                    compiler.loops, compiler.as_modules, list(dict.fromkeys(compiler.whole)), compiler.proven,
                    compiler.over_lines)


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
