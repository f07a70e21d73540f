"""DSPy interop under its contract name: ``stepbridge.dspy.to_module(program)`` and friends.

The implementation lives in :mod:`stepbridge.dspy_interop` (importing this module does not import
DSPy; the functions do, when called).
"""

from .dspy_interop import export_state, from_module, import_module, optimize, to_module, verify

__all__ = ["export_state", "from_module", "import_module", "optimize", "to_module", "verify"]
