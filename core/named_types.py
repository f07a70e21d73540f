"""Named types: the object types and enums a program declares in its ``types`` section.

```yaml
types:
  Address:
    description: A postal address.
    fields:
      street: str
      city: {type: str, desc: the city name}
  Person:
    fields: {name: str, age: Optional[int], address: Address}
  Sentiment:
    enum: [positive, negative, neutral]
```

An object type is a pydantic model with those fields (in order, with their descriptions; an
``Optional`` field defaults to ``None``, every other field is required); an enum is a Python ``Enum``
of those string values. They are what a DSPy user writes by hand (``class Person(BaseModel): ...``),
so prompts and parsing are DSPy's own for them: the JSON schema a prompt prints is pydantic's.

A :class:`TypeSpace` checks a section (names, unknown types with suggestions, cycles, nesting depth,
field names) and resolves the type names in signatures into self-contained :class:`TypeExpr` nodes
(``object`` / ``enum``, identified by name and content digest). :func:`materialize` builds the
classes once per content digest — with :func:`pydantic.create_model` and the functional ``Enum`` API,
never ``exec`` — so two programs declaring the same type share one class.
"""

from __future__ import annotations

import contextlib
import difflib
import enum
import hashlib
import json
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pydantic
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator

from .signature import (
    BUILTIN_TYPE_NAMES,
    IDENTIFIER,
    SCALARS,
    TYPE_NAME,
    FieldSpec,
    SignatureSyntaxError,
    TypeExpr,
    parse_type,
)

__all__ = [
    "EnumDecl",
    "EnumTypeSpec",
    "FieldDecl",
    "ObjectDecl",
    "ObjectFieldSpec",
    "ObjectTypeSpec",
    "TypeProblem",
    "TypeSpace",
    "UnknownTypeError",
    "declarations",
    "from_class",
    "materialize",
    "parse_types_section",
]

MAX_TYPES = 500
MAX_FIELDS = 500
MAX_ENUM_VALUES = 1000
MAX_ENUM_VALUE_LENGTH = 1000
#: How deep declared types may nest (Person -> Address -> ...): pydantic builds schemas recursively.
MAX_NESTING = 32
#: Module the generated classes claim; never starts with ``dspy.`` (DSPy treats its own models specially).
GENERATED_MODULE = "stepbridge.types"


# ------------------------------------------------------------------------------------------------
# Resolved declarations
# ------------------------------------------------------------------------------------------------
_NO_DEFAULT: Any = object()


@dataclass(frozen=True)
class FieldDecl:
    """One field of an object type; ``default`` (JSON data) when the field has one."""

    name: str
    type: TypeExpr
    desc: str | None = None
    default: Any = _NO_DEFAULT

    @property
    def has_default(self) -> bool:
        return self.default is not _NO_DEFAULT


class ObjectDecl:
    """A resolved object type: name, description, ordered fields, content digest."""

    __slots__ = ("description", "digest", "field_types", "fields", "name", "required")

    def __init__(self, name: str, description: str | None, fields: Iterable[FieldDecl]):
        self.name = name
        self.description = description
        self.fields: tuple[FieldDecl, ...] = tuple(fields)
        self.field_types: dict[str, TypeExpr] = {f.name: f.type for f in self.fields}
        self.required: tuple[str, ...] = tuple(
            f.name for f in self.fields if f.type.kind != "optional" and not f.has_default)
        self.digest = _digest(["object", name, description,
                               [[f.name, _type_key(f.type), f.desc, *([f.default] if f.has_default else [])]
                                for f in self.fields]])

    def type_expr(self) -> TypeExpr:
        return TypeExpr("object", (self.name, self.digest), self)

    def to_spec(self) -> dict[str, Any]:
        """The ``types`` entry that declares this type (as a file writes it)."""
        fields: dict[str, Any] = {}
        for f in self.fields:
            spec = {"type": str(f.type), **({"desc": f.desc} if f.desc is not None else {}),
                    **({"default": f.default} if f.has_default else {})}
            fields[f.name] = spec["type"] if len(spec) == 1 else spec
        return {"fields": fields} if self.description is None else {"description": self.description, "fields": fields}


