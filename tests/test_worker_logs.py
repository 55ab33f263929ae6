"""Under ``-n``, workers' log lines reach the controller's terminal and ``logs/`` (REVIEW M1)."""

from __future__ import annotations

import os

import pytest

from tests.e2e_support import BENCHMARK_TEST, RECORDING_BACKEND, recording_config


def test_worker_lines_reach_the_controller_terminal_and_logs(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makepyfile(recording_backend=RECORDING_BACKEND, test_bench=BENCHMARK_TEST)
    # The workers import the backend from here, and the plugin from this tree.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(pytester.path), *filter(None, [os.environ.get("PYTHONPATH")])]))
    monkeypatch.setenv("FMBENCH_TEST_LOG", str(pytester.path / "lifecycle.log"))
    pytester.makefile(".yml", cfg=recording_config(concurrency="[1]"))
    result = pytester.runpytest_subprocess("-p", "no:randomly", "-p", "no:cacheprovider",
                                           "-n", "2", "--fmbench-config=cfg.yml",
                                           "--fmbench-results-dir=out")
    result.assert_outcomes(passed=2)
    # deploy progress of each experiment, printed by the controller with its worker's id
    result.stdout.fnmatch_lines_random(["*[[]gw?[]] [[]fmbench[]] deploying endpoint of 'alpha'*",
                                        "*[[]gw?[]] [[]fmbench[]] deploying endpoint of 'beta'*"])
    logs = pytester.path / "out" / "logs"
    worker_logs = "".join(p.read_text() for p in sorted(logs.glob("fmbench-gw*.log")))
    assert "deploying endpoint of 'alpha'" in worker_logs
    assert "deploying endpoint of 'beta'" in worker_logs
    # the controller's own log holds the shipped lines too
    controller_log = (logs / "fmbench.log").read_text()
    assert "] [fmbench] deploying endpoint of 'alpha'" in controller_log


def test_a_workers_last_lines_arrive_through_workeroutput() -> None:
    """Teardowns at a worker's session end happen after its last test report."""
    from types import SimpleNamespace

    from pytest_fmbench.plugin import LOG_ATTRIBUTE, XdistHooks

    printed: list[str] = []
    cleaned: list[str] = []
    hooks = XdistHooks(SimpleNamespace(log=printed.append, workers_left=[],  # type: ignore[arg-type]
                                       start_orphan_cleanup=cleaned.append))
    node = SimpleNamespace(gateway=SimpleNamespace(id="gw3"), workeroutput={
        LOG_ATTRIBUTE: ["[fmbench] teardown of 'alpha' failed: ClientError: throttled"]})
    hooks.pytest_testnodedown(node, None)
    hooks.pytest_testnodedown(SimpleNamespace(gateway=SimpleNamespace(id="gw4")), "crashed")
    assert printed == ["[gw3] [fmbench] teardown of 'alpha' failed: ClientError: throttled"]
    assert cleaned == ["gw4"]  # the crashed worker's endpoints are deleted at once
