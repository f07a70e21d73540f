"""Reading program files safely: YAML or JSON in, plain data plus a JSON-pointer -> line map out.

Program files are untrusted. The YAML is read event by event (libyaml when available) and built
into plain dicts and lists here, so that limits are enforced *while* parsing, before anything
big is built: file size, nesting depth, node count. Aliases are refused outright (no
billion-laughs), and so are duplicate keys (YAML would silently keep the last one). Nothing is
ever constructed from a tag.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from .errors import Issue, ProgramValidationError
from .files import FileRefused, read_regular
from .pointers import escape as _escape

if TYPE_CHECKING:
    from .program import Program

__all__ = ["MAX_DEPTH", "MAX_FILE_BYTES", "load_program", "parse_document"]

MAX_FILE_BYTES = 8 * 1024 * 1024
MAX_DEPTH = 64
MAX_NODES = 50_000
#: Python prints (and so hashes and stores as JSON) integers of at most 4,300 decimal digits; hex, binary
#: and sexagesimal literals are bounded to the same size (4,300 digits < 14,284 bits).
MAX_INT_BITS = 14_284
MAX_INT_DIGITS = 4_300

_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_resolver = yaml.resolver.Resolver()
_constructor = yaml.constructor.SafeConstructor()


def _fail(message: str, line: int | None = None, pointer: str = "") -> ProgramValidationError:
    return ProgramValidationError([Issue(pointer=pointer, message=message, line=line)])



_STR_TAG = "tag:yaml.org,2002:str"
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
# Scalar constructors called directly (not through construct_object, whose per-node bookkeeping would
# keep every value of every file ever loaded alive in the shared constructor).
_SCALAR_CONSTRUCTORS: dict[str, Any] = {
    "tag:yaml.org,2002:int": yaml.constructor.SafeConstructor.construct_yaml_int,
    "tag:yaml.org,2002:float": yaml.constructor.SafeConstructor.construct_yaml_float,
    "tag:yaml.org,2002:bool": yaml.constructor.SafeConstructor.construct_yaml_bool,
    "tag:yaml.org,2002:null": yaml.constructor.SafeConstructor.construct_yaml_null,
}
_COLLECTION_TAGS = (None, "!", "tag:yaml.org,2002:map", "tag:yaml.org,2002:seq")


_PLAIN_INT = re.compile(r"-?(?:0|[1-9][0-9]{0,17})\Z")  # the common case, without the resolver's regex tour


def _scalar(event: Any) -> Any:
    tag = event.tag
    if tag is None:
        if not event.implicit[0]:  # quoted or block scalar without a tag: text
            return event.value
        if _PLAIN_INT.match(event.value):
            return int(event.value)
    if tag is None or tag == "!":
        tag = _resolver.resolve(yaml.ScalarNode, event.value, event.implicit)
    if tag in (_STR_TAG, _TIMESTAMP_TAG):
        return event.value  # dates stay the text the author wrote
    construct = _SCALAR_CONSTRUCTORS.get(tag)
    if construct is None:
        raise _fail(f"YAML tag {tag} is not allowed in a program file", event.start_mark.line + 1)
    kind = tag.rsplit(":", 1)[-1]
    if kind == "int" and len(event.value) > MAX_INT_BITS + 4:  # even binary needs this many digits to be too big
        raise _too_big_int(event)
    node = yaml.ScalarNode(tag, event.value, event.start_mark, event.end_mark, event.style)
    try:
        value = construct(_constructor, node)
    except Exception:  # ValueError, KeyError, IndexError...: a malformed value for its tag
        if kind == "int" and len(event.value) > MAX_INT_DIGITS:  # decimal digits past Python's limit
            raise _too_big_int(event) from None
        raise _fail(f"invalid {kind} value {event.value[:40]!r}", event.start_mark.line + 1) from None
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > MAX_INT_BITS:
        raise _too_big_int(event)
    return value


def _too_big_int(event: Any) -> ProgramValidationError:
    return _fail(f"integer literal {event.value[:20]!r}... is too large (at most {MAX_INT_DIGITS:,} digits)",
                 event.start_mark.line + 1)


def _parse_yaml(text: str) -> tuple[Any, dict[str, int]]:
    lines: dict[str, int] = {}
    root: list[Any] = []
    # Each frame: [container, pointer, pending_key (mappings), key_line, start_line]
    stack: list[list[Any]] = []
    nodes = 0

    def add(value: Any, line: int) -> None:
        if not stack:
            root.append(value)
            return
        frame = stack[-1]
        container, pointer = frame[0], frame[1]
        if isinstance(container, list):
            child = f"{pointer}/{len(container)}"
            container.append(value)
            lines.setdefault(child, line)
        elif frame[2] is _NO_KEY:
            if not isinstance(value, str | int | float | bool) and value is not None:
                raise _fail("mapping keys must be plain scalars", line, pointer)
            key = str(value)
            if key in container:
                raise _fail(f"duplicate key {key!r}", line, f"{pointer}/{_escape(key)}")
            frame[2], frame[3] = key, line
        else:
            key = frame[2]
            container[key] = value
            lines.setdefault(f"{pointer}/{_escape(key)}", frame[3])
            frame[2] = _NO_KEY

    def line_of(index: int) -> int:
        return text.count("\n", 0, index) + 1

    def child_pointer() -> str:
        if not stack:
            return ""
        frame = stack[-1]
        if isinstance(frame[0], list):
            return f"{frame[1]}/{len(frame[0])}"
        return f"{frame[1]}/{_escape(frame[2])}" if frame[2] is not _NO_KEY else frame[1]

    event: Any = None
    try:
        for event in yaml.parse(text, Loader=_Loader):
            line = event.start_mark.line + 1 if event.start_mark else None
            if isinstance(event, yaml.AliasEvent):
                raise _fail("YAML aliases (*name) are not allowed in program files; write the value out", line)
            if isinstance(event, yaml.ScalarEvent):
                nodes += 1
                try:
                    value = _scalar(event)
                except ProgramValidationError as exc:  # say where: the value's pointer
                    raise _fail(exc.issues[0].message, exc.issues[0].line, child_pointer()) from None
                add(value, line or 0)
            elif isinstance(event, yaml.MappingStartEvent | yaml.SequenceStartEvent):
                nodes += 1
                if event.tag not in _COLLECTION_TAGS:
                    raise _fail(f"YAML tag {event.tag} is not allowed in a program file", line)
                if len(stack) >= MAX_DEPTH:
                    raise _fail(f"nesting deeper than {MAX_DEPTH} levels", line, child_pointer())
                container: Any = {} if isinstance(event, yaml.MappingStartEvent) else []
                if stack and not isinstance(stack[-1][0], list) and stack[-1][2] is _NO_KEY:
                    raise _fail("mapping keys must be plain scalars", line, stack[-1][1])
                pointer = child_pointer()
                stack.append([container, pointer, _NO_KEY, None, line or 0])
            elif isinstance(event, yaml.MappingEndEvent | yaml.SequenceEndEvent):
                frame = stack.pop()
                add(frame[0], frame[4])  # a container's line is where it starts, not where it ends
            elif isinstance(event, yaml.DocumentStartEvent) and root:
                raise _fail("a program file holds exactly one YAML document", line)
            if nodes > MAX_NODES:
                raise _fail(f"more than {MAX_NODES} values in one program file", line)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        if mark is not None:
            # The parser may refuse deep input with its own limit while it looks ahead, before we see the
            # events (libyaml: 1,000 levels, in the scanner). Whatever its limit and wording, deep flow
            # nesting in the text it was looking at is reported as ours, at the value where it starts.
            start = event.end_mark.index if event is not None and event.end_mark is not None else 0
            if len(stack) + _flow_depth(text, start, mark.index + 1) > MAX_DEPTH:
                raise _fail(f"nesting deeper than {MAX_DEPTH} levels", line_of(start), child_pointer()) from None
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = exc.problem or exc.context or "syntax error"
        err = _fail(f"YAML syntax error: {problem}{where}", mark.line + 1 if mark else None)
        err.yaml_syntax = True  # type: ignore[attr-defined]
        raise err from None
    except yaml.YAMLError as exc:
        err = _fail(f"YAML error: {exc}")
        err.yaml_syntax = True  # type: ignore[attr-defined]
        raise err from None
    if not root:
        raise _fail("the file is empty")
    lines.setdefault("", 1)
    return root[0], lines


_NO_KEY = object()


def _flow_depth(text: str, start: int, end: int) -> int:
    """The deepest flow nesting (``[``/``{`` not yet closed) in ``text[start:end]``, skipping quoted
    scalars and comments. Only used to explain a parser's refusal, so an approximation on odd input
    (a quote inside a plain scalar) can only change which error is reported, never accept a file."""
    depth = deepest = 0
    for match in _FLOW_TOKENS.finditer(text, start, end):
        token = match.group()
        if token in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif token in "]}":
            depth = max(depth - 1, 0)
    return deepest


# Flow indicators, and what hides them: quoted scalars and comments (which start after a separator).
_FLOW_TOKENS = re.compile(r"""[\[\]{}]|(?:(?<=[\s\[{,:])|(?<![^\n]))(?:#[^\n]*|"(?:[^"\\]|\\.)*"?|'[^']*'?)""", re.S)


def parse_document(text: str | bytes, *, filename: str | None = None) -> tuple[Any, dict[str, int]]:
    """Parse program text (YAML or JSON) into plain data and a pointer -> line map.

    Raises :class:`ProgramValidationError` for anything that is not a safe, plain document.
    """
    if isinstance(text, bytes):
        if len(text) > MAX_FILE_BYTES:
            raise _fail(f"program file is {len(text) / 1e6:.1f} MB; the limit is {MAX_FILE_BYTES // 2**20} MiB "
                        "(keep corpora and data in separate files)")
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise _fail(f"program file is not UTF-8 text (byte {exc.start})") from None
    if len(text) > MAX_FILE_BYTES:
        raise _fail(f"program text is {len(text) / 1e6:.1f} MB; the limit is {MAX_FILE_BYTES // 2**20} MiB "
                    "(keep corpora and data in separate files)")
    is_json = (filename or "").endswith(".json") or text.lstrip().startswith("{")
    try:
        return _parse_yaml(text)
    except ProgramValidationError as exc:
        # Only a YAML *syntax* error falls back: a duplicate key, an alias or a limit stays an error.
        if not is_json or not getattr(exc, "yaml_syntax", False):
            raise
        # JSON that libyaml (YAML 1.1) trips over, e.g. tabs: the json module is the authority, once the
        # depth is known to be within the limit (the json module only stops at Python's recursion limit).
        if _flow_depth(text, 0, len(text)) > MAX_DEPTH:
            raise _fail(f"nesting deeper than {MAX_DEPTH} levels") from None
        try:
            data = json.loads(text, object_pairs_hook=_json_object, parse_constant=_json_constant,
                              parse_int=_json_int)
        except json.JSONDecodeError as exc:
            raise _fail(f"JSON syntax error: {exc.msg} (line {exc.lineno}, column {exc.colno})", exc.lineno) from None
        except RecursionError:
            raise _fail(f"nesting deeper than {MAX_DEPTH} levels") from None
        except ValueError as exc:  # e.g. an integer with more digits than Python converts
            raise _fail(f"JSON error: {exc}") from None
        if _count_nodes(data) > MAX_NODES:
            raise _fail(f"more than {MAX_NODES} values in one program file") from None
        return data, {"": 1}


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _fail(f"duplicate key {key!r}")
        result[key] = value
    return result


def _json_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise _fail(f"integer literal {text[:20]!r}... is too large (at most {MAX_INT_DIGITS:,} digits)")
    return int(text)


def _json_constant(name: str) -> Any:
    raise _fail(f"{name} is not allowed in a program file (JSON has no NaN or infinity)")


def _count_nodes(data: Any) -> int:
    count, todo = 0, [data]
    while todo and count <= MAX_NODES:
        item = todo.pop()
        count += 1
        if isinstance(item, dict):
            todo.extend(item.values())
        elif isinstance(item, list):
            todo.extend(item)
    return count


def load_program(source: str | Path | dict[str, Any], *, base_dir: str | Path | None = None) -> Program:
    """Load and fully validate a program from a path, YAML/JSON text, or a dict.

    Returns a :class:`stepbridge.Program`; raises :class:`ProgramValidationError` listing every problem.
    """
    from .validate import validate_data

    lines: dict[str, int] = {}
    if isinstance(source, dict):
        data: Any = source
    elif isinstance(source, Path) or (isinstance(source, str) and "\n" not in source and
                                      source.rstrip().endswith((".yaml", ".yml", ".json"))):
        path = Path(source)
        try:
            raw = read_regular(path, MAX_FILE_BYTES)
        except FileRefused as exc:
            if exc.size is None:
                raise _fail(f"program file {exc}") from None
            raise _fail(f"program file is {exc.size / 1e6:.1f} MB; the limit is {MAX_FILE_BYTES // 2**20} MiB "
                        "(keep corpora and data in separate files)") from None
        except OSError as exc:
            raise _fail(f"cannot read program file {str(path)!r}: {exc.strerror}") from None
        data, lines = parse_document(raw, filename=path.name)
        base_dir = base_dir if base_dir is not None else path.resolve().parent
    else:
        data, lines = parse_document(str(source))
    return validate_data(data, lines=lines, base_dir=base_dir)
