"""What a module takes and gives, as steps see it: one function for validation and every adapter.

A module's *interface* is a :class:`~stepbridge.signature.Signature` of the inputs a ``call`` passes and
the outputs its result has, in order: ``chain_of_thought`` puts ``reasoning`` first, ``react`` gives
``trajectory`` and ``reasoning`` before the signature's outputs (``dspy.ReAct`` returns them so),
``multi_chain_comparison`` takes ``completions`` and answers with a ``rationale`` first, and
``best_of_n`` / ``refine`` look exactly like the module they wrap.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .signature import FieldSpec, Signature

__all__ = ["COMPLETIONS_TYPE", "TRAJECTORY_TYPE", "module_interface"]

#: ``dspy.ReAct``'s trajectory: ``thought_i``, ``tool_name_i``, ``tool_args_i``, ``observation_i`` -> value.
TRAJECTORY_TYPE = "dict[str, Any]"
#: ``dspy.MultiChainComparison``'s ``completions``: objects with ``reasoning`` and the outputs.
COMPLETIONS_TYPE = "list[dict[str, Any]]"


def module_interface(module: Any, modules: Mapping[str, Any] | None = None) -> Signature | None:
    """The interface of ``module`` (``modules``: the program's modules, to resolve a wrapped module).

    None when it cannot be known (an unknown tool, or a wrapper around a missing module)."""
    from .formats import chain_of_thought

    kind = getattr(module, "type", None)
    if kind == "chain_of_thought":
        return chain_of_thought(module.effective_signature)
    if kind == "tool":
        from .registry import tools

        if module.signature is not None:
            return module.signature
        if module.tool not in tools:
            return None
        return tools.get(module.tool).signature
    if kind == "react":
        sig: Signature = module.effective_signature
        outputs = {"trajectory": FieldSpec(type=TRAJECTORY_TYPE), "reasoning": FieldSpec(type="str"), **sig.outputs}
        return Signature(instructions=sig.instructions, inputs=dict(sig.inputs), outputs=outputs)
    if kind == "multi_chain_comparison":
        sig = module.effective_signature
        inputs = {"completions": FieldSpec(type=COMPLETIONS_TYPE), **sig.inputs}
        outputs = {"rationale": FieldSpec(type="str"), **sig.outputs}
        return Signature(instructions=sig.instructions, inputs=inputs, outputs=outputs)
    if kind in ("best_of_n", "refine"):
        inner = (modules or {}).get(module.module)
        if inner is None or getattr(inner, "type", None) in ("best_of_n", "refine"):
            return None
        return module_interface(inner, modules)
    found = getattr(module, "effective_signature", None)
    return found if isinstance(found, Signature) else None
