"""What the suite's tests share: the adapter under test, the native baseline, the suite's reference LM,
and one event loop (in a background thread) that every adapter call runs on.

Adapters keep connections, processes and locks bound to the event loop that created them, so the
suite creates each adapter *on* its loop and runs every call there; the test thread waits on the
result with a generous liveness bound (never a performance threshold).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import importlib.metadata
import json
import os
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from stepbridge.adapter import RunOptions
from stepbridge.program import LMConfig, Program
from stepbridge.result import RunResult, StepTrace

from .fixtures import LEDGER_ENV
from .server import SuiteLM, running_suite_lm

__all__ = ["LIVENESS_S", "SUITE_MODEL", "AdapterStuck", "Harness", "LoopThread", "Observed", "adapter_package",
           "adapter_version", "describe_spec", "environment"]

T = TypeVar("T")

#: How long one adapter call may take before the suite calls the adapter stuck (a liveness bound).
LIVENESS_S = float(os.environ.get("STEPBRIDGE_CONFORMANCE_LIVENESS", "120"))

#: The model the suite's LM profile names by default. The reference LM answers every model name alike
#: (only fault segments such as ``reference/garbage`` change its answers); this one is a name DSPy's LM
#: engine knows to accept JSON schemas, so a DSPy-based adapter sends the ``response_format`` DSPy's
#: JSONAdapter builds, which the suite then compares. Nothing is sent anywhere but the suite's server.
SUITE_MODEL = "openai/gpt-4o-mini"
#: Retries of the suite's LM profile (the ``ratelimit-1`` / ``flaky-1`` cases need one).
SUITE_MAX_RETRIES = 1


class AdapterStuck(AssertionError):
    """An adapter call did not return within the liveness bound."""


class LoopThread:
    """An asyncio event loop running in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="conformance-loop", daemon=True)
        self.thread.start()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = LIVENESS_S, what: str = "the adapter") -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise AdapterStuck(
                f"{what} did not return within {timeout:.0f}s (the suite's liveness bound; set "
                "STEPBRIDGE_CONFORMANCE_LIVENESS to change it). A call that never returns usually means a "
                "lost response, a deadlock, or a timeout/cancellation the adapter ignores.") from None

    def close(self) -> None:
        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(cancel_all(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        if not self.loop.is_running():
            self.loop.close()


def describe_spec(spec: Any) -> str:
    if isinstance(spec, str):
        return spec
    module = getattr(spec, "__module__", None)
    qual = getattr(spec, "__qualname__", None) or type(spec).__qualname__
    return f"{module}:{qual}" if module else str(qual)


@functools.cache
def _distributions() -> dict[str, list[str]]:
    """Top-level import name -> distributions (scanning every installed package: done once per process)."""
    try:
        return dict(importlib.metadata.packages_distributions())
    except Exception:
        return {}


def adapter_package(adapter: Any) -> dict[str, str] | None:
    """``{name, version}`` of the installed distribution the adapter's class ships in (None when it is not
    installed, e.g. a module on ``PYTHONPATH``)."""
    top = type(adapter).__module__.split(".")[0]
    with contextlib.suppress(Exception):
        dists = _distributions().get(top) or []
        if dists:
            return {"name": dists[0], "version": importlib.metadata.version(dists[0])}
    return None


def adapter_version(adapter: Any) -> str | None:
    """``adapter.version`` when it has one, else the version of the distribution its module ships in."""
    version = getattr(adapter, "version", None) or getattr(adapter, "__version__", None)
    if isinstance(version, str):
        return version
    package = adapter_package(adapter)
    return package["version"] if package else None


def environment() -> dict[str, Any]:
    versions: dict[str, Any] = {}
    for dist in ("stepbridge", "pytest", "dspy", "pydantic", "httpx", "pyzmq"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[dist] = importlib.metadata.version(dist)
    return {"python": sys.version.split()[0], "implementation": platform.python_implementation(),
            "platform": platform.platform(), "packages": versions}


def as_trace(records: Any) -> list[StepTrace]:
    """A trace as StepTrace objects (adapters may hand back dicts after a process boundary)."""
    out = []
    for r in records or []:
        out.append(r if isinstance(r, StepTrace) else StepTrace.model_validate(r))
    return out


def messages_of(bodies: list[Any]) -> list[str]:
    """Each request's chat messages as canonical JSON (what the equivalence checks compare)."""
    return [json.dumps(b.get("messages"), sort_keys=True, ensure_ascii=False) for b in bodies if isinstance(b, dict)]


@dataclass
class Observed:
    """What one call did: its result or error, and what reached the suite's LM while it ran."""

    result: Any
    error: BaseException | None
    entries: list[dict[str, Any]]
    mark: int
    ended: float  # time.time() when the call returned or raised

    @property
    def bodies(self) -> list[Any]:
        return [e["body"] for e in self.entries]


class Harness:
    """The adapter under test, the native baseline and the suite's reference LM, for one test class."""

    def __init__(self, factory: Callable[..., Any], spec: str, kwargs: dict[str, Any] | None = None):
        self.factory = factory
        self.spec = spec
        self.kwargs = dict(kwargs or {})
        self._stack = contextlib.ExitStack()
        self.tmp = Path(self._stack.enter_context(tempfile.TemporaryDirectory(prefix="stepbridge-conformance-")))
        self.lm: SuiteLM = self._stack.enter_context(running_suite_lm())
        self._stack.enter_context(_suite_environment(self.lm, self.tmp))
        self.loop = LoopThread()
        self._stack.callback(self.loop.close)
        self.adapter: Any = None
        self.native: Any = None
        self._runners: dict[int, Any] = {}
        self._extra: list[Any] = []
        self._fresh: Any = None
        #: an out-of-process adapter's second instance, started in the background once the first one ran
        #: (its workers start while the other tests run, instead of when the rehydration test needs it)
        self._warming: concurrent.futures.Future[Any] | None = None
        self._warmed = False
        self.fresh_before: set[tuple[str, int]] | None = None
        #: the adapter's observation of each case run by test_case, which test_equivalence then judges
        self.case_runs: dict[str, Observed] = {}
        self.adapter = self.loop.call(self._create(factory, self.kwargs), what=f"creating adapter {spec!r}")
        self.native = self.loop.call(self._create_native(), what="creating the native adapter")

    # -- lifecycle ---------------------------------------------------------------------------------
    @staticmethod
    async def _create(factory: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
        from stepbridge.registry import load_adapter

        return load_adapter(factory, **kwargs)

    @staticmethod
    async def _create_native() -> Any:
        from stepbridge.adapters.native import NativeAdapter

        return NativeAdapter()

    def new_adapter(self) -> Any:
        """A fresh instance from the factory (closed with the harness)."""
        adapter = self.loop.call(self._create(self.factory, self.kwargs), what=f"creating adapter {self.spec!r}")
        self._extra.append(adapter)
        return adapter

    def fresh_adapter(self) -> Any:
        """One fresh instance shared by the tests that need a second one (created on first use, or started in
        the background: see :meth:`_warm`; the connections open to the suite's LM before it first runs are
        ``fresh_before``, so ``aclose`` can be judged on it)."""
        if self._fresh is None:
            warmed = self._take_warmed()
            self.fresh_before = self.lm.connections()
            self._fresh = warmed if warmed is not None else self.new_adapter()
        return self._fresh

    def _warm_later(self, program: Program) -> None:
        """Start the second instance of an out-of-process adapter in the background (once): ``prepare`` starts
        its workers, which open no connection to the LM before they run something."""
        if self._warmed or self._fresh is not None or "out_of_process" not in self.capabilities:
            return
        self._warmed = True

        async def warm() -> Any:
            adapter = await self._create(self.factory, self.kwargs)
            self._extra.append(adapter)
            await adapter.prepare(program)
            return adapter

        self._warming = asyncio.run_coroutine_threadsafe(warm(), self.loop.loop)

    def _take_warmed(self) -> Any:
        """The instance :meth:`_warm_later` started (None when none was, or it failed: it is closed then)."""
        warming, self._warming = self._warming, None
        if warming is None:
            return None
        try:
            return warming.result(LIVENESS_S)
        except Exception:
            return None

    def forget(self, adapter: Any) -> None:
        """The test closed ``adapter`` itself: the harness must not use or close it again."""
        if adapter is self._fresh:
            self._fresh = None
        if adapter in self._extra:
            self._extra.remove(adapter)
        for key in [k for k, r in self._runners.items() if r.adapter is adapter]:
            del self._runners[key]

    def close(self) -> None:
        try:
            self._take_warmed()  # still starting (its test did not run): let it finish, then close it with the rest
            for adapter in [*self._extra, self.adapter, self.native]:
                if adapter is not None:
                    with contextlib.suppress(Exception):
                        self.loop.call(adapter.aclose(), timeout=60, what="adapter.aclose()")
        finally:
            self._stack.close()

    # -- properties --------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return str(getattr(self.adapter, "name", "?"))

    @property
    def capabilities(self) -> frozenset[str]:
        caps: Any = getattr(self.adapter, "capabilities", frozenset())
        return frozenset(caps)

    # -- running -----------------------------------------------------------------------------------
    def runner(self, adapter: Any = None, store: Any = None) -> Any:
        """A core Runner around ``adapter`` (never closed by the test; the harness closes adapters)."""
        from stepbridge.runner import Runner

        adapter = self.adapter if adapter is None else adapter
        key = id(adapter) if store is None else id(adapter) ^ id(store)
        runner = self._runners.get(key)
        if runner is None:
            runner = self._runners[key] = Runner(adapter, store=store)
        return runner

    @staticmethod
    def options(lm: dict[str, Any] | LMConfig | None = None, timeout: float | None = None, **kw: Any) -> RunOptions:
        config = LMConfig(**lm) if isinstance(lm, dict) else lm
        return RunOptions(lm=config, timeout=timeout, **kw)

    def run(self, program: Program, inputs: dict[str, Any], *, native: bool = False, direct: bool = False,
            options: RunOptions | None = None, adapter: Any = None, what: str | None = None) -> RunResult:
        """Run through the core Runner (or ``adapter.prepare`` + ``adapter.run`` when ``direct``)."""
        target = self.native if native else (self.adapter if adapter is None else adapter)
        options = options or RunOptions()
        label = what or ("the native adapter" if native else f"adapter {self.name!r}")
        if direct:
            async def go() -> RunResult:
                await target.prepare(program)
                result: RunResult = await target.run(program, inputs, options)
                return result

            result = self.loop.call(go(), what=label)
        else:
            result = self.loop.call(self.runner(target).run(program, inputs, options), what=label)
        if target is self.adapter:
            self._warm_later(program)
        return result

    def observe(self, fn: Callable[[], T]) -> Observed:
        """Call ``fn``; its result or exception and the LM requests it caused."""
        self.lm.reset_faults()
        mark = self.lm.mark()
        result: T | None = None
        error: BaseException | None = None
        try:
            result = fn()
        except AdapterStuck:
            raise
        except Exception as exc:
            error = exc
        ended = time.time()
        return Observed(result, error, self.lm.entries(mark), mark, ended)

    def requests_after(self, moment: float, mark: int) -> list[dict[str, Any]]:
        """Requests (after ``mark``) that reached the LM after ``moment`` (a time.time())."""
        return [e for e in self.lm.entries(mark) if e["time"] > moment]


@contextlib.contextmanager
def _suite_environment(lm: SuiteLM, tmp: Path) -> Iterator[None]:
    """Point the default LM profile at the suite's reference LM and the suite's tools at its ledger;
    isolate from the user's config. Processes the adapter starts inherit this environment."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("STEPBRIDGE_LM_")}
    saved_config = os.environ.get("STEPBRIDGE_CONFIG")
    saved_ledger = os.environ.get(LEDGER_ENV)
    for key in saved:
        del os.environ[key]
    os.environ["STEPBRIDGE_LM_BASE_URL"] = lm.url
    os.environ[LEDGER_ENV] = lm.ledger_url
    os.environ["STEPBRIDGE_LM_MODEL"] = SUITE_MODEL
    config = tmp / "suite-config.toml"
    # the suite is the operator here: one retry recovers from its transient faults
    config.write_text(f"[lm.profiles.default]\nmax_retries = {SUITE_MAX_RETRIES}\ntimeout = 60\n", encoding="utf-8")
    os.environ["STEPBRIDGE_CONFIG"] = str(config)
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    try:
        yield
    finally:
        for key in [k for k in os.environ if k.startswith("STEPBRIDGE_LM_")]:
            del os.environ[key]
        os.environ.update(saved)
        if saved_config is None:
            os.environ.pop("STEPBRIDGE_CONFIG", None)
        else:
            os.environ["STEPBRIDGE_CONFIG"] = saved_config
        if saved_ledger is None:
            os.environ.pop(LEDGER_ENV, None)
        else:
            os.environ[LEDGER_ENV] = saved_ledger
