"""Which paths of ``forward`` the runs took: its control constructs read from the source (:mod:`ast`),
the lines each run executed (``sys.settrace`` on its code objects only), and a verdict per construct.

A construct is ``verified`` only when every path of it ran on inputs that were also verified.
"""

from __future__ import annotations

import ast
import inspect
import sys
import textwrap
import threading
from dataclasses import dataclass
from typing import Any

from .dspy_convert import _dspy, _entry
from .dspy_verify import Construct


@dataclass
class _Control:
    kind: str  # if | ifexp | for | while | try | comprehension | match
    line: int
    text: str
    paths: dict[str, int]  # path name -> first line of that path (0: cannot be told apart by lines)
    fixed: int | str | None = None  # a for over range(<literal>) (or "self.<attr>"), with no break: its passes


def _controls(cls: type, method: str) -> list[_Control]:
    """The control constructs of ``cls.method``, with absolute line numbers."""
    func = getattr(cls, method, None)
    if func is None:
        return []
    try:
        lines, start = inspect.getsourcelines(func)
    except (OSError, TypeError):
        return [_Control("source", 0, f"{cls.__name__}.{method}", {})]
    source = textwrap.dedent("".join(lines))
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return [_Control("source", start, f"{cls.__name__}.{method}", {})]
    offset = start - 1
    found: list[_Control] = []

    def text(node: ast.AST) -> str:
        segment = ast.get_source_segment(source, node) or type(node).__name__
        first = segment.splitlines()[0] if segment else ""
        return first if len(first) <= 80 else first[:77] + "..."

    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0) + offset
        if isinstance(node, ast.If):
            paths = {"then": node.body[0].lineno + offset}
            paths["else"] = node.orelse[0].lineno + offset if node.orelse else -line
            found.append(_Control("if", line, text(node), paths))
        elif isinstance(node, ast.IfExp):
            found.append(_Control("conditional expression", line, text(node), {}))
        elif isinstance(node, ast.For | ast.AsyncFor):
            fixed: int | str | None = None
            it = node.iter
            exits = any(isinstance(n, ast.Break | ast.Return | ast.Raise) for n in ast.walk(node))
            if (isinstance(it, ast.Call) and isinstance(it.func, ast.Name) and it.func.id == "range"
                    and len(it.args) == 1 and not exits):
                arg = it.args[0]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, int):
                    fixed = arg.value
                elif (isinstance(arg, ast.Attribute) and isinstance(arg.value, ast.Name) and arg.value.id == "self"
                      and cls is not None):
                    fixed = f"self.{arg.attr}"  # resolved on the instance by the judge
            found.append(_Control("for", line, text(node), {"body": node.body[0].lineno + offset}, fixed))
        elif isinstance(node, ast.While):
            found.append(_Control("while", line, text(node), {"body": node.body[0].lineno + offset}))
        elif isinstance(node, ast.Try):
            paths = {f"except {i + 1}": h.body[0].lineno + offset for i, h in enumerate(node.handlers)}
            found.append(_Control("try", line, "try", paths))
        elif isinstance(node, ast.ListComp | ast.SetComp | ast.DictComp | ast.GeneratorExp):
            found.append(_Control("comprehension", line, text(node), {}))
        elif isinstance(node, ast.Match):
            paths = {f"case {i + 1}": c.body[0].lineno + offset for i, c in enumerate(node.cases)}
            found.append(_Control("match", line, text(node), paths))
    return sorted(found, key=lambda c: c.line)


class _LineRecorder:
    """Which lines of the given functions ran (``sys.settrace`` on their code objects only)."""

    def __init__(self, codes: set[Any], tools: dict[Any, str] | None = None, on_tool: Any = None):
        self.codes = codes
        self.tools = tools or {}  # code object of a registered tool's function -> its registered name
        self.on_tool = on_tool  # (name, frame) -> a callable taking the return value, or None
        self.lines: dict[int, int] = {}
        self.lock = threading.Lock()

    def __enter__(self) -> _LineRecorder:
        self._previous = sys.gettrace()
        sys.settrace(self._global)
        threading.settrace(self._global)
        return self

    def __exit__(self, *exc: Any) -> None:
        sys.settrace(self._previous)
        threading.settrace(self._previous)

    def _global(self, frame: Any, event: str, arg: Any) -> Any:
        if event != "call":
            return None
        if frame.f_code in self.codes:
            return self._local
        tool = self.tools.get(frame.f_code)
        if tool is not None and self.on_tool is not None:
            finish = self.on_tool(tool, frame)
            if finish is None:
                return None

            def returned(frame: Any, event: str, arg: Any) -> Any:
                if event == "return":
                    finish(arg)
                return returned

            return returned
        return None

    def _local(self, frame: Any, event: str, arg: Any) -> Any:
        if event == "line":
            with self.lock:
                self.lines[frame.f_lineno] = self.lines.get(frame.f_lineno, 0) + 1
        return self._local


