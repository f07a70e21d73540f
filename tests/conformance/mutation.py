"""The conformance suite's mutation test: does the suite catch realistic single bugs?

Runs the shipped suite against the independent adapter (``independent_adapter.py``), which must
pass, and against every mutant in ``broken_adapters.MUTANTS``, which must each fail. Every adapter
is a test class (a subclass of ``AdapterConformance``, with its own reference LM, native baseline
and event loop); ``--jobs`` pytest processes share the classes out; a mutant's class stops at its
first failure (this module is also the pytest plugin that does that). Prints one line per adapter
and the mutation score (killed / total)::

    python tests/conformance/mutation.py --jobs 2 --min-score 0.95
    python tests/conformance/mutation.py -k Map              # only mutants whose name contains "Map"
    python tests/conformance/mutation.py -k Map --no-control

Exit status: 0 when the independent adapter passes and the score reaches ``--min-score``. Only a
failed conformance test is a kill: a mutant whose class errors in setup, or whose process hangs
past ``--timeout``, counts as not killed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
CONTROL = "independent_adapter:make_adapter"


# ------------------------------------------------------------------------------------------------
# the plugin: a mutant's class stops at its first failure
# ------------------------------------------------------------------------------------------------
_killed: set[str] = set()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    cls = getattr(item, "cls", None)
    if cls is not None and cls.__name__ in _killed:
        pytest.skip("mutant already killed")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.failed and "::TestMutant_" in report.nodeid:
        _killed.add(report.nodeid.split("::")[-2])


# ------------------------------------------------------------------------------------------------
# the runner
# ------------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    name: str
    bug_class: str
    doc: str
    failed_test: str | None = None
    reason: str | None = None
    status: str = "not run"  # killed | survived | crashed | not run

    @property
    def killed(self) -> bool:
        return self.status == "killed"


def _module(classes: list[tuple[str, str]]) -> str:
    lines = ["from stepbridge.conformance import AdapterConformance", "import broken_adapters",
             "import independent_adapter", ""]
    for class_name, factory in classes:
        lines += [f"class {class_name}(AdapterConformance):", f"    adapter_factory = {factory}", ""]
    return "\n".join(lines)


def run_group(index: int, classes: list[tuple[str, str]], timeout: float) -> tuple[dict[str, dict[str, Any]], str,
                                                                                    float]:
    """Run one pytest process over ``classes`` ((test class, factory expression)); per class spec: its report."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEPBRIDGE_LM_")}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), *filter(None, [env.get("PYTHONPATH")])])
    with tempfile.TemporaryDirectory(prefix="stepbridge-mutation-") as tmp:
        (Path(tmp) / f"test_mutation_group_{index}.py").write_text(_module(classes), encoding="utf-8")
        report = Path(tmp) / "report"
        cmd = [sys.executable, "-m", "pytest", "-p", "stepbridge.conformance.plugin", "-p", "mutation",
               "-p", "no:cacheprovider", "-p", "no:hypothesispytest", "--conformance-report", str(report), "-q",
               "-W", "ignore::DeprecationWarning",
               "--no-header", "-o", "addopts=", "-o", "testpaths=", str(Path(tmp) / f"test_mutation_group_{index}.py")]
        began = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=timeout)
            tail = (proc.stdout + proc.stderr)[-3000:]
        except subprocess.TimeoutExpired:
            tail = "timed out"
        seconds = time.perf_counter() - began
        found: dict[str, dict[str, Any]] = {}
        for path in sorted(report.glob("conformance*.json")) if report.exists() else []:
            data = json.loads(path.read_text(encoding="utf-8"))
            found[str(data["adapter"]["spec"])] = data
        return found, tail, seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2, help="pytest processes at once (default 2)")
    parser.add_argument("--min-score", type=float, default=0.0, help="fail below this killed/total ratio")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds one process may take")
    parser.add_argument("-k", dest="select", default=None, help="only mutants whose name contains this")
    parser.add_argument("--only", default=None, help="only these mutants (comma-separated names)")
    parser.add_argument("--no-control", action="store_true", help="do not run the independent adapter")
    parser.add_argument("--json", type=Path, default=None, help="also write the outcomes here")
    args = parser.parse_args(argv)

    import broken_adapters  # beside this script: run as a script, its folder is on sys.path

    mutants = [m for m in broken_adapters.MUTANTS if args.select is None or args.select.lower() in m.__name__.lower()]
    if args.only:
        names = {n.strip() for n in args.only.split(",") if n.strip()}
        unknown = names - {m.__name__ for m in mutants}
        if unknown:
            parser.error(f"no such mutant(s): {', '.join(sorted(unknown))}")
        mutants = [m for m in mutants if m.__name__ in names]
    jobs = max(1, args.jobs)
    groups: list[list[tuple[str, str]]] = [[] for _ in range(jobs)]
    if not args.no_control:
        groups[0].append(("TestControl", "independent_adapter.make_adapter"))
    for i, mutant in enumerate(mutants):
        groups[(i + (0 if args.no_control else 1)) % jobs].append(
            (f"TestMutant_{mutant.__name__}", f"broken_adapters.{mutant.__name__}"))
    began = time.perf_counter()
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        results = list(pool.map(lambda ig: run_group(ig[0], ig[1], args.timeout),
                                [(i, g) for i, g in enumerate(groups) if g]))
    reports: dict[str, dict[str, Any]] = {}
    tails = []
    for found, tail, seconds in results:
        reports.update(found)
        tails.append(tail)
        print(f"[process] {len(found)} adapter(s) in {seconds:.0f}s", flush=True)

    control_ok = True
    if not args.no_control:
        control = reports.get(CONTROL)
        bad = [t for t in (control or {}).get("tests", []) if t["outcome"] in ("failed", "error")]
        control_ok = control is not None and not bad
        print("[control] independent adapter: " + ("passes" if control_ok else
              f"FAILS: {bad[0]['id']}: {bad[0]['reason']}" if bad else "no report"), flush=True)
        if control is None:
            print(tails[0], flush=True)

    outcomes = []
    for mutant in mutants:
        doc = " ".join((mutant.__doc__ or "").split())
        outcome = Outcome(mutant.__name__, mutant.BUG_CLASS, doc)
        report = reports.get(f"broken_adapters:{mutant.__name__}")
        if report is not None:
            failed = [t for t in report["tests"] if t["outcome"] in ("failed", "error")]
            if failed:
                outcome.failed_test, outcome.reason = failed[0]["id"], failed[0]["reason"] or ""
                # a kill is a verdict of the suite (pytest.fail), not a crash of the test code
                verdict = failed[0]["outcome"] == "failed" and outcome.reason.startswith(("Failed:", "AdapterStuck"))
                outcome.status = "killed" if verdict else "crashed"
            else:
                outcome.status = "survived"
        outcomes.append(outcome)
        print(f"{outcome.status:9} {mutant.__name__:34} {outcome.failed_test or ''}", flush=True)
        if outcome.status == "crashed":
            print(f"          {outcome.reason[:300] if outcome.reason else ''}", flush=True)

    killed = [o for o in outcomes if o.killed]
    total = len(outcomes)
    score = len(killed) / total if total else 1.0
    print()
    print(f"mutation score: {len(killed)}/{total} killed ({score:.0%}) in {time.perf_counter() - began:.0f}s "
          f"with {jobs} process(es)")
    for o in sorted((o for o in outcomes if not o.killed), key=lambda o: o.name):
        print(f"  {o.status}: {o.name} [{o.bug_class}] {o.doc}")
    if args.json is not None:
        args.json.write_text(json.dumps({"killed": len(killed), "total": total, "score": score, "control": control_ok,
                                         "outcomes": [o.__dict__ for o in outcomes]}, indent=2) + "\n",
                             encoding="utf-8")
    if not control_ok:
        print("the independent adapter does not pass the suite: the suite (or that adapter) is wrong")
    return 0 if control_ok and score >= args.min_score else 1


if __name__ == "__main__":
    sys.exit(main())
