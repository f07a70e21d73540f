"""Name -> object registries for adapters, tools, retrievers and DSPy modules.

Program files only ever name things; the names are looked up here, exactly: first explicit
registrations (``stepbridge.tools.register(...)``), then installed entry points. Nothing a program
says is resolved by import path, prefix or fuzzy match. Only the *operator* may name an adapter
by ``package.module:factory`` (on the command line or in code).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .errors import StepbridgeError, UnsupportedCapabilityError
from .signature import FieldSpec, Signature, TypeExpr

if TYPE_CHECKING:
    from .adapter import Adapter

__all__ = [
    "ADAPTER_ATTRIBUTES",
    "Metric",
    "Registry",
    "Tool",
    "adapters",
    "dspy_modules",
    "is_adapter",
    "load_adapter",
    "metric",
    "metrics",
    "registered_backend",
    "retrievers",
    "tools",
]

T = TypeVar("T")


class Registry(Generic[T]):
    """Exact-name registry backed by an entry-point group."""

    def __init__(self, group: str, kind: str):
        self.group = group
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None) -> Any:
        """Register ``obj`` under ``name``; without ``obj``, works as a decorator."""
        if obj is None:
            def decorator(target: T) -> T:
                self._items[name] = self._wrap(name, target)
                return target

            return decorator
        self._items[name] = self._wrap(name, obj)
        return obj

    def unregister(self, name: str) -> None:
        """Forget ``name`` (tests, or replacing a tool); an entry point of that name is found again."""
        self._items.pop(name, None)

    def _wrap(self, name: str, obj: Any) -> T:
        return typing.cast(T, obj)

    def _entry_points(self) -> dict[str, Any]:
        return {ep.name: ep for ep in entry_points(group=self.group)}

    def names(self) -> list[str]:
        """Registered and entry-point names, sorted (what error messages list as the choices)."""
        return sorted(set(self._items) | set(self._entry_points()))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in self._items or name in self._entry_points())

    def get(self, name: str) -> T:
        """The object registered under exactly ``name``; ``KeyError`` with the known names otherwise."""
        if name in self._items:
            return self._items[name]
        ep = self._entry_points().get(name)
        if ep is None:
            known = ", ".join(self.names()) or "none"
            raise KeyError(f"no {self.kind} registered as {name!r} (registered: {known})")
        obj = self._wrap(name, ep.load())
        self._items[name] = obj
        return obj


@dataclass(frozen=True)
class Tool:
    """A named callable a program may call. ``signature`` comes from its annotations or is declared."""

    name: str
    func: Callable[..., Any]
    signature: Signature
    side_effects: bool = False

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.func)

    def shape(self, value: Any, outputs: Sequence[str]) -> dict[str, Any]:
        """A call's return value as the step's outputs: a dict (or an object of named fields with ``keys()``,
        such as a ``dspy.Prediction``) with every output field (extra keys dropped), or the bare value of a
        single-output tool. Anything else is a :class:`TypeError`."""
        if not isinstance(value, dict) and callable(getattr(value, "keys", None)) and hasattr(value, "__getitem__") \
                and set(outputs) <= set(value.keys()):
            return {k: value[k] for k in outputs}
        if isinstance(value, dict) and set(outputs) <= set(value):
            return {k: value[k] for k in outputs}
        if len(outputs) == 1:
            return {outputs[0]: value}
        raise TypeError(f"tool {self.name!r} returned {type(value).__name__}; expected a dict with "
                        f"{', '.join(outputs)}")


_BARE = {dict: dict[str, Any], list: list[Any], tuple: tuple[Any, ...]}


def tool_signature(func: Callable[..., Any]) -> Signature:
    """Inputs from the parameters, outputs from the return annotation (a TypedDict's fields, or ``result``).

    A bare ``dict``/``list`` annotation means ``dict[str, Any]``/``list[Any]``."""
    hints = {k: _BARE.get(v, v) for k, v in typing.get_type_hints(func).items()}
    inputs: dict[str, FieldSpec] = {}
    for pname, param in inspect.signature(func).parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        ann = hints.get(pname, str)
        inputs[pname] = FieldSpec(type=str(TypeExpr.from_annotation(ann)))
    ret = hints.get("return", str)
    outputs: dict[str, FieldSpec]
    if typing.is_typeddict(ret):
        outputs = {k: FieldSpec(type=str(TypeExpr.from_annotation(v))) for k, v in typing.get_type_hints(ret).items()}
    elif _is_model(ret) and not set(ret.model_fields) & set(inputs):
        # a pydantic model's fields are the outputs (the value is dumped to JSON data); a model sharing a
        # name with a parameter (``snapshot(city) -> Place(city, ...)``) stays one ``result`` output instead
        outputs = {k: FieldSpec(type=str(TypeExpr.from_annotation(_BARE.get(f.annotation, f.annotation))),
                                desc=f.description)
                   for k, f in ret.model_fields.items()}
    else:
        outputs = {"result": FieldSpec(type=str(TypeExpr.from_annotation(ret)))}
    doc = inspect.getdoc(func)
    return Signature(instructions=doc, inputs=inputs, outputs=outputs)


def _is_model(annotation: Any) -> bool:
    from pydantic import BaseModel

    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _plain_results(func: Callable[..., Any]) -> Callable[..., Any]:
    """``func`` with a pydantic model result turned into JSON data (``model_dump(mode="json")``), so a
    tool may return a model where a dict is expected."""
    def plain(value: Any) -> Any:
        return value.model_dump(mode="json") if _is_model(type(value)) else value

    if inspect.iscoroutinefunction(func):
        @functools.wraps(func)
        async def run_async(*args: Any, **kwargs: Any) -> Any:
            return plain(await func(*args, **kwargs))
        return run_async

    @functools.wraps(func)
    def run(*args: Any, **kwargs: Any) -> Any:
        return plain(func(*args, **kwargs))
    return run


class ToolRegistry(Registry[Tool]):
    def _wrap(self, name: str, obj: Any) -> Tool:
        if isinstance(obj, Tool):
            return obj
        if not callable(obj):
            raise TypeError(f"tool {name!r} must be callable")
        return Tool(name=name, func=_plain_results(obj), signature=tool_signature(obj),
                    side_effects=bool(getattr(obj, "__stepbridge_side_effects__", False)))

    def register(self, name: str, obj: Any = None, *, side_effects: bool = False) -> Any:
        """Register a tool; ``side_effects=True`` means a run using it is never retried elsewhere."""
        def apply(target: Any) -> Any:
            tool = self._wrap(name, target)
            if side_effects and not tool.side_effects:
                tool = Tool(tool.name, tool.func, tool.signature, True)
            self._items[name] = tool
            return target

        return apply if obj is None else apply(obj)


class DSPyModuleRegistry(Registry[Any]):
    """DSPy modules by name: a module instance (copied for each use) or a factory returning one."""

    def instance(self, name: str) -> Any:
        """A fresh module for ``name``: a registered instance is deep-copied (a program never mutates it),
        a registered class or factory is called."""
        registered = self.get(name)
        if hasattr(registered, "named_parameters") and not isinstance(registered, type):
            return registered.deepcopy()
        if not callable(registered):
            raise TypeError(f"DSPy module {name!r} is registered as {type(registered).__name__}, not a "
                            "dspy.Module or a factory returning one")
        return registered()


#: ``(example, prediction) -> float | bool`` over plain dicts (built-ins: :mod:`stepbridge.builtin_metrics`).
Metric = Callable[..., Any]


class MetricRegistry(Registry[Metric]):
    def _wrap(self, name: str, obj: Any) -> Metric:
        if not callable(obj):
            raise TypeError(f"metric {name!r} must be callable as (example, prediction) -> float | bool")
        return typing.cast(Metric, obj)


adapters: Registry[Callable[..., Any]] = Registry("stepbridge.adapters", "adapter")
tools = ToolRegistry("stepbridge.tools", "tool")
"""Functions a program's ``tool`` modules and agents call by name: ``sb.tools.register("search", fn)``, or an
entry point in the ``stepbridge.tools`` group. Programs name tools; they never import code."""
retrievers: Registry[Callable[..., Any]] = Registry("stepbridge.retrievers", "retriever")
"""Retriever factories a ``retrieve`` module's ``{kind: NAME}`` picks (group ``stepbridge.retrievers``)."""
dspy_modules = DSPyModuleRegistry("stepbridge.dspy_modules", "DSPy module")
"""DSPy modules a ``dspy_module`` step runs by name (group ``stepbridge.dspy_modules``)."""
metrics = MetricRegistry("stepbridge.metrics", "metric")
"""Metrics ``stepbridge eval --metric NAME`` scores with, as ``(example, prediction) -> float | bool``."""


def metric(name: str, field: str | None = None) -> Metric:
    """The metric registered as exactly ``name``; with ``field`` (``NAME:FIELD``), bound to that field.

    ``KeyError`` for an unknown name, ``TypeError`` when the metric takes no ``field`` keyword."""
    func = metrics.get(name)
    if field is None:
        return func
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):
        params = {}  # type: ignore[assignment]
    if "field" not in params and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        raise TypeError(f"metric {name!r} compares no single field: use {name!r} without ':{field}'")
    return functools.partial(func, field=field)