def _custom_classes(obj: Any) -> list[tuple[type, str]]:
    """The module's own class and every nested custom module class, with the method DSPy runs."""
    dspy = _dspy().dspy
    out: list[tuple[type, str]] = []
    for _, sub in obj.named_sub_modules():
        cls = type(sub)
        if not isinstance(sub, dspy.Module) or cls.__module__.split(".")[0] == "dspy":
            continue
        pair = (cls, _entry(sub))
        if pair not in out:
            out.append(pair)
    return out


def _code_objects(func: Any) -> set[Any]:
    code = getattr(inspect.unwrap(func), "__code__", None)
    if code is None:
        return set()
    todo, seen = [code], set()
    while todo:
        c = todo.pop()
        if c in seen:
            continue
        seen.add(c)
        todo.extend(k for k in c.co_consts if hasattr(k, "co_code"))
    return seen


def _judge_controls(obj: Any, per_sample_lines: list[dict[int, int]],
                    proven: dict[tuple[int, str], str] | None = None) -> list[Construct]:
    """Each control construct of the forward(s) as verified / unverified, from the lines the samples ran;
    ``proven``: (line, kind) of constructs of the module's own forward that every input takes alike (read
    statically), with why."""
    out: list[Construct] = []
    for cls, method in _custom_classes(obj):
        controls = _controls(cls, method)
        for c in controls:
            name = f"{cls.__name__}.{method}: {c.kind} `{c.text}`"
            why_proven = (proven or {}).get((c.line, c.kind)) if cls is type(obj) else None
            if why_proven is not None and any(lines.get(c.line) for lines in per_sample_lines):
                out.append(Construct(name, "verified", why_proven, c.line))
                continue
            if c.kind == "source":
                out.append(Construct(name, "unverified", "its source is not available to read", c.line or None))
                continue
            ran = [lines for lines in per_sample_lines if lines.get(c.line)]
            if not ran:
                out.append(Construct(name, "unverified", "no sample reached it", c.line))
                continue
            if c.kind == "if":
                then_line, else_line = c.paths["then"], c.paths["else"]
                took_then = sum(1 for lines in ran if lines.get(then_line))
                if else_line > 0:
                    took_else = sum(1 for lines in ran if lines.get(else_line))
                else:  # no else: the path around the body ran when the test ran more often than the body
                    took_else = sum(1 for lines in ran if lines.get(c.line, 0) > lines.get(then_line, 0))
                missing = [p for p, n in (("then", took_then), ("else", took_else)) if n == 0]
                if missing:
                    out.append(Construct(name, "unverified", f"the {' and '.join(missing)} path never ran on the "
                                         "samples: inputs taking it may behave differently", c.line))
                else:
                    out.append(Construct(name, "verified", None, c.line))
            elif c.kind in ("for", "while"):
                fixed = c.fixed
                if isinstance(fixed, str):  # range(self.attr): the module's own setting, if it is an int
                    value = getattr(obj, fixed.removeprefix("self."), None) if cls is type(obj) else None
                    fixed = value if isinstance(value, int) and not isinstance(value, bool) else None
                    why = f"always {fixed} passes ({c.fixed} = {fixed}, the module's setting at import)"
                else:
                    why = f"always {fixed} passes"
                if fixed is not None:
                    out.append(Construct(name, "verified", why, c.line))
                    continue
                counts = sorted({lines.get(c.paths["body"], 0) for lines in ran})
                if len(counts) == 1:
                    out.append(Construct(name, "unverified", f"it made {counts[0]} pass(es) on every sample: "
                                         "inputs making another number of passes may behave differently", c.line))
                else:
                    out.append(Construct(name, "verified", f"passes seen: {counts}", c.line))
            elif c.kind in ("try", "match"):
                missing = [p for p, first in c.paths.items() if not any(lines.get(first) for lines in ran)]
                if missing:
                    out.append(Construct(name, "unverified", f"{', '.join(missing)} never ran on the samples",
                                         c.line))
                else:
                    out.append(Construct(name, "verified", None, c.line))
            else:  # a conditional expression or comprehension: its paths share a line
                out.append(Construct(name, "unverified", "its paths cannot be told apart by the lines that ran "
                                     "(a different input may take another path or another count)", c.line))
    return out

