"""The conformance suite itself: it passes the native and the example third-party adapters, fails
deliberately broken ones with messages that say what to fix, and honours expected-failures files
and the subclass rules. Each suite run is a separate ``python -m pytest`` process (as an adapter
author would run it); nothing is installed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
PREDICT_CASES = "test_case and predict and not map"  # test_case[predict-0], test_case[predict-1]
REPO = HERE.parent.parent
EXAMPLE_SRC = REPO / "examples" / "third_party_adapter" / "src"


def run_suite(tmp_path: Path, adapter: str, *args: str, pythonpath: Path | None = None
              ) -> tuple[int, str, dict[str, Any] | None]:
    """Run the suite in a subprocess; (exit code, output, conformance.json or None)."""
    report = tmp_path / "report"
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEPBRIDGE_LM_")}
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), *filter(None, [env.get("PYTHONPATH")])])
    # the plugins `stepbridge conformance` loads (conformance_tests/cli.py): hypothesis's would cost a second a run
    cmd = [sys.executable, "-m", "pytest", "-p", "stepbridge.conformance.plugin", "-p", "no:cacheprovider",
           "-p", "no:hypothesispytest", "--pyargs", "stepbridge.conformance", "--adapter", adapter,
           "--conformance-report", str(report), "-q", "-rfE", *args]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    output = proc.stdout + proc.stderr
    path = report / "conformance.json"
    return proc.returncode, output, json.loads(path.read_text()) if path.exists() else None


def failures(report: dict[str, Any]) -> dict[str, str]:
    return {t["id"]: t["reason"] or "" for t in report["tests"] if t["outcome"] in ("failed", "error")}


@pytest.mark.slow  # the whole suite (minutes); .ci/run also certifies native, pool and dspy on their own
def test_native_adapter_is_certified(tmp_path: Path) -> None:
    import stepbridge
    from stepbridge.conformance import SUITE_VERSION

    code, output, report = run_suite(tmp_path, "native", "--certify")
    assert code == 0, output[-4000:]
    assert report is not None and report["conformant"] and report["certification"]["certified"]
    assert report["suite_version"] == SUITE_VERSION == report["certification"]["suite_version"]
    assert report["adapter"]["name"] == "native"
    assert report["adapter"]["package"] == {"name": "stepbridge", "version": stepbridge.__version__}
    assert report["summary"]["failed"] == 0 and report["summary"]["passed"] > 80
    assert {"id", "capability", "category", "scope", "outcome", "reason", "duration"} <= set(report["tests"][0])
    caps = report["capabilities"]
    assert caps["core"] == caps["map"] == caps["tools"] == caps["timeout"] == "✅"
    assert caps["dspy_modules"] == "—"  # not declared; its negative tests ran and passed
    negative = [t for t in report["tests"] if t["capability"] == "dspy_modules" and t["category"] == "negative"]
    assert negative and all(t["outcome"] == "passed" for t in negative)
    # checks stepbridge makes before the adapter runs are reported apart and not counted for the adapter
    core = [t for t in report["tests"] if t["scope"] == "core"]
    assert {t["id"].split("[")[0] for t in core} == {"test_case", "test_invalid_program",
                                                      "test_undeclared_capability_via_runner"}
    assert all(t["id"].startswith("test_case[error_inputs") for t in core if t["id"].startswith("test_case"))
    adapter_passed = sum(1 for t in report["tests"] if t["scope"] == "adapter" and t["outcome"] == "passed")
    assert report["summary"]["passed"] == adapter_passed
    markdown = (tmp_path / "report" / "conformance.md").read_text()
    assert "| core | core |" in markdown and "is conformant" in markdown and "Core checks" in markdown
    assert f"**Certified** against suite {SUITE_VERSION}" in markdown and "package `stepbridge`" in markdown
    assert (tmp_path / "report" / "junit.xml").read_text().startswith("<?xml")
    assert "stepbridge conformance" in output  # the matrix is printed


def test_certify_refuses_expected_failures_in_the_core_set(tmp_path: Path) -> None:
    known = tmp_path / "known.yaml"
    known.write_text("test_result_shape: we do not set execution ids yet\n")
    code, output, _ = run_suite(tmp_path, "native", "--certify", "--expected-failures", str(known), "-k", "shape")
    assert code == 4 and "core tests may not be expected to fail: test_result_shape" in output
    known.write_text("test_cancel: cancellation lands later\n")  # not in the core set: allowed (and strict)
    code, output, _ = run_suite(tmp_path, "native", "--certify", "--expected-failures", str(known), "-k",
                                "test_cancel or test_result_shape")
    assert code == 1 and "XPASS(strict)" in output


def test_certification_needs_every_core_test_to_pass() -> None:
    from stepbridge.conformance.report import build_report

    def report(outcomes: dict[str, str]) -> dict[str, Any]:
        tests = [{"id": name, "capability": "timeout" if name == "test_timeout" else "core", "category": "behaviour",
                  "scope": "adapter", "outcome": outcome, "reason": None, "duration": 0.1}
                 for name, outcome in outcomes.items()]
        tests.append({"id": "test_invalid_program[x]", "capability": "core", "category": "case", "scope": "core",
                      "outcome": "skipped", "reason": None, "duration": 0.0})
        adapter = {"name": "a", "spec": "a", "class": "a", "version": "1", "package": None,
                   "capabilities": ["timeout"]}
        return build_report(adapter, tests, suite_version="9", environment={}, certify=True)

    assert report({"test_result_shape": "passed", "test_timeout": "xfailed"})["certification"]["certified"]
    skipped = report({"test_result_shape": "skipped", "test_timeout": "passed"})["certification"]
    assert not skipped["certified"] and "core tests skipped: test_result_shape" in skipped["problems"]
    failing = report({"test_result_shape": "passed", "test_timeout": "failed"})["certification"]
    assert not failing["certified"] and "failing capabilities: timeout" in failing["problems"]
    assert report({"test_result_shape": "passed"})["summary"]["skipped"] == 0  # core-scope skips are not counted


def test_protocol_styles_are_accepted(tmp_path: Path) -> None:
    """A decorated coroutine ``prepare``, a ``run`` returning an awaitable and an ``aclose`` returning a Future
    are the protocol too."""
    code, output, report = run_suite(tmp_path, "protocol_variants:StyledAdapter", "-k",
                                     "declares_adapter_protocol or (test_case and predict and not map)",
                                     pythonpath=HERE)
    assert code == 0, output[-3000:]
    assert report is not None
    assert {t["id"]: t["outcome"] for t in report["tests"]}["test_declares_adapter_protocol"] == "passed"


@pytest.mark.slow  # the whole suite against the example package
def test_example_third_party_adapter_is_conformant(tmp_path: Path) -> None:
    code, output, report = run_suite(tmp_path, "tiny_adapter:make_adapter", pythonpath=EXAMPLE_SRC)
    assert code == 0, output[-4000:]
    assert report is not None and report["adapter"]["name"] == "tiny"
    caps = report["capabilities"]
    assert caps["core"] == caps["retrieve"] == caps["timeout"] == "✅"
    assert caps["map"] == caps["tools"] == caps["json_adapter"] == "—"
    refused = [t for t in report["tests"] if t["category"] == "negative" and t["capability"] == "map"]
    assert refused and all(t["outcome"] == "passed" for t in refused)


def test_wrong_outputs_fail_with_a_diff(tmp_path: Path) -> None:
    code, output, report = run_suite(tmp_path, "broken_adapters:WrongOutputs", "-k", PREDICT_CASES,
                                     pythonpath=HERE)
    assert code == 1 and report is not None, output[-3000:]
    reason = failures(report)["test_case[predict-0]"]
    assert "the outputs are not the case's" in reason and "output /answer" in reason
    assert "expected:" in reason and "adapter:" in reason and "look at: outputs" in reason
    assert report["capabilities"]["core"] == "❌" and not report["conformant"]


def test_lost_error_type_fails_and_says_how_to_keep_it(tmp_path: Path) -> None:
    code, output, report = run_suite(tmp_path, "broken_adapters:LostErrorType", "-k", "error_lm or error_partial",
                                     pythonpath=HERE)
    assert code == 1 and report is not None, output[-3000:]
    reason = failures(report)["test_case[error_lm-0]"]
    assert "another error type" in reason and "expected: StepError(step=0" in reason
    assert "adapter:  raised StepbridgeError" in reason and "error_from_dict" in reason


def test_claimed_capability_it_lacks_fails(tmp_path: Path) -> None:
    code, output, report = run_suite(tmp_path, "broken_adapters:ClaimsDspyModules", "-k", "dspy", pythonpath=HERE)
    assert code == 1 and report is not None, output[-3000:]
    reason = failures(report)["test_case[dspy_module-0]"]
    assert "UnsupportedCapabilityError" in reason and "remove it from `capabilities`" in reason
    assert report["capabilities"]["dspy_modules"] == "❌"


def test_ignored_timeout_fails(tmp_path: Path) -> None:
    code, output, report = run_suite(tmp_path, "broken_adapters:IgnoresTimeout", "-k", "test_timeout",
                                     pythonpath=HERE)
    assert code == 1 and report is not None, output[-3000:]
    reason = failures(report)["test_timeout"]
    assert "took longer than its timeout" in reason and "RunTimeoutError(timeout=0.6)" in reason
    assert "look at: timeout" in reason


def test_running_an_undeclared_capability_directly_fails(tmp_path: Path) -> None:
    code, output, report = run_suite(tmp_path, "broken_adapters:HalfRunsUndeclared", "-k", "undeclared",
                                     pythonpath=HERE)
    assert code == 1 and report is not None, output[-3000:]
    found = failures(report)
    assert "test_undeclared_capability_via_runner[retrieve]" not in found  # the core refuses it
    reason = found["test_undeclared_capability_direct[retrieve]"]
    assert "accepted a program that needs undeclared 'retrieve'" in reason and "UnsupportedCapabilityError" in reason


def test_expected_failures_file_is_strict_and_needs_reasons(tmp_path: Path) -> None:
    known = tmp_path / "known.yaml"
    known.write_text("test_case[predict-*]: upper-cases everything (issue 1)\n"
                     "test_no_such_test: stale entry\n")
    code, output, report = run_suite(tmp_path, "broken_adapters:WrongOutputs", "-k", PREDICT_CASES,
                                     "--expected-failures", str(known), pythonpath=HERE)
    assert code == 0, output[-3000:]
    assert report is not None and report["capabilities"]["core"] == "⚠️"
    assert report["stale_expected_failures"] == ["test_no_such_test"]
    assert "test_no_such_test" in output  # stale entries warn

    # strict: a listed test that passes fails the run
    code, output, _ = run_suite(tmp_path, "native", "-k", PREDICT_CASES, "--expected-failures", str(known))
    assert code == 1 and "XPASS(strict)" in output

    known.write_text("test_case[predict-0]: ''\n")
    code, output, _ = run_suite(tmp_path, "native", "-k", "predict", "--expected-failures", str(known))
    assert code == 4 and "has no reason" in output


def test_overriding_a_suite_test_needs_a_strict_xfail_with_reason() -> None:
    from stepbridge.conformance import AdapterConformance

    with pytest.raises(TypeError, match="xfail"):
        class Sloppy(AdapterConformance):
            def test_timeout(self) -> None:
                pass

    with pytest.raises(TypeError, match="xfail"):
        class NotStrict(AdapterConformance):
            @pytest.mark.xfail(reason="slow")
            def test_timeout(self) -> None:
                pass

    class Fine(AdapterConformance):
        @pytest.mark.xfail(strict=True, reason="our timeouts are coarse (issue 3)")
        def test_timeout(self) -> None:
            raise AssertionError("known failure")

    assert Fine.test_timeout is not AdapterConformance.test_timeout
    with pytest.raises(TypeError, match="reason"):
        class NoReason(AdapterConformance):
            expected_failures = {"test_cancel": ""}


def test_subclass_in_an_adapter_test_tree(tmp_path: Path) -> None:
    """The base-class route an adapter author takes: their own test file, plain pytest, one expected failure."""
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["stepbridge.conformance.plugin"]\n')
    (tmp_path / "test_mine.py").write_text(
        "import pytest\n"
        "from stepbridge.conformance import AdapterConformance\n"
        "from tiny_adapter import make_adapter\n\n"
        "class TestTiny(AdapterConformance):\n"
        "    adapter_factory = make_adapter\n"
        "    expected_failures = {'test_runs_after_failures': 'pretend known issue'}\n\n"
        "    @pytest.mark.xfail(strict=True, reason='pretend: timeouts unsupported here')\n"
        "    def test_timeout(self, conformance):\n"
        "        raise AssertionError('not supported')\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEPBRIDGE_LM_")}
    env["PYTHONPATH"] = str(EXAMPLE_SRC)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-k",
                           "predict or timeout or runs_after", "--conformance-report", str(tmp_path / "out"),
                           "test_mine.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    # test_runs_after_failures passes for tiny, so its strict expected failure fails the run
    assert proc.returncode == 1 and "XPASS(strict)" in out, out[-3000:]
    report = json.loads((tmp_path / "out" / "conformance.json").read_text())
    outcomes = {t["id"]: t["outcome"] for t in report["tests"]}
    assert outcomes["test_timeout"] == "xfailed" and outcomes["test_case[predict-0]"] == "passed"
    assert outcomes["test_runs_after_failures"] == "failed"


def test_matrix_combines_reports(tmp_path: Path) -> None:
    from stepbridge.conformance.matrix import main

    def report(name: str, caps: list[str], outcome: str) -> dict[str, Any]:
        tests = [{"id": "test_case[predict-0]", "capability": "core", "category": "case", "outcome": "passed",
                  "reason": None, "duration": 0.1},
                 {"id": "test_timeout", "capability": "timeout", "category": "behaviour", "outcome": outcome,
                  "reason": "slow" if outcome != "passed" else None, "duration": 0.1}]
        return {"suite_version": "1", "created": "now", "environment": {"python": "3"}, "summary": {"passed": 1},
                "adapter": {"name": name, "spec": name, "class": name, "version": None, "capabilities": caps},
                "tests": tests}

    (tmp_path / "a.json").write_text(json.dumps(report("alpha", ["timeout"], "passed")))
    (tmp_path / "b.json").write_text(json.dumps(report("beta", ["timeout"], "xfailed")))
    (tmp_path / "c.json").write_text(json.dumps(report("gamma", ["timeout"], "failed")))
    out = tmp_path / "CONFORMANCE.md"
    assert main([str(tmp_path / n) for n in ("a.json", "b.json", "c.json")] + ["-o", str(out)]) == 0
    page = out.read_text()
    assert "| timeout | ✅ | ⚠️ | ❌ |" in page
    assert "`gamma` is not conformant" in page and "[^gamma-1]" in page
    assert main([str(tmp_path / "c.json"), "--check", "-o", str(out)]) == 1


def test_cli_wraps_pytest_with_the_plugin() -> None:
    from stepbridge.conformance.cli import pytest_args

    args = pytest_args("pkg.mod:make", Path("out"), Path("known.yaml"), certify=True)
    assert args[:2] == ["-p", "stepbridge.conformance.plugin"] and "--certify" in args
    assert "--pyargs" in args and "stepbridge.conformance" in args
    assert args[args.index("--adapter") + 1] == "pkg.mod:make"
    assert args[args.index("--conformance-report") + 1] == "out"
    assert args[args.index("--expected-failures") + 1] == "known.yaml"
    assert args[args.index("-o") + 1] == "addopts="  # not the invoking folder's (e.g. this repository's -n auto)
    proc = subprocess.run([sys.executable, "-m", "stepbridge.conformance", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "--report" in proc.stdout and "--certify" in proc.stdout


def test_cases_are_consistent() -> None:
    """Every case's declared capabilities cover what its program needs; ids are unique; files ship with data."""
    from stepbridge.conformance import fixtures
    from stepbridge.conformance.cases import CASES_DIR, load_cases

    fixtures.register()
    cases = load_cases()
    assert len(cases) >= 15 and (CASES_DIR / "data" / "corpus.jsonl").is_file()
    for case in cases:
        if case.invalid:
            continue
        assert case.program.required_capabilities <= case.capabilities, case.id
        for run in case.runs:
            assert run.outputs is not None or run.error is not None, run.id