class EnumDecl:
    """A resolved enum: name, description, its string values in order, content digest."""

    __slots__ = ("description", "digest", "name", "values")

    def __init__(self, name: str, description: str | None, values: Iterable[str]):
        self.name = name
        self.description = description
        self.values: tuple[str, ...] = tuple(values)
        self.digest = _digest(["enum", name, description, list(self.values)])

    def type_expr(self) -> TypeExpr:
        return TypeExpr("enum", (self.name, self.digest), self)

    def to_spec(self) -> dict[str, Any]:
        """The ``types`` entry that declares this enum."""
        values = list(self.values)
        return {"enum": values} if self.description is None else {"description": self.description, "enum": values}


def _digest(data: Any) -> str:
    raw = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


def _type_key(t: TypeExpr) -> str:
    """A canonical text of a resolved type that names declared types by content (linear in its size)."""
    if t.kind in ("object", "enum"):
        return f"{t.args[0]}@{t.args[1]}"
    if t.kind == "literal" or not t.args:
        return str(t)
    return t.kind + "[" + ",".join(_type_key(a) for a in t.args) + "]"


# ------------------------------------------------------------------------------------------------
# The section as written in a file
# ------------------------------------------------------------------------------------------------
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ObjectFieldSpec(FieldSpec):
    """A field of an object type: ``type``, ``desc`` and, optionally, a ``default`` (JSON data; a field
    with one is not required, like ``country: str = "FR"`` in a pydantic model)."""

    default: Any = Field(default=None, description="the value when the field is left out (JSON data)")

    @model_validator(mode="after")
    def _no_constraints(self) -> ObjectFieldSpec:
        if self.constraints is not None:  # a model's Field(ge=...) is a JSON schema bound, not DSPy's text
            raise ValueError("an object type's field takes no 'constraints' (they are printed for signature "
                             "fields only)")
        return self

    @property
    def has_default(self) -> bool:
        return "default" in self.model_fields_set


def _fields_may_be_strings(schema: dict[str, Any]) -> None:
    """A file may write a field as its type string alone: the JSON schema says so."""
    fields = schema.get("properties", {}).get("fields", {})
    if "additionalProperties" in fields:
        fields["additionalProperties"] = {"anyOf": [
            {"type": "string", "description": "the field's type, e.g. \"Optional[int]\""},
            fields["additionalProperties"]]}


