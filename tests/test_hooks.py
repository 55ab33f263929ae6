"""The pytest_fmbench_* hooks (pytest_fmbench/hooks.py), implemented in a user's conftest."""

from __future__ import annotations

import json

import pytest

from pytest_fmbench.testing.openai_server import FakeOpenAIServer, ServerBehaviour
from tests.e2e_support import BENCHMARK_TEST, INNER_ARGS, openai_config

# A user's conftest pushing results to a "dashboard" (a JSON lines file), as in docs/extending.md.
DASHBOARD_CONFTEST = '''
import json


def _send(record):
    with open("dashboard.jsonl", "a") as handle:
        handle.write(json.dumps(record) + "\\n")


def pytest_fmbench_case_finished(case, summary):
    _send({"case": case.id, "experiment": case.experiment, "concurrency": case.concurrency,
           "requests": summary["requests"], "tpm": summary["tpm"]})


def pytest_fmbench_session_report(report, results_dir):
    results = json.loads((results_dir / "results.json").read_text())
    _send({"passed": report.passed, "report": str(report.report_path),
           "combinations": len(results["metrics"])})
'''

RAISING_CONFTEST = '''
def pytest_fmbench_case_finished(case):
    raise RuntimeError("dashboard down")


def pytest_fmbench_session_report(report):
    raise RuntimeError("dashboard still down")
'''


@pytest.fixture(scope="module")
def server():
    with FakeOpenAIServer(ServerBehaviour(ttft_s=0.002, token_delay_s=0.001)) as running:
        yield running


def _bench(pytester: pytest.Pytester, server: FakeOpenAIServer, conftest: str) -> None:
    pytester.makepyfile(test_bench=BENCHMARK_TEST)
    pytester.makeconftest(conftest)
    pytester.makefile(".yml", cfg=openai_config(server.url))


def _dashboard(pytester: pytest.Pytester) -> list[dict]:
    lines = (pytester.path / "dashboard.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def _check_dashboard(pytester: pytest.Pytester) -> None:
    records = _dashboard(pytester)
    cases, session = records[:-1], records[-1]
    # One call per case (2 experiments x 2 payload files x c1, c2), then one session report.
    assert len(cases) == 8
    assert {c["experiment"] for c in cases} == {"alpha", "beta"}
    assert all(c["requests"] == 2 * c["concurrency"] and c["tpm"] > 0 for c in cases)
    assert session == {"passed": True, "report": str(pytester.path / "out" / "report.md"),
                       "combinations": 8}


def test_a_conftest_gets_every_case_and_the_session_report(pytester: pytest.Pytester,
                                                           server: FakeOpenAIServer) -> None:
    _bench(pytester, server, DASHBOARD_CONFTEST)
    result = pytester.runpytest(*INNER_ARGS, "--fmbench-config=cfg.yml", "--fmbench-results-dir=out")
    assert result.ret == 0, result.stdout.str()
    _check_dashboard(pytester)


def test_under_xdist_the_hooks_run_once_on_the_controller(pytester: pytest.Pytester,
                                                          server: FakeOpenAIServer) -> None:
    pytest.importorskip("xdist")
    _bench(pytester, server, DASHBOARD_CONFTEST)
    result = pytester.runpytest("-p", "no:randomly", "-p", "no:cacheprovider", "-n", "2",
                                "--fmbench-config=cfg.yml", "--fmbench-results-dir=out")
    assert result.ret == 0, result.stdout.str()
    _check_dashboard(pytester)


def test_a_raising_hook_is_a_warning_line_and_never_fails_the_run(pytester: pytest.Pytester,
                                                                  server: FakeOpenAIServer) -> None:
    _bench(pytester, server, RAISING_CONFTEST)
    result = pytester.runpytest(*INNER_ARGS, "--fmbench-config=cfg.yml", "--fmbench-results-dir=out")
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines([
        "*WARNING pytest_fmbench_case_finished raised RuntimeError: dashboard down*",
        "*WARNING pytest_fmbench_session_report raised RuntimeError: dashboard still down*",
        "*8 passed*",
    ])


def test_a_misspelt_hook_in_a_conftest_is_refused_by_pytest(pytester: pytest.Pytester,
                                                            server: FakeOpenAIServer) -> None:
    """The hookspecs are registered, so pytest validates implementations against them."""
    _bench(pytester, server, "def pytest_fmbench_case_finished(case, sumary):\n    pass\n")
    result = pytester.runpytest(*INNER_ARGS, "--fmbench-config=cfg.yml", "--fmbench-results-dir=out")
    assert result.ret != 0
    assert "sumary" in result.stdout.str() + result.stderr.str()