# ------------------------------------------------------------------------------------------------
# failure messages: what was expected, what the adapter did, the smallest difference, where to look
# ------------------------------------------------------------------------------------------------
def run_mutants(tmp_path: Path, *names: str) -> dict[str, dict[str, Any]]:
    """Run the suite's mutation test on a few mutants (no control); each one's outcome."""
    out = tmp_path / "mutation.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEPBRIDGE_LM_")}
    proc = subprocess.run([sys.executable, str(HERE / "mutation.py"), "--no-control", "--jobs", "1", "--only",
                           ",".join(names), "--json", str(out)], env=env, capture_output=True, text=True,
                          timeout=900)
    assert out.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    return {o["name"]: o for o in json.loads(out.read_text())["outcomes"]}


@pytest.mark.slow  # four mutants, each a suite run in its own process (~10 s of CPU)
def test_messages_name_the_request_the_field_and_the_protocol_part(tmp_path: Path) -> None:
    found = run_mutants(tmp_path, "IgnoresRunOverride", "InputFieldsSorted", "StripsInputs", "CancelLeavesTask")
    assert all(o["status"] == "killed" for o in found.values()), found
    # native raised because the run-time override names a failing model; the adapter succeeded: the override is
    # the bug, not a lost error type
    override = found["IgnoresRunOverride"]["reason"]
    assert "type was lost" not in override and "succeeded where it must fail" in override
    assert "native request 1 (step 0, module 'first')" in override
    assert "model: expected 'reference/error-500', the adapter sent 'gpt-4o-mini'" in override
    assert "look at: LM settings" in override
    # a prompt-order bug changes the outputs, but the message blames the prompt, not the parsing
    order = found["InputFieldsSorted"]["reason"]
    assert "the requests already differ from native's" in order and "messages[0] (system)" in order
    assert "look at: prompts" in order and "look at: parsing" not in order
    stripped = found["StripsInputs"]["reason"]
    assert "messages[1] (user)" in stripped and "look at: inputs" in stripped
    cancel = found["CancelLeavesTask"]["reason"]
    assert "after the run was cancelled" in cancel and "instead it" not in cancel and "look at: cancel" in cancel


