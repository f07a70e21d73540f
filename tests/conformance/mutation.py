"""The conformance suite's mutation test: does the suite catch realistic single bugs?

Runs the shipped suite (``stepbridge conformance``) against the independent adapter, which must
pass, and against every mutant in ``broken_adapters.MUTANTS``, which must each fail. Suites run
as separate processes, ``--jobs`` at a time; a mutant's suite stops at its first failure (``-x``).
Prints one line per adapter and the mutation score (killed / total)::

    python tests/conformance/mutation.py --jobs 2 --min-score 0.95
    python tests/conformance/mutation.py -k Map          # only mutants whose name contains "Map"

Exit status: 0 when the independent adapter passes and the score reaches ``--min-score``.
A mutant whose suite errors out (pytest exit 2-4) or hangs past ``--timeout`` counts as *not*
killed: only a failed conformance test is a kill.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent


@dataclass
class Outcome:
    name: str
    bug_class: str
    doc: str
    code: int | None
    seconds: float
    failed_test: str | None = None
    reason: str | None = None

    @property
    def killed(self) -> bool:
        return self.code == 1 and self.failed_test is not None


def run_suite(spec: str, *, stop_at_first: bool, timeout: float) -> tuple[int | None, float, str | None, str | None,
                                                                          str]:
    """(pytest exit code or None on timeout, seconds, first failed test, its reason, output tail)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEPBRIDGE_LM_")}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), *filter(None, [env.get("PYTHONPATH")])])
    with tempfile.TemporaryDirectory(prefix="stepbridge-mutation-") as tmp:
        report = Path(tmp) / "report"
        cmd = [sys.executable, "-m", "pytest", "-p", "stepbridge.conformance.plugin", "-p", "no:cacheprovider",
               "--pyargs", "stepbridge.conformance", "--adapter", spec, "--conformance-report", str(report),
               "-q", "-rfE", "-W", "ignore::DeprecationWarning"]
        if stop_at_first:
            cmd.append("-x")
        began = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return None, time.perf_counter() - began, None, None, ""
        seconds = time.perf_counter() - began
        failed = reason = None
        path = report / "conformance.json"
        if path.exists():
            data = json.loads(path.read_text(encoding="utf-8"))
            for test in data["tests"]:
                if test["outcome"] in ("failed", "error"):
                    failed, reason = test["id"], test["reason"]
                    break
        return proc.returncode, seconds, failed, reason, (proc.stdout + proc.stderr)[-3000:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2, help="suites run at once (default 2)")
    parser.add_argument("--min-score", type=float, default=0.0, help="fail below this killed/total ratio")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds one suite run may take")
    parser.add_argument("-k", dest="select", default=None, help="only mutants whose name contains this")
    parser.add_argument("--json", type=Path, default=None, help="also write the outcomes here")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(HERE))
    import broken_adapters

    mutants = [m for m in broken_adapters.MUTANTS if args.select is None or args.select.lower() in m.__name__.lower()]
    began = time.perf_counter()
    outcomes: list[Outcome] = []
    control: tuple[int | None, float, str | None, str | None, str] | None = None
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = {pool.submit(run_suite, "independent_adapter:make_adapter", stop_at_first=False,
                               timeout=args.timeout): None}
        for mutant in mutants:
            futures[pool.submit(run_suite, f"broken_adapters:{mutant.__name__}", stop_at_first=True,
                                timeout=args.timeout)] = mutant
        for future in as_completed(futures):
            mutant = futures[future]
            code, seconds, failed, reason, tail = future.result()
            if mutant is None:
                control = (code, seconds, failed, reason, tail)
                verdict = "passes" if code == 0 else f"FAILS (exit {code}): {failed}: {reason}"
                print(f"[control] independent adapter {verdict} ({seconds:.1f}s)", flush=True)
                if code != 0:
                    print(tail, flush=True)
                continue
            doc = " ".join((mutant.__doc__ or "").split())
            outcome = Outcome(mutant.__name__, mutant.BUG_CLASS, doc, code, seconds, failed, reason)
            outcomes.append(outcome)
            mark = "killed  " if outcome.killed else ("TIMEOUT " if code is None else f"SURVIVED(exit {code})")
            print(f"{mark} {mutant.__name__:34} {seconds:5.1f}s  {failed or ''}", flush=True)
            if code not in (0, 1) and code is not None:
                print(tail, flush=True)

    killed = [o for o in outcomes if o.killed]
    survivors = sorted((o for o in outcomes if not o.killed), key=lambda o: o.name)
    total = len(outcomes)
    score = len(killed) / total if total else 1.0
    print()
    print(f"mutation score: {len(killed)}/{total} killed ({score:.0%}) in {time.perf_counter() - began:.0f}s "
          f"with {args.jobs} job(s)")
    for o in survivors:
        print(f"  survived: {o.name} [{o.bug_class}] {o.doc}")
    if args.json is not None:
        args.json.write_text(json.dumps({"killed": len(killed), "total": total, "score": score,
                                         "control_exit": control[0] if control else None,
                                         "outcomes": [o.__dict__ | {"killed": o.killed} for o in outcomes]},
                                        indent=2) + "\n", encoding="utf-8")
    ok = control is not None and control[0] == 0 and score >= args.min_score
    if control is not None and control[0] != 0:
        print("the independent adapter does not pass the suite: the suite (or the adapter) is wrong")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
