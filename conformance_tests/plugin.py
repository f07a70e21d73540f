"""The suite's pytest plugin: ``pytest -p stepbridge.conformance.plugin --pyargs stepbridge.conformance``.

Options:

``--adapter SPEC``
    the adapter to certify: ``pkg.mod:factory`` or a name registered in the ``stepbridge.adapters``
    entry-point group (used by the suite's own test class; subclasses set ``adapter_factory``).
``--expected-failures FILE``
    known failures, YAML: ``test name or glob: reason``. Each entry needs a reason; matching tests
    become strict expected failures (a pass fails the run); entries matching nothing warn.
``--conformance-report DIR``
    write ``conformance.json``, ``conformance.md`` (the matrix) and ``junit.xml`` there.

The plugin is never loaded implicitly (no ``pytest11`` entry point): pass ``-p`` or list it in a
conftest's ``pytest_plugins``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
import yaml

from .cases import name_matches
from .report import ADAPTERS_KEY, build_report, render_markdown, write_report

EXPECTED_KEY = pytest.StashKey[dict[str, str]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("stepbridge-conformance", "stepbridge adapter conformance suite")
    group.addoption("--adapter", default=None, metavar="SPEC",
                    help="adapter to certify: pkg.mod:factory or a registered adapter name")
    group.addoption("--expected-failures", default=None, metavar="FILE",
                    help="YAML file of known failures (test name or glob: reason); strict")
    group.addoption("--conformance-report", default=None, metavar="DIR",
                    help="write conformance.json, conformance.md and junit.xml to DIR")
    group.addoption("--certify", action="store_true", default=False,
                    help="certification mode: no core test may be skipped or expected to fail")


def load_expected_failures(path: str | Path) -> dict[str, str]:
    """``{pattern: reason}`` from a YAML mapping (or a list of ``{test, reason}``); reasons are required."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise pytest.UsageError(f"--expected-failures: cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise pytest.UsageError(f"--expected-failures: {path} is not valid YAML: {exc}") from None
    if isinstance(data, list):
        try:
            data = {str(e["test"]): e.get("reason") for e in data}
        except (TypeError, KeyError):
            raise pytest.UsageError(f"--expected-failures: {path}: list entries need 'test' and 'reason'") from None
    if not isinstance(data, dict):
        raise pytest.UsageError(f"--expected-failures: {path} must map test names (or globs) to reasons")
    entries: dict[str, str] = {}
    for pattern, reason in data.items():
        if not isinstance(reason, str) or not reason.strip():
            raise pytest.UsageError(f"--expected-failures: {path}: entry {pattern!r} has no reason; every known "
                                    "failure needs one")
        entries[str(pattern)] = reason.strip()
    return entries


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    report_dir = config.getoption("--conformance-report", default=None)
    if report_dir and not getattr(config.option, "xmlpath", None):
        Path(report_dir).mkdir(parents=True, exist_ok=True)
        config.option.xmlpath = str(Path(report_dir) / "junit.xml")
    path = config.getoption("--expected-failures", default=None)
    config.stash[EXPECTED_KEY] = load_expected_failures(path) if path else {}
    if not config.pluginmanager.has_plugin("stepbridge-conformance-reporter"):
        config.pluginmanager.register(ConformanceReporter(config), "stepbridge-conformance-reporter")


def _matches(item: pytest.Item, pattern: str) -> bool:
    return (name_matches(item.name, pattern) or name_matches(item.nodeid, pattern)
            or name_matches(item.nodeid, "*::" + pattern))


def _is_core(meta: tuple[str, str, str]) -> bool:
    """In the core set: what every adapter must do (capability ``core``, judged on the adapter)."""
    return meta[0] == "core" and meta[2] == "adapter"


#: The order suite tests run in: quick, telling checks first (a broken adapter fails within seconds), the
#: checks that wait on purpose (timeouts, cancellation) last.
_ORDER = {"test_declares_adapter_protocol": 0, "case": 1, "equivalence": 2, "negative": 3, "behaviour": 4}


def _cheap_first(items: list[pytest.Item]) -> None:
    """Within each test class (one adapter each), the quick checks first; classes stay whole and in order, so
    each adapter's harness is set up once."""
    from .suite import conformance_meta

    classes: dict[Any, int] = {}
    for item in items:
        classes.setdefault(getattr(item, "cls", None), len(classes))

    def rank(pair: tuple[int, pytest.Item]) -> tuple[int, int, int]:
        index, item = pair
        group = classes[getattr(item, "cls", None)]
        meta = conformance_meta(item)
        if meta is None:
            return (group, -1, index)
        return (group, _ORDER.get(getattr(item, "originalname", item.name), _ORDER.get(meta[1], 4)), index)

    items[:] = [item for _, item in sorted(enumerate(items), key=rank)]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    from .suite import conformance_meta

    certify = bool(config.getoption("--certify", default=False))
    expected = config.stash.get(EXPECTED_KEY, {})
    used: set[str] = set()
    refused: list[str] = []
    for item in items:
        meta = conformance_meta(item)
        if meta is None:
            continue
        class_expected = getattr(getattr(item, "cls", None), "expected_failures", None) or {}
        marked = item.get_closest_marker("xfail") is not None or any(
            name_matches(item.name, p) for p in class_expected)
        for pattern, reason in expected.items():
            if _matches(item, pattern):
                item.add_marker(pytest.mark.xfail(strict=True, reason=f"expected failure: {reason}"))
                used.add(pattern)
                marked = True
                break
        if certify and marked and _is_core(meta):
            refused.append(item.name)
    _cheap_first(items)
    if refused:
        raise pytest.UsageError(
            f"--certify: core tests may not be expected to fail: {', '.join(refused[:10])}"
            + (f" (and {len(refused) - 10} more)" if len(refused) > 10 else "")
            + ". Remove them from the expected failures (and fix the adapter) to certify it.")
    stale = [p for p in expected if p not in used]
    reporter = config.pluginmanager.get_plugin("stepbridge-conformance-reporter")
    if reporter is not None:
        reporter.stale = stale
    for pattern in stale:
        warnings.warn(f"--expected-failures entry {pattern!r} matches no conformance test (stale: remove it)",
                      pytest.PytestWarning, stacklevel=1)