@pytest.mark.slow  # six mutants, each a suite run in its own process (~10 s of CPU)
def test_format_2_messages_name_the_construct_that_went_elsewhere(tmp_path: Path) -> None:
    """A format-2 bug shows first in the trace (a branch, a loop's passes, a parsed object) or as a missing request;
    the message names that record's field and the part of the protocol of its construct -- not parsing, not
    retries."""
    found = run_mutants(tmp_path, "IfConditionAsText", "LoopIgnoresUntil", "ParallelCompletionOrder",
                        "ReactToolErrorRaises", "BestOfNIgnoresThreshold", "ObjectFieldsDropped")
    assert all(o["status"] == "killed" for o in found.values()), found
    branch = found["IfConditionAsText"]["reason"]
    assert "the same requests as native's, but trace record 3 (step 2 at /steps/2, if) outputs /branch: " \
           "expected 'else' (str), got 'then' (str)" in branch
    assert "look at: control flow" in branch and "look at: parsing" not in branch
    loop = found["LoopIgnoresUntil"]["reason"]
    assert "the run went elsewhere before the requests differ: trace record 1 (step 1 at /steps/1, loop)" in loop
    assert "look at: control flow" in loop and "look at: LM errors" not in loop
    parallel = found["ParallelCompletionOrder"]["reason"]
    assert "output" in parallel and "/first_answer" in parallel and "look at: parallel" in parallel
    agent = found["ReactToolErrorRaises"]["reason"]
    assert "native request 2 (step 0, module 'agent') has no counterpart" in agent
    assert agent.index("look at: agents") < agent.index("look at: LM errors")
    ensemble = found["BestOfNIgnoresThreshold"]["reason"]
    assert "another number of requests" in ensemble and "has no counterpart at native: an extra request" in ensemble
    assert ensemble.index("look at: ensembles") < ensemble.index("look at: LM errors")
    objects = found["ObjectFieldsDropped"]["reason"]
    assert "(step 0 at /steps/0, call 'extract') outputs /people/0/age: missing" in objects
    assert "look at: typed objects" in objects


