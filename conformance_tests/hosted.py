"""Adapter factories with the suite's tools and DSPy modules registered in *their* process.

Tools are registered by name in the process that runs them. An out-of-process adapter (a pool)
runs programs in worker processes, so the workers must register the suite's fixtures too. Host
these factories in the workers::

    stepbridge conformance pool          # = stepbridge.conformance.hosted:pool_native

or, for your own pool, start its workers with ``--backend stepbridge.conformance.hosted:native``.
The same goes for Ray actors (``stepbridge.conformance.hosted:ray_native``, ``ray_dspy``).
"""

from __future__ import annotations

from typing import Any

from .fixtures import register

__all__ = ["BUILTIN_HOSTED", "dspy", "hosted_spec", "native", "pool_dspy", "pool_native", "ray_dspy", "ray_native"]

#: The built-in out-of-process backends by the names users certify them under
#: (``stepbridge conformance ray``): their workers must register the suite's fixtures, so a bare
#: name means the hosting factory below. ``pool``/``ray`` host native, as ``--backend pool`` does.
BUILTIN_HOSTED = {
    "pool": "pool_native", "pool[native]": "pool_native", "pool[dspy]": "pool_dspy",
    "ray": "ray_native", "ray[native]": "ray_native", "ray[dspy]": "ray_dspy",
}


def hosted_spec(spec: str) -> str:
    """The factory spec that certifies ``spec``: a built-in out-of-process name maps to its hosting factory."""
    name = BUILTIN_HOSTED.get(spec.strip())
    return f"{__name__}:{name}" if name else spec


def native(**kwargs: Any) -> Any:
    """The native adapter, with the suite's fixtures registered in this process."""
    register()
    from stepbridge.adapters.native import NativeAdapter

    return NativeAdapter(**kwargs)


def dspy(**kwargs: Any) -> Any:
    """The DSPy adapter, with the suite's fixtures registered in this process."""
    register()
    from stepbridge.adapters.dspy import DSPyAdapter

    return DSPyAdapter(**kwargs)


def pool_native(**kwargs: Any) -> Any:
    """A local pool (2 workers) hosting :func:`native`."""
    from stepbridge.bridge.pool import PoolAdapter

    return PoolAdapter(**{"workers": 2, "backend": "stepbridge.conformance.hosted:native", **kwargs})


def pool_dspy(**kwargs: Any) -> Any:
    """A local pool (2 workers) hosting :func:`dspy`."""
    from stepbridge.bridge.pool import PoolAdapter

    return PoolAdapter(**{"workers": 2, "backend": "stepbridge.conformance.hosted:dspy", **kwargs})


def ray_native(**kwargs: Any) -> Any:
    """Ray actors (2, on a local instance unless ``RAY_ADDRESS`` names a cluster) hosting :func:`native`."""
    from stepbridge.bridge.ray import RayAdapter

    return RayAdapter(**{"actors": 2, "backend": "stepbridge.conformance.hosted:native", **kwargs})


def ray_dspy(**kwargs: Any) -> Any:
    """Ray actors (2) hosting :func:`dspy`."""
    from stepbridge.bridge.ray import RayAdapter

    return RayAdapter(**{"actors": 2, "backend": "stepbridge.conformance.hosted:dspy", **kwargs})