class ObjectTypeSpec(_Strict):
    """An object type: ``description`` and ordered ``fields`` (name -> type string or ``{type, desc}``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra=_fields_may_be_strings)

    description: str | None = Field(default=None, max_length=100_000)
    fields: dict[str, ObjectFieldSpec] = Field(max_length=MAX_FIELDS)

    @field_validator("fields", mode="before")
    @classmethod
    def _short_fields(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            return {k: {"type": v} if isinstance(v, str) else v for k, v in value.items()}
        return value

    @field_validator("fields")
    @classmethod
    def _field_names(cls, value: dict[str, ObjectFieldSpec]) -> dict[str, ObjectFieldSpec]:
        for name in value:
            problem = field_name_problem(name)
            if problem:
                raise ValueError(problem)
        return value

    def canonical(self) -> dict[str, Any]:
        """What the content hash sees: fields as ordered ``[name, {type, desc}]`` pairs."""
        return {"description": self.description,
                "fields": [[k, {"type": f.type, "desc": f.desc, **({"default": f.default} if f.has_default else {})}]
                           for k, f in self.fields.items()]}

    def to_file(self) -> dict[str, Any]:
        """As a file writes it: a field without a description is just its type string."""
        fields: dict[str, Any] = {}
        for k, f in self.fields.items():
            spec = {"type": f.type, **({"desc": f.desc} if f.desc is not None else {}),
                    **({"default": f.default} if f.has_default else {})}
            fields[k] = spec["type"] if len(spec) == 1 else spec
        return {"description": self.description, "fields": fields} if self.description is not None else {
            "fields": fields}


class EnumTypeSpec(_Strict):
    """An enum: ``enum: [values]`` (strings, in order) and an optional ``description``."""

    description: str | None = Field(default=None, max_length=100_000)
    enum: list[str] = Field(min_length=1, max_length=MAX_ENUM_VALUES)

    @field_validator("enum")
    @classmethod
    def _values(cls, value: list[str]) -> list[str]:
        seen: set[str] = set()
        for item in value:
            if not item:
                raise ValueError("enum values are non-empty strings")
            if len(item) > MAX_ENUM_VALUE_LENGTH:
                raise ValueError(f"enum value longer than {MAX_ENUM_VALUE_LENGTH} characters")
            if item in seen:
                raise ValueError(f"duplicate enum value {item!r}")
            seen.add(item)
        return value

    def canonical(self) -> dict[str, Any]:
        return {"description": self.description, "enum": list(self.enum)}

    def to_file(self) -> dict[str, Any]:
        return {"description": self.description, "enum": list(self.enum)} if self.description is not None else {
            "enum": list(self.enum)}


TypeSpec = ObjectTypeSpec | EnumTypeSpec


def parse_type_spec(raw: Any) -> TypeSpec:
    """One ``types`` entry (raises pydantic's ``ValidationError`` or ``ValueError``)."""
    if isinstance(raw, ObjectTypeSpec | EnumTypeSpec):
        return raw
    if not isinstance(raw, Mapping):
        raise ValueError("a type is a mapping with 'fields' (an object type) or 'enum' (an enum)")
    if "enum" in raw and "fields" in raw:
        raise ValueError("a type has either 'fields' (an object type) or 'enum' (an enum), not both")
    if "enum" in raw:
        return EnumTypeSpec.model_validate(raw)
    if "fields" in raw:
        return ObjectTypeSpec.model_validate(raw)
    raise ValueError("a type needs 'fields' (an object type) or 'enum' (an enum)")


def parse_types_section(raw: Any) -> dict[str, TypeSpec]:
    """The whole section as models (first error raised); see :class:`TypeSpace` for all problems at once."""
    if not isinstance(raw, Mapping):
        raise ValueError("'types' is a mapping of type name -> type")
    return {str(name): parse_type_spec(spec) for name, spec in raw.items()}


_MODEL_ATTRIBUTES = frozenset(dir(BaseModel))


def field_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a field of an object type (None when it can): the rules of signature fields
    (:func:`stepbridge.names.field_name_problem`), and no attribute of pydantic's ``BaseModel``."""
    from .names import field_name_problem as signature_field_problem

    if not IDENTIFIER.match(name):
        return f"invalid field name {name!r} (letters, digits and _; not starting with a digit)"
    problem = signature_field_problem(name)
    if problem is not None:
        return problem
    if name in _MODEL_ATTRIBUTES:
        return f"field name {name!r} is taken by pydantic's BaseModel (rename it, e.g. '{name}_value')"
    return None


def type_name_problem(name: str) -> str | None:
    if not TYPE_NAME.match(name):
        return f"invalid type name {name!r} (an identifier starting with an uppercase letter)"
    if name in BUILTIN_TYPE_NAMES:
        return f"type name {name!r} is a built-in type"
    return None


# ------------------------------------------------------------------------------------------------
# Checking and resolving
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TypeProblem:
    """One problem in a ``types`` section; ``pointer`` is relative to the section (``/Person/fields/age``)."""

    pointer: str
    message: str
    suggestion: str | None = None


class UnknownTypeError(ValueError):
    """A type name no ``types`` section declares."""

    def __init__(self, name: str, suggestion: str | None = None, message: str | None = None):
        hint = f" (did you mean {suggestion}?)" if suggestion else ""
        super().__init__(message or f"unknown type {name!r}{hint}")
        self.name = name
        self.suggestion = suggestion


def _esc(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def _suggest(name: str, candidates: Iterable[str]) -> str | None:
    """The closest candidate, ignoring case (``Strr`` -> ``str``); bounded work for hostile input."""
    by_lower: dict[str, str] = {}
    for candidate in list(candidates)[:2000]:
        by_lower.setdefault(candidate.lower(), candidate)
    match = difflib.get_close_matches(name.lower()[:200], list(by_lower), n=1, cutoff=0.6)
    return by_lower[match[0]] if match else None


_SUGGESTABLE_BUILTINS = (*SCALARS, "Any", "History", "list", "dict", "tuple", "Optional", "Union", "Literal")


class TypeSpace:
    """The declared types of one program, checked and resolved.

    Build with :meth:`build` (never raises: problems are returned), then :meth:`resolve` signature types.
    An empty space (format 1, or no section) resolves every type without names and refuses any name.
    """

    def __init__(self, decls: Mapping[str, ObjectDecl | EnumDecl] | None = None):
        self.decls: dict[str, ObjectDecl | EnumDecl] = dict(decls or {})
        #: every name the section declares, including types it could not resolve (their problems are reported)
        self.declared: frozenset[str] = frozenset(self.decls)
        self._resolved: dict[TypeExpr, TypeExpr] = {}

    @classmethod
    def build(cls, raw: Any) -> tuple[TypeSpace, list[TypeProblem]]:
        """Check a raw ``types`` section (all problems at once) and resolve what can be resolved."""
        problems: list[TypeProblem] = []
        if raw is None:
            return cls(), problems
        if not isinstance(raw, Mapping):
            return cls(), [TypeProblem("", "'types' is a mapping of type name -> type")]
        if len(raw) > MAX_TYPES:
            return cls(), [TypeProblem("", f"at most {MAX_TYPES} types, got {len(raw)}")]
        specs: dict[str, TypeSpec] = {}
        broken: set[str] = set()
        for name, spec in raw.items():
            pointer = f"/{_esc(str(name))}"
            problem = type_name_problem(str(name))
            if problem:
                problems.append(TypeProblem(pointer, problem))
                continue
            found = _field_problems(spec, pointer)
            if found:
                problems.extend(found)
                # still check what its good fields refer to; the type itself stays unresolved
                good = {k: v for k, v in spec["fields"].items()
                        if not any(p.pointer.startswith(f"{pointer}/fields/{_esc(str(k))}") for p in found)}
                with contextlib.suppress(ValueError, SignatureSyntaxError):
                    partial = ObjectTypeSpec.model_validate({"fields": good})
                    specs[str(name)] = partial
                    broken.add(str(name))
                continue
            try:
                specs[str(name)] = parse_type_spec(spec)
            except pydantic.ValidationError as exc:
                for err in exc.errors(include_url=False):
                    loc = "".join(f"/{_esc(str(p))}" for p in err["loc"])
                    msg = str(err["msg"]).removeprefix("Value error, ")
                    if err["type"] == "extra_forbidden":
                        msg = f"unknown key {err['loc'][-1]!r}"
                    problems.append(TypeProblem(pointer + loc, msg))
            except (ValueError, SignatureSyntaxError) as exc:
                problems.append(TypeProblem(pointer, str(exc)))
        space, problems = cls.from_specs(specs, problems, declared=[str(n) for n in raw], broken=broken)
        return space, problems

    @classmethod
    def from_specs(cls, specs: Mapping[str, TypeSpec], problems: list[TypeProblem] | None = None,
                   declared: Iterable[str] | None = None,
                   broken: set[str] | None = None) -> tuple[TypeSpace, list[TypeProblem]]:
        problems = problems if problems is not None else []
        known = set(declared if declared is not None else specs)
        # dependencies: type -> the declared names its fields use, reporting unknown ones
        deps: dict[str, list[str]] = {}
        broken = set(broken or ())
        for name, spec in specs.items():
            deps[name] = []
            if isinstance(spec, EnumTypeSpec):
                continue
            for fname, fspec in spec.fields.items():
                pointer = f"/{_esc(name)}/fields/{_esc(fname)}"
                t = fspec.type_expr
                if any(s.kind == "history" for s in t.walk()):
                    problems.append(TypeProblem(pointer, "History is only the whole type of an input field"))
                    broken.add(name)
                for used in t.names():
                    if used not in known:
                        hint = _suggest(used, [*known, *_SUGGESTABLE_BUILTINS])
                        problems.append(TypeProblem(pointer, f"unknown type {used!r}", hint))
                        broken.add(name)
                    elif used not in deps[name]:
                        deps[name].append(used)
        order, cyclic = _topological(deps, problems)
        decls: dict[str, ObjectDecl | EnumDecl] = {}
        depth: dict[str, int] = {}
        space = cls()
        space.decls = decls  # filled in dependency order: each type resolves against those before it
        space.declared = frozenset(known)
        for name in order:
            spec = specs[name]
            if isinstance(spec, EnumTypeSpec):
                decls[name] = EnumDecl(name, spec.description, spec.enum)
                depth[name] = 1
                continue
            if name in broken or any(d in cyclic or d not in decls for d in deps[name]):
                continue  # refers to a broken type (already reported)
            depth[name] = 1 + max((depth[d] for d in deps[name]), default=0)
            if depth[name] > MAX_NESTING:
                problems.append(TypeProblem(f"/{_esc(name)}", f"declared types nest deeper than {MAX_NESTING}"))
                continue
            fields = []
            failed = False
            for fname, fspec in spec.fields.items():
                try:
                    ftype = space.resolve(fspec.type_expr)
                    if fspec.has_default and not ftype.accepts(fspec.default):
                        raise TypeError(f"default {fspec.default!r} is not a {ftype}")
                    default = fspec.default if fspec.has_default else _NO_DEFAULT
                    fields.append(FieldDecl(fname, ftype, fspec.desc, default))
                except (UnknownTypeError, TypeError) as exc:
                    problems.append(TypeProblem(f"/{_esc(name)}/fields/{_esc(fname)}", str(exc)))
                    failed = True
            if not failed:
                decls[name] = ObjectDecl(name, spec.description, fields)
        return space, problems

    @classmethod
    def from_decls(cls, types: Iterable[TypeExpr]) -> TypeSpace:
        """A space of already resolved types (e.g. from :func:`from_class`), with what they use."""
        decls: dict[str, ObjectDecl | EnumDecl] = {}
        for t in types:
            for sub in t.walk(into_declared=True):
                if sub.kind in ("object", "enum"):
                    decls.setdefault(sub.args[0], sub.decl)  # type: ignore[arg-type]
        return cls(decls)

    def __contains__(self, name: object) -> bool:
        return name in self.decls

    def __bool__(self) -> bool:
        return bool(self.decls)

    def get(self, name: str) -> TypeExpr | None:
        decl = self.decls.get(name)
        return decl.type_expr() if decl is not None else None

    def resolve(self, t: TypeExpr) -> TypeExpr:
        """``t`` with every declared name replaced by its definition; :class:`UnknownTypeError` if unknown."""
        if t.kind not in ("named", "dict", "list", "optional", "tuple", "union"):
            return t
        cached = self._resolved.get(t)
        if cached is not None:
            return cached
        if t.kind == "named":
            decl = self.decls.get(t.args[0])
            if decl is None:
                hint = _suggest(t.args[0], [*self.declared, *_SUGGESTABLE_BUILTINS])
                raise UnknownTypeError(t.args[0], hint)
            result = decl.type_expr()
        else:
            result = TypeExpr(t.kind, tuple(self.resolve(a) for a in t.args))
            if t.kind == "dict" and result.key.kind == "object":
                raise TypeError(f"dict keys must be str, int, float, bool, a Literal of strings or an enum, "
                                f"not {result.key}")
        if len(self._resolved) < 10_000:
            self._resolved[t] = result
        return result

    def resolve_text(self, text: str) -> TypeExpr:
        return self.resolve(parse_type(text))


def _field_problems(spec: Any, pointer: str) -> list[TypeProblem]:
    """Each bad field of an object type, with its own pointer (pydantic would stop at the first)."""
    fields = spec.get("fields") if isinstance(spec, Mapping) else None
    if not isinstance(fields, Mapping):
        return []
    problems = []
    for fname, raw in fields.items():
        where = f"{pointer}/fields/{_esc(str(fname))}"
        problem = field_name_problem(str(fname))
        if problem:
            problems.append(TypeProblem(where, problem))
            continue
        try:
            spec = ObjectFieldSpec.model_validate({"type": raw} if isinstance(raw, str) else raw)
            # a default must be a value of the field's type (with declared types: checked at resolution)
            if spec.has_default and not spec.type_expr.names() and not spec.type_expr.accepts(spec.default):
                problems.append(TypeProblem(f"{where}/default", f"default {spec.default!r} is not a {spec.type}"))
        except pydantic.ValidationError as exc:
            for err in exc.errors(include_url=False):
                loc = "".join(f"/{_esc(str(p))}" for p in err["loc"]) if not isinstance(raw, str) else ""
                msg = str(err["msg"]).removeprefix("Value error, ")
                if err["type"] == "extra_forbidden":
                    msg = f"unknown key {err['loc'][-1]!r}"
                problems.append(TypeProblem(where + loc, msg))
        except (ValueError, SignatureSyntaxError) as exc:
            problems.append(TypeProblem(where, str(exc)))
    return problems


def _topological(deps: Mapping[str, list[str]], problems: list[TypeProblem]) -> tuple[list[str], set[str]]:
    """Types in dependency order (dependencies first); the members of cycles are reported and left out."""
    order: list[str] = []
    state: dict[str, int] = {}  # 1 visiting, 2 done
    cyclic: set[str] = set()
    for root in deps:
        if state.get(root):
            continue
        # iterative DFS: a hostile section must not exhaust the stack
        stack: list[tuple[str, int]] = [(root, 0)]
        path: list[str] = [root]
        state[root] = 1
        while stack:
            node, i = stack[-1]
            children = [d for d in deps.get(node, []) if d in deps]
            if i < len(children):
                stack[-1] = (node, i + 1)
                child = children[i]
                if state.get(child) == 1:
                    cycle = [*path[path.index(child):], child]
                    if not cyclic.intersection(cycle[:-1]):
                        problems.append(TypeProblem(
                            f"/{_esc(child)}", "types refer to each other in a cycle (no recursion): "
                            + " -> ".join(cycle)))
                    cyclic.update(cycle)
                elif not state.get(child):
                    state[child] = 1
                    stack.append((child, 0))
                    path.append(child)
            else:
                stack.pop()
                path.pop()
                state[node] = 2
                order.append(node)
    return order, cyclic


# ------------------------------------------------------------------------------------------------
# Classes
# ------------------------------------------------------------------------------------------------
class History(BaseModel):
    """The shape and name of ``dspy.History``: the chat turns before the current input.

    Each message is a mapping of the signature's fields to values; the adapter turns every message into
    a user turn (its input fields) and an assistant turn (its output fields)."""

    messages: list[dict[str, Any]]

    model_config = ConfigDict(frozen=True, str_strip_whitespace=True, validate_assignment=True, extra="forbid")


_CACHE_SIZE = 4096
_classes: OrderedDict[tuple[str, Any], Any] = OrderedDict()
_classes_lock = threading.Lock()


def materialize(t: TypeExpr) -> Any:
    """The Python class of a resolved ``object`` / ``enum`` type (or ``History``), built once per content."""
    if t.kind == "history":
        return History
    key = (t.kind, t.args)
    with _classes_lock:
        cls = _classes.get(key)
        if cls is not None:
            _classes.move_to_end(key)
            return cls
    if t.kind == "enum":
        cls = _make_enum(t.decl)  # type: ignore[arg-type]
    elif t.kind == "object":
        cls = _make_model(t.decl)  # type: ignore[arg-type]
    else:
        raise TypeError(f"{t} is not a declared type")
    with _classes_lock:
        cls = _classes.setdefault(key, cls)
        while len(_classes) > _CACHE_SIZE:
            _classes.popitem(last=False)
    return cls


def _member_names(values: tuple[str, ...]) -> list[str]:
    """Member names as a Python author writes them: the value when it is an identifier, else the value
    with every other character replaced by ``_`` (``"a b"`` -> ``a_b``); made unique. DSPy looks a
    reply up by value first and by name second, so names only matter for replies that use them."""
    names: list[str] = []
    for value in values:
        name = value if value.isidentifier() else re.sub(r"\W", "_", value)
        if not name or name[0].isdigit():
            name = f"_{name}"
        if name.startswith("_") or name == "mro":
            name = f"value{name}" if name.startswith("_") else f"{name}_"
        while name in names:
            name = f"{name}_"
        names.append(name)
    return names


def _make_enum(decl: EnumDecl) -> type[enum.Enum]:
    members = list(zip(_member_names(decl.values), decl.values, strict=True))
    cls = enum.Enum(decl.name, members, module=GENERATED_MODULE)  # type: ignore[misc]
    if decl.description is not None:
        cls.__doc__ = decl.description
    return cls


def _make_model(decl: ObjectDecl) -> type[BaseModel]:
    fields: dict[str, Any] = {}
    for f in decl.fields:
        annotation = f.type.annotation()
        if f.has_default:
            fields[f.name] = (annotation, Field(default=_python_default(f), description=f.desc))
        elif f.type.kind == "optional":
            fields[f.name] = (annotation, Field(default=None, description=f.desc))
        else:
            fields[f.name] = (annotation, Field(description=f.desc))
    model: type[BaseModel] = pydantic.create_model(
        decl.name, __doc__=decl.description, __module__=GENERATED_MODULE, **fields)
    return model


def _python_default(f: FieldDecl) -> Any:
    """A field's JSON default as the Python value its type holds (an Enum member, a tuple, a model)."""
    if f.type.kind in ("str", "int", "float", "bool", "any", "literal") or f.default is None:
        return f.default
    return TypeAdapter(f.type.annotation()).validate_python(f.default)


# ------------------------------------------------------------------------------------------------
# From Python classes (tools, imported DSPy signatures)
# ------------------------------------------------------------------------------------------------
def _is_history_class(cls: Any) -> bool:
    return cls is History or (
        isinstance(cls, type) and cls.__name__ == "History" and str(cls.__module__).startswith("dspy.")
    )


def from_class(cls: type, _stack: tuple[type, ...] = ()) -> TypeExpr:
    """A pydantic model, ``Enum`` or ``dspy.History`` as a resolved :class:`TypeExpr`.

    Only classes a ``types`` section could declare are accepted (string-valued enums; models whose
    fields are types of this grammar, required or ``Optional`` with default ``None``): the JSON schema
    of the rebuilt class must equal the original's, else ``TypeError`` names the difference's field.
    """
    if _is_history_class(cls):
        return TypeExpr("history")
    problem = type_name_problem(cls.__name__)
    if problem:
        raise TypeError(f"cannot use {cls!r} as a declared type: {problem}")
    if cls in _stack:
        raise TypeError(f"{cls.__name__} refers to itself (recursive models are not supported)")
    if issubclass(cls, enum.Enum):
        values = [m.value for m in cls]
        if not values or not all(isinstance(v, str) and v for v in values):
            raise TypeError(f"enum {cls.__name__} must have non-empty string values")
        result = EnumDecl(cls.__name__, cls.__doc__, values).type_expr()
    elif issubclass(cls, BaseModel):
        fields = []
        for name, info in cls.model_fields.items():
            problem = field_name_problem(name)
            if problem:
                raise TypeError(f"{cls.__name__}: {problem}")
            ftype = _from_annotation_in(info.annotation, (*_stack, cls))
            default = _NO_DEFAULT
            if info.default_factory is not None:
                raise TypeError(f"{cls.__name__}.{name}: a default_factory cannot be declared (use a default value)")
            if not info.is_required() and not (ftype.kind == "optional" and info.default is None):
                try:
                    default = TypeAdapter(Any if info.annotation is None else info.annotation).dump_python(
                        info.default, mode="json")
                except Exception as exc:
                    raise TypeError(f"{cls.__name__}.{name}: its default is not JSON data") from exc
            fields.append(FieldDecl(name, ftype, info.description, default))
        result = ObjectDecl(cls.__name__, cls.__doc__, fields).type_expr()
    else:
        raise TypeError(f"unsupported class {cls!r}")
    ours = TypeAdapter(materialize(result)).json_schema()
    theirs = TypeAdapter(cls).json_schema()
    if ours != theirs:
        raise TypeError(f"{cls.__name__} cannot be declared as a stepbridge type: its JSON schema has settings "
                        "a types section cannot express (aliases, defaults, constraints or config)")
    return result


def declarations(cls: type) -> dict[str, dict[str, Any]]:
    """The ``types`` section entries that declare a pydantic model or ``Enum`` and every type it uses
    (what :meth:`ProgramBuilder.declare <stepbridge.builder.ProgramBuilder.declare>` adds)."""
    t = from_class(cls)
    out: dict[str, dict[str, Any]] = {}
    for sub in t.walk(into_declared=True):
        if sub.kind in ("object", "enum"):
            decl = sub.decl
            assert decl is not None
            previous = out.get(decl.name)
            if previous is not None and previous != decl.to_spec():
                raise TypeError(f"two different types are named {decl.name!r}")
            out[decl.name] = decl.to_spec()
    return out


def _from_annotation_in(annotation: Any, stack: tuple[type, ...]) -> TypeExpr:
    """:meth:`TypeExpr.from_annotation`, carrying the models being converted (to refuse recursion)."""
    import types as pytypes
    import typing

    from .signature import _NONE, _dict, _union

    if isinstance(annotation, type) and issubclass(annotation, BaseModel | enum.Enum):
        return from_class(annotation, stack)
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is list and len(args) == 1:
        return TypeExpr("list", (_from_annotation_in(args[0], stack),))
    if origin is dict and len(args) == 2:
        return _dict(_from_annotation_in(args[0], stack), _from_annotation_in(args[1], stack), None)
    if origin is tuple and args and Ellipsis not in args:
        return TypeExpr("tuple", tuple(_from_annotation_in(a, stack) for a in args))
    if origin in (typing.Union, pytypes.UnionType):
        return _union([_NONE if a is type(None) else _from_annotation_in(a, stack) for a in args], None)
    return TypeExpr.from_annotation(annotation)