class ConformanceReporter:
    """Collects each suite test's capability, outcome, reason and duration; writes reports at the end."""

    def __init__(self, config: pytest.Config):
        self.config = config
        self.meta: dict[str, tuple[str, str, str, str]] = {}  # nodeid -> (capability, category, scope, class)
        self.results: dict[str, dict[str, Any]] = {}
        self.stale: list[str] = []
        self.reports: list[dict[str, Any]] = []

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        from .suite import conformance_meta

        for item in items:
            meta = conformance_meta(item)
            if meta is not None:
                parent = item.parent
                class_id = parent.nodeid if parent is not None else ""
                self.meta[item.nodeid] = (meta[0], meta[1], meta[2], class_id)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        meta = self.meta.get(report.nodeid)
        if meta is None:
            return
        entry = self.results.setdefault(report.nodeid, {
            "id": report.nodeid.rsplit("::", 1)[-1], "nodeid": report.nodeid, "capability": meta[0],
            "category": meta[1], "scope": meta[2], "outcome": "passed", "reason": None, "duration": 0.0,
            "_class": meta[3]})
        entry["duration"] = round(entry["duration"] + report.duration, 4)
        outcome, reason = _outcome(report)
        if outcome is None:
            return
        # the first non-passing phase decides (a teardown error after a pass is an error)
        if (entry["outcome"] == "passed" or report.when == "call") and not (
                entry["outcome"] in ("failed", "error") and outcome == "passed"):
            entry["outcome"], entry["reason"] = outcome, reason

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        from .harness import environment
        from .suite import SUITE_VERSION

        adapters = self.config.stash.get(ADAPTERS_KEY, {})
        by_class: dict[str, list[dict[str, Any]]] = {}
        for entry in self.results.values():
            by_class.setdefault(entry["_class"], []).append(entry)
        env = environment()
        self.reports = []
        for class_id, entries in by_class.items():
            adapter = adapters.get(class_id)
            if adapter is None:  # the adapter could not be created (or every test was deselected)
                spec = self.config.getoption("--adapter", default=None) or class_id
                adapter = {"name": str(spec), "version": None, "spec": str(spec), "class": "?", "capabilities": []}
            tests = [{k: v for k, v in e.items() if not k.startswith("_")} for e in entries]
            self.reports.append(build_report(adapter, tests, suite_version=SUITE_VERSION, environment=env,
                                             stale_expected_failures=self.stale,
                                             certify=bool(self.config.getoption("--certify", default=False))))
        if any(r.get("certification", {}).get("certified") is False for r in self.reports) and \
                session.exitstatus == 0:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        report_dir = self.config.getoption("--conformance-report", default=None)
        if report_dir:
            for i, report in enumerate(self.reports):
                stem = "conformance" if len(self.reports) == 1 else f"conformance-{i + 1}-{report['adapter']['name']}"
                write_report(Path(report_dir), report, stem)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.reports:
            return
        terminalreporter.section("stepbridge conformance")
        for report in self.reports:
            terminalreporter.write(render_markdown(report, heading=3))
            certification = report.get("certification") or {}
            if certification.get("certified") is False:
                terminalreporter.write_line("not certified: " + "; ".join(certification.get("problems", [])),
                                            red=True)
        for pattern in self.stale:
            terminalreporter.write_line(f"stale expected-failures entry (matches no test): {pattern}", yellow=True)
        report_dir = self.config.getoption("--conformance-report", default=None)
        if report_dir:
            terminalreporter.write_line(f"reports written to {report_dir}")


def _outcome(report: pytest.TestReport) -> tuple[str | None, str | None]:
    if report.when == "setup":
        if report.skipped:
            return "skipped", _skip_reason(report)
        if report.failed:
            return "error", _failure_text(report)
        return None, None
    if report.when == "call":
        wasxfail = getattr(report, "wasxfail", None)
        if report.skipped and wasxfail is not None:
            return "xfailed", str(wasxfail)
        if report.skipped:
            return "skipped", _skip_reason(report)
        if report.failed:
            return "failed", _failure_text(report)
        return "passed", None
    if report.failed:
        return "error", _failure_text(report)
    return None, None


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def _failure_text(report: pytest.TestReport) -> str:
    crash = getattr(getattr(report, "longrepr", None), "reprcrash", None)
    text = getattr(crash, "message", None) or report.longreprtext
    text = str(text).strip()
    return text if len(text) <= 2000 else text[:1999] + "…"