def test_requests_are_compared_request_by_request(tmp_path: Path) -> None:
    """Only the first module's temperature is wrong: the message names that request and that field (the other
    requests are the same), instead of sorting both lists and comparing unrelated requests."""
    code, output, report = run_suite(tmp_path, "broken_adapters:IgnoresModuleTemperature", "-k",
                                     "test_equivalence and literals", pythonpath=HERE)
    assert code == 1 and report is not None, output[-3000:]
    reason = failures(report)["test_equivalence[literals_and_lm_overrides-0]"]
    assert "native request 1 (step 0, module 'draft') vs the adapter's request 1" in reason
    assert "temperature: expected 0.0, the adapter sent 0.3" in reason and "look at: LM settings" in reason


def test_pairing_never_sorts_both_lists() -> None:
    from stepbridge.conformance.checks import diff_requests

    def body(system: str, user: str, **fields: Any) -> dict[str, Any]:
        return {"model": "m", "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
                **fields}

    native = [body("B module", "z question", temperature=0.1), body("A module", "a question", temperature=0.2)]
    # the adapter's second request differs only in temperature; sorting both lists would pair A with B
    adapter = [body("B module", "z question", temperature=0.1), body("A module", "a question", temperature=0.9)]
    diff = diff_requests(native, adapter)
    assert diff is not None and diff[0] == "temperature" and "native request 2 vs the adapter's request 2" in diff[1]
    # arrival order alone is not a difference (map elements arrive in any order)
    assert diff_requests(native, list(reversed(native))) is None
    # a missing request is named, not compared with an unrelated one
    missing = diff_requests(native, native[:1])
    assert missing is not None and "native request 2 has no counterpart" in missing[1]
    # spellings with one meaning are the same request
    assert diff_requests([body("s", "u", max_tokens=5, n=1)], [body("s", "u", max_completion_tokens=5)]) is None


