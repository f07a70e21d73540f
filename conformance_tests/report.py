"""Conformance reports: ``conformance.json`` and a Markdown matrix (✅/⚠️/❌/— per capability).

The JSON is the source of truth (``matrix.py`` combines several of them into ``CONFORMANCE.md``);
JUnit XML comes from pytest's own ``--junitxml``. The matrix counts only what the adapter can fail:
checks stepbridge's core makes before calling the adapter (input validation, the Runner's capability
check, program validation) are listed in a separate "core" section.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from stepbridge.adapter import CAPABILITIES

__all__ = [
    "ADAPTERS_KEY",
    "CAPABILITY_ROWS",
    "capability_status",
    "record_adapter",
    "render_markdown",
    "summary_line",
]

#: Row order of the matrix: what every adapter must do first, then each capability.
CAPABILITY_ROWS = ("core", "async", "batch", "map", "retrieve", "tools", "json_adapter", "dspy_modules", "lm_trace",
                   "timeout", "cancel", "rehydrate", "out_of_process", "control_flow", "parallel", "agents",
                   "ensembles", "typed_objects", "xml_adapter")
CATEGORIES = ("case", "equivalence", "behaviour", "negative")

ADAPTERS_KEY = pytest.StashKey[dict[str, dict[str, Any]]]()

OK, WARN, FAIL, NONE = "✅", "⚠️", "❌", "—"


def record_adapter(config: pytest.Config, class_nodeid: str, harness: Any) -> None:
    """Remember which adapter a test class certifies (called by the suite's class fixture)."""
    from .harness import adapter_package, adapter_version

    config.stash.setdefault(ADAPTERS_KEY, {})[class_nodeid] = {
        "name": harness.name,
        "version": adapter_version(harness.adapter),
        "package": adapter_package(harness.adapter),
        "spec": harness.spec,
        "class": type(harness.adapter).__module__ + "." + type(harness.adapter).__qualname__,
        "capabilities": sorted(harness.capabilities),
    }


def _cell(tests: list[dict[str, Any]]) -> str:
    if not tests:
        return ""
    outcomes = [t["outcome"] for t in tests]
    if any(o in ("failed", "error") for o in outcomes):
        bad = sum(o in ("failed", "error") for o in outcomes)
        return f"{FAIL} {bad}/{len(tests)}"
    ran = [o for o in outcomes if o != "skipped"]
    if not ran:
        return NONE
    if "xfailed" in ran:
        return f"{WARN} {ran.count('passed')}/{len(ran)}"
    return f"{OK} {len(ran)}"


def adapter_tests(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The tests the adapter can fail (not stepbridge's own checks)."""
    return [t for t in report["tests"] if t.get("scope", "adapter") == "adapter"]


def core_tests(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Checks stepbridge makes before the adapter runs: reported apart, never counted for the adapter."""
    return [t for t in report["tests"] if t.get("scope", "adapter") == "core"]


def capability_status(report: dict[str, Any], cap: str) -> str:
    """``✅`` conformant, ``⚠️`` conformant with expected failures, ``❌`` failing, ``—`` not declared/applicable."""
    tests = [t for t in adapter_tests(report) if t["capability"] == cap]
    declared = cap == "core" or cap in report["adapter"]["capabilities"]
    outcomes = [t["outcome"] for t in tests]
    if any(o in ("failed", "error") for o in outcomes):
        return FAIL
    if not declared:
        return NONE
    if "xfailed" in outcomes:
        return WARN
    if "passed" in outcomes:
        return OK
    return NONE


def summary_line(report: dict[str, Any]) -> str:
    """The overall line: what the adapter is conformant for."""
    name = report["adapter"]["name"]
    groups: dict[str, list[str]] = {OK: [], WARN: [], FAIL: [], NONE: []}
    for cap in _rows(report):
        groups[capability_status(report, cap)].append(cap)
    declared = set(report["adapter"]["capabilities"]) | {"core"}
    undeclared = [c for c in groups[NONE] if c not in declared]
    untested = [c for c in groups[NONE] if c in declared]
    parts = []
    if groups[FAIL]:
        verdict = f"{FAIL} **`{name}` is not conformant** — failing: {', '.join(groups[FAIL])}."
    else:
        verdict = f"{OK} **`{name}` is conformant**."
    parts.append(verdict)
    conformant = groups[OK] + [f"{c} {WARN}" for c in groups[WARN]]
    if conformant:
        parts.append(f"Conformant for: {', '.join(conformant)}.")
    if groups[WARN]:
        parts.append(f"{WARN} = passes with expected failures (see notes).")
    if undeclared:
        parts.append(f"Not declared: {', '.join(undeclared)}.")
    if untested:
        parts.append(f"Declared but not tested in this run: {', '.join(untested)}.")
    return " ".join(parts)


def _rows(report: dict[str, Any]) -> list[str]:
    extra = sorted({t["capability"] for t in adapter_tests(report)} - set(CAPABILITY_ROWS))
    return [*CAPABILITY_ROWS, *extra]


def render_markdown(report: dict[str, Any], *, heading: int = 2) -> str:
    """The matrix of one report, with footnotes for every failure and expected failure."""
    adapter = report["adapter"]
    h = "#" * heading
    version = f" {adapter['version']}" if adapter.get("version") else ""
    package = adapter.get("package")
    shipped = f", package `{package['name']}` {package['version']}" if package else ", not an installed package"
    certification = report.get("certification") or {}
    lines = [f"{h} Conformance: `{adapter['name']}`{version}", "",
             f"Adapter `{adapter['spec']}` ({adapter['class']}{shipped}); conformance suite "
             f"{report['suite_version']}, Python {report['environment'].get('python', '?')}, {report['created']}.", "",
             summary_line(report), ""]
    if certification:
        lines += [f"**Certified** against suite {report['suite_version']}." if certification.get("certified") else
                  "**Not certified**: " + "; ".join(certification.get("problems", [])) + ".", ""]
    lines += [
             "| capability | declared | cases | equivalence | behaviour | negative | result |",
             "|---|---|---|---|---|---|---|"]
    notes: list[str] = []
    for cap in _rows(report):
        tests = [t for t in adapter_tests(report) if t["capability"] == cap]
        if not tests and cap not in CAPABILITIES and cap != "core":
            continue
        declared = "core" if cap == "core" else ("yes" if cap in adapter["capabilities"] else "no")
        cells = []
        for category in CATEGORIES:
            group = [t for t in tests if t["category"] == category]
            cell = _cell(group)
            refs = []
            for t in group:
                if t["outcome"] in ("failed", "error", "xfailed"):
                    notes.append(f"{t['id']} — {t['outcome']}: {t['reason'] or ''}".strip())
                    refs.append(f"[^{len(notes)}]")
            cells.append(cell + ("" if not refs else " " + "".join(refs[:5]) + ("…" if len(refs) > 5 else "")))
        status = capability_status(report, cap)
        if status == NONE and declared == "no":
            negative = [t for t in tests if t["category"] == "negative"]
            result = f"{NONE} not declared" + (" (refused correctly)" if negative and all(
                t["outcome"] == "passed" for t in negative) else "")
        elif status == NONE:
            result = f"{NONE} nothing ran"
        else:
            result = status
        lines.append(f"| {cap} | {declared} | {' | '.join(c or ' ' for c in cells)} | {result} |")
    counts = report["summary"]
    lines += ["", "Adapter tests: " + (", ".join(f"{v} {k}" for k, v in counts.items() if v) or "none") + "."]
    core = core_tests(report)
    if core:
        core_counts: dict[str, int] = {}
        for t in core:
            core_counts[t["outcome"]] = core_counts.get(t["outcome"], 0) + 1
        lines += ["", "Core checks (stepbridge refuses bad inputs, undeclared capabilities and invalid programs "
                      "before the adapter runs; not counted for the adapter): "
                  + ", ".join(f"{v} {k}" for k, v in sorted(core_counts.items())) + "."]
        for t in core:
            if t["outcome"] in ("failed", "error"):
                notes.append(f"core check {t['id']} — {t['outcome']}: {t['reason'] or ''}".strip())
    if notes:
        lines.append("")
        for i, note in enumerate(notes, 1):
            lines.append(f"[^{i}]: {_one_line(note)}")
    return "\n".join(lines) + "\n"


def _one_line(text: str, limit: int = 400) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def build_report(adapter: dict[str, Any], tests: list[dict[str, Any]], *, suite_version: str,
                 environment: dict[str, Any], stale_expected_failures: list[str] | None = None,
                 certify: bool = False) -> dict[str, Any]:
    summary: dict[str, int] = {k: 0 for k in ("passed", "failed", "error", "skipped", "xfailed")}
    for t in tests:
        if t.get("scope", "adapter") == "adapter":
            summary[t["outcome"]] = summary.get(t["outcome"], 0) + 1
    report = {
        "format": 1,
        "suite_version": suite_version,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "adapter": adapter,
        "environment": environment,
        "declared_capabilities": adapter["capabilities"],
        "summary": summary,
        "stale_expected_failures": stale_expected_failures or [],
        "tests": tests,
    }
    report["capabilities"] = {cap: capability_status(report, cap) for cap in _rows(report)}
    report["conformant"] = all(s != FAIL for s in report["capabilities"].values())
    if certify:
        report["certification"] = certification(report)
    return report


def certification(report: dict[str, Any]) -> dict[str, Any]:
    """Certified: conformant, and every test of the core set ran and passed (none skipped, none expected to fail)."""
    problems = []
    core = [t for t in adapter_tests(report) if t["capability"] == "core"]
    for outcome, say in (("skipped", "skipped"), ("xfailed", "expected to fail"), ("failed", "failed"),
                         ("error", "errored")):
        names = [t["id"] for t in core if t["outcome"] == outcome]
        if names:
            problems.append(f"core tests {say}: {', '.join(names[:8])}" + ("…" if len(names) > 8 else ""))
    failing = [c for c, s in report["capabilities"].items() if s == FAIL and c != "core"]
    if failing:
        problems.append(f"failing capabilities: {', '.join(failing)}")
    if not core:
        problems.append("no core test ran")
    return {"certified": not problems, "problems": problems, "suite_version": report["suite_version"]}


def write_report(directory: Path, report: dict[str, Any], stem: str = "conformance") -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    json_path = directory / f"{stem}.json"
    md_path = directory / f"{stem}.md"
    json_path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    md_path.write_text(render_markdown(report), encoding="utf-8")
    return [json_path, md_path]
