"""``load_adapter``: classes and factories are called, instances returned, anything else a typed error."""

from __future__ import annotations

from typing import Any

import pytest
from stepbridge import StorageError, UnsupportedCapabilityError
from stepbridge.adapters.native import NativeAdapter
from stepbridge.registry import adapters, is_adapter, load_adapter


class Counted:
    """A minimal adapter whose constructor records its options."""

    name = "counted"
    capabilities = frozenset({"async"})
    made: list[dict[str, Any]] = []

    def __init__(self, **options: Any) -> None:
        Counted.made.append(options)

    async def prepare(self, program: Any) -> None: ...

    async def run(self, program: Any, inputs: Any, options: Any) -> Any: ...

    async def aclose(self) -> None: ...


def test_a_class_is_instantiated_with_the_options() -> None:
    Counted.made.clear()
    adapter = load_adapter(Counted, flavour="x")
    assert isinstance(adapter, Counted) and Counted.made == [{"flavour": "x"}]


def test_a_registered_class_is_instantiated() -> None:
    # the shipped entry points register classes: this is what ``executions resume`` looks up
    assert isinstance(adapters.get("native"), type)
    assert isinstance(load_adapter(adapters.get("native")), NativeAdapter)
    assert isinstance(load_adapter("native"), NativeAdapter)


def test_a_factory_is_called_and_an_instance_returned_as_is() -> None:
    made = Counted()
    assert load_adapter(lambda: made) is made
    assert load_adapter(made) is made
    assert is_adapter(made) and not is_adapter(Counted)


@pytest.mark.parametrize("spec", [42, None, object(), "json:JSONDecoder", lambda: Counted, lambda: 3])
def test_anything_else_is_a_typed_error(spec: Any) -> None:
    with pytest.raises(UnsupportedCapabilityError) as info:
        load_adapter(spec)
    assert "adapter" in str(info.value)


def test_options_cannot_be_applied_to_an_instance() -> None:
    with pytest.raises(UnsupportedCapabilityError, match="cannot be applied"):
        load_adapter(Counted(), flavour="x")


def test_a_factory_failure_is_typed_and_typed_errors_keep_their_type() -> None:
    def broken() -> Any:
        raise RuntimeError("boom")

    def no_store() -> Any:
        raise StorageError("cannot reach the store")

    with pytest.raises(UnsupportedCapabilityError, match="RuntimeError: boom"):
        load_adapter(broken)
    with pytest.raises(StorageError, match="cannot reach the store"):
        load_adapter(no_store)


def test_adapter_setup_errors_are_typed() -> None:
    with pytest.raises(UnsupportedCapabilityError, match="cannot load adapter 'os:system'"):
        load_adapter("os:system")
    with pytest.raises(UnsupportedCapabilityError, match="did not give an adapter"):
        load_adapter("json:JSONDecoder")
    with pytest.raises(UnsupportedCapabilityError, match="no adapter registered as 'nope'"):
        load_adapter("nope")


class _NamedFields:
    """An object of named fields with ``keys()`` and ``[]`` (as a ``dspy.Prediction`` is), not a dict."""

    def __init__(self, **fields: Any) -> None:
        self._fields = fields

    def keys(self) -> Any:
        return self._fields.keys()

    def __getitem__(self, key: str) -> Any:
        return self._fields[key]


def test_a_tool_result_of_named_fields_is_shaped_like_a_dict() -> None:
    from stepbridge.registry import Tool
    from stepbridge.signature import Signature

    tool = Tool("t", lambda q: q, Signature.model_validate("q -> passages: list[str], n: int"))
    value = _NamedFields(passages=["a"], n=1, extra="dropped")
    assert tool.shape(value, ["passages", "n"]) == {"passages": ["a"], "n": 1}
    with pytest.raises(TypeError, match="expected a dict with passages, missing"):
        tool.shape(_NamedFields(passages=["a"]), ["passages", "missing"])
    assert tool.shape(value, ["result"]) == {"result": value}  # one output without that field: the bare value