def test_mutant_catalogue_covers_every_bug_class(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(HERE))
    import broken_adapters

    mutants = broken_adapters.MUTANTS
    assert len(mutants) >= 40 and len({m.__name__ for m in mutants}) == len(mutants)
    assert all((m.__doc__ or "").strip() and m.BUG_CLASS != "?" for m in mutants)
    classes = {m.BUG_CLASS for m in mutants}
    issue_12 = {"sampling settings", "response_format", "LM precedence", "lenient parsing", "outputs", "inputs",
                "map order", "map failure", "failed-step trace", "usage", "shared state", "side effects",
                "plan cache", "cancel", "timeout", "aclose"}
    assert issue_12 <= classes, issue_12 - classes
    format_2 = {"control flow", "parallel", "agents", "ensembles", "typed objects"}
    assert format_2 <= classes, format_2 - classes
    # every mutant is built on the independent adapter, which shares nothing with the native executor
    from independent_adapter import IndependentAdapter

    assert all(issubclass(m, IndependentAdapter) for m in mutants)
    source = (HERE / "independent_adapter.py").read_text()
    assert "stepbridge.adapters" not in source and "stepbridge.interpreter" not in source
    assert "stepbridge.references" not in source and "stepbridge.lm import LMPool" not in source


def test_new_capabilities_are_gated_and_get_negative_tests(tmp_path: Path) -> None:
    """Format-2 cases need capabilities the suite has never run (control_flow, agents...): the case format takes
    them, each capability a case needs on its own gets a negative test, and the report has a row for each."""
    from stepbridge.conformance.cases import FORMAT_2_CAPABILITIES, load_cases, negative_cases
    from stepbridge.conformance.report import build_report, render_markdown

    def case(name: str, caps: list[str]) -> None:
        (tmp_path / f"{name}.yaml").write_text(json.dumps({
            "id": name, "description": name, "capabilities": caps,
            "program": {"stepbridge": 2, "name": name, "signature": "q -> a", "steps": []},
            "runs": [{"inputs": {"q": "x"}, "outputs": {"a": "x"}}]}))

    for name, caps in (("loop", ["control_flow"]), ("agent", ["agents"]), ("agent_tools", ["agents", "tools"]),
                       ("typed", ["typed_objects"]), ("xml", ["xml_adapter"]), ("fanout", ["parallel"]),
                       ("vote", ["ensembles"]), ("future", ["holograms"])):
        case(name, caps)
    cases = {c.id: c for c in load_cases(tmp_path)}
    assert cases["agent_tools"].capability == "agents" and cases["future"].capability == "holograms"
    negatives = negative_cases(list(cases.values()))
    assert {cap: c.id for cap, c in negatives.items() if cap != "holograms"} == {
        "control_flow": "loop", "agents": "agent", "typed_objects": "typed", "xml_adapter": "xml",
        "parallel": "fanout", "ensembles": "vote"}
    assert set(negatives) >= FORMAT_2_CAPABILITIES
    tests = [{"id": f"test_case[{c}-0]", "capability": cases[c].capability, "category": "case", "scope": "adapter",
              "outcome": "passed" if c != "loop" else "skipped", "reason": None, "duration": 0.1} for c in cases]
    adapter = {"name": "a", "spec": "a", "class": "a", "version": None, "package": None,
               "capabilities": ["agents", "tools"]}
    report = build_report(adapter, tests, suite_version="2", environment={})
    assert report["capabilities"]["agents"] == "✅" and report["capabilities"]["control_flow"] == "—"
    markdown = render_markdown(report)
    assert "| agents | yes |" in markdown and "| control_flow | no |" in markdown


@pytest.mark.slow  # a pool of worker processes under a suite run (~10 s of CPU)
def test_builtin_out_of_process_names_certify_their_hosted_factories(tmp_path: Path) -> None:
    """``stepbridge conformance pool`` (or ``ray``) means the pool hosting the suite's fixtures: a bare
    PoolAdapter's workers would not know the suite's tools and fail for a reason that is not the adapter's."""
    from stepbridge.conformance.hosted import BUILTIN_HOSTED, hosted_spec

    assert hosted_spec("ray") == "stepbridge.conformance.hosted:ray_native"
    assert hosted_spec("pool[dspy]") == "stepbridge.conformance.hosted:pool_dspy"
    assert hosted_spec("native") == "native" and hosted_spec("mypkg:make") == "mypkg:make"
    assert set(BUILTIN_HOSTED.values()) <= set(__import__("stepbridge.conformance.hosted",
                                                            fromlist=["x"]).__all__)
    code, output, report = run_suite(tmp_path, "pool", "-k", "test_case and tool")
    assert code == 0, output[-4000:]
    assert report is not None and report["summary"]["failed"] == 0 and report["summary"]["passed"] >= 1