ADAPTER_ATTRIBUTES = ("name", "capabilities", "prepare", "run", "aclose")


def is_adapter(obj: object) -> bool:
    """An adapter *instance*: has the protocol's attributes and is not a class (a class has them too)."""
    return not inspect.isclass(obj) and all(hasattr(obj, a) for a in ADAPTER_ATTRIBUTES)


def load_adapter(spec: str | Adapter | Callable[..., Adapter], **kwargs: Any) -> Adapter:
    """An adapter instance from a registered name (``native``), ``package.module:factory``, an adapter
    class or factory (called with ``kwargs``), or an instance (returned as is). Anything else is an
    :class:`UnsupportedCapabilityError`. This is operator input, so an import path is allowed here
    (never from a program or a stored row)."""
    where = spec if isinstance(spec, str) else getattr(spec, "__qualname__", type(spec).__name__)
    if isinstance(spec, str):
        try:
            if ":" in spec:
                module_name, _, attr = spec.partition(":")
                factory = getattr(importlib.import_module(module_name), attr)
            else:
                factory = adapters.get(spec)
        except KeyError as exc:
            raise UnsupportedCapabilityError(str(exc.args[0]), adapter=spec) from None
        except ImportError as exc:
            hint = " (install stepbridge[dspy])" if "dspy" in str(exc) else ""
            raise UnsupportedCapabilityError(f"cannot load adapter {spec!r}: {exc}{hint}", adapter=spec) from exc
        except Exception as exc:
            raise UnsupportedCapabilityError(f"cannot load adapter {spec!r}: {type(exc).__name__}: {exc}",
                                             adapter=spec) from exc
    else:
        factory = spec
    if is_adapter(factory):  # an instance, given or registered
        if kwargs:
            raise UnsupportedCapabilityError(
                f"adapter options ({', '.join(sorted(kwargs))}) cannot be applied to the adapter instance "
                f"{where!r}; pass its class or factory instead", adapter=str(where))
        return factory
    if not callable(factory):
        raise UnsupportedCapabilityError(
            f"{where!r} is not an adapter: expected a registered name, 'package.module:factory', an adapter "
            "class or factory, or an adapter instance", adapter=str(where))
    try:
        adapter = factory(**kwargs)
    except StepbridgeError:
        raise  # already typed (e.g. a pool that cannot reach its store)
    except Exception as exc:
        raise UnsupportedCapabilityError(f"cannot load adapter {where!r}: {type(exc).__name__}: {exc}",
                                         adapter=str(where)) from exc
    if not is_adapter(adapter):
        missing = [a for a in ADAPTER_ATTRIBUTES if not hasattr(adapter, a)]
        why = f"missing: {', '.join(missing)}" if missing else "it returned a class, not an instance"
        raise UnsupportedCapabilityError(f"{where!r} did not give an adapter ({why})", adapter=str(where))
    return adapter


def registered_backend(name: str) -> Callable[..., Any]:
    """The adapter factory (or class) registered under exactly ``name`` (a stored backend column).

    Never an import path: anything with a ``:`` is refused before the registry is asked, and the
    registry only knows explicit registrations and installed ``stepbridge.adapters`` entry points.
    """
    if not isinstance(name, str) or not name or ":" in name or name not in adapters:
        known = ", ".join(adapters.names()) or "none"
        raise UnsupportedCapabilityError(
            f"recorded on backend {name!r}, which is not a registered adapter name (registered: {known}); "
            "resume it with an explicit adapter (--backend)", adapter=str(name))
    return adapters.get(name)
