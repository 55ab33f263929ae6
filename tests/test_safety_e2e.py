"""Money safety end to end: real pytest runs, real processes, real boto3 clients against an
emulated SageMaker control plane that behaves like the real one (endpoints sit in
``Creating``; DeleteEndpoint is refused until they leave it; calls get throttled).

Nothing deployed may outlive the run: not after throttling, not after SIGKILL of pytest
while an endpoint is ``Creating`` or mid-case, not for a ``deploy.command`` server, not for
a SIGKILLed xdist worker. Every wait here is bounded; measured reaping times are printed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_fmbench.endpoints import process
from pytest_fmbench.testing.aws_emulator import AwsRuntimeEmulator, aws_environment
from pytest_fmbench.testing.sagemaker_control import SageMakerControl
from tests.e2e_support import BENCHMARK_TEST, alive, read_lines, rows
from tests.safety_support import (
    ROLE,
    command_config,
    reaper_log,
    sagemaker_config,
    sagemaker_experiment,
    sigkill,
    start_pytest,
    wait_until,
)

EMPTY = {"endpoints": [], "configs": [], "models": []}
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[SageMakerControl, AwsRuntimeEmulator]]:
    with SageMakerControl() as control, AwsRuntimeEmulator(ttft_s=0.004,
                                                           token_delay_s=0.0005) as runtime:
        yield control, runtime


@pytest.fixture
def aws(servers: tuple[SageMakerControl, AwsRuntimeEmulator],
        monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[SageMakerControl, AwsRuntimeEmulator]]:
    control, runtime = servers
    control.reset()
    runtime.reset()
    control.creating_s, control.deleting_s = 0.0, 0.0
    for key, value in aws_environment(control_url=control.url, runtime_url=runtime.url).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("FMBENCH_ROLE_ARN", ROLE)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    timing = runtime.ttft_s, runtime.token_delay_s
    yield control, runtime
    runtime.ttft_s, runtime.token_delay_s = timing


def test_throttled_describe_and_delete_with_creating_delays_exit_0_and_leave_nothing(
        pytester: pytest.Pytester, aws: tuple[SageMakerControl, AwsRuntimeEmulator]) -> None:
    control, _ = aws
    control.creating_s = 1.0
    control.inject("DescribeEndpoint", times=3)
    control.inject("DeleteEndpoint", times=3)
    pytester.makepyfile(test_bench=BENCHMARK_TEST)
    pytester.makefile(".yml", cfg=sagemaker_config())
    result = pytester.runpytest_subprocess("-p", "no:randomly", "-p", "no:cacheprovider",
                                           "--fmbench-config=cfg.yml", "--fmbench-results-dir=out")
    assert result.ret == 0, result.stdout.str()
    result.assert_outcomes(passed=1)
    assert control.errors("DescribeEndpoint") == ["ThrottlingException"] * 3
    assert control.errors("DeleteEndpoint") == ["ThrottlingException"] * 3
    assert control.inventory() == EMPTY
    events = rows(pytester.path / "out" / "endpoints.jsonl")
    assert [(e["event"], e["ok"]) for e in events] == [("deploy", True), ("teardown", True)]


def test_a_teardown_that_keeps_failing_fails_the_run_and_names_the_command(
        pytester: pytest.Pytester, aws: tuple[SageMakerControl, AwsRuntimeEmulator],
        monkeypatch: pytest.MonkeyPatch) -> None:
    control, _ = aws
    control.inject("DeleteEndpoint", times=None, code="AccessDeniedException",
                   message="not authorized to perform: sagemaker:DeleteEndpoint")
    summary = pytester.path / "step-summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    pytester.makepyfile(test_bench=BENCHMARK_TEST)
    pytester.makefile(".yml", cfg=sagemaker_config())
    result = pytester.runpytest_subprocess("-p", "no:randomly", "-p", "no:cacheprovider",
                                           "--fmbench-config=cfg.yml", "--fmbench-results-dir=out",
                                           "--fmbench-teardown-timeout=1")
    assert result.ret == 1, result.stdout.str()
    (name,) = control.names("endpoint")
    command = f"aws sagemaker delete-endpoint --endpoint-name {name} --region us-east-1"
    output = result.stdout.str()
    assert "ENDPOINT STILL RUNNING (1)" in output and command in output
    assert "Traceback" not in output and "INTERNALERROR" not in output
    results = json.loads((pytester.path / "out" / "results.json").read_text())
    (left,) = results["endpoints_left_running"]
    assert left["experiment"] == "deployed" and command in left["commands"]
    assert "AccessDeniedException" in left["error"]
    report = (pytester.path / "out" / "report.md").read_text()
    assert "## Endpoints left running" in report and command in report
    assert command in summary.read_text()
    # The reaper was told "done": what is left is the human's (and sweep's) to delete.
    control.reset()


def _deployed(control: SageMakerControl) -> bool:
    return bool(control.names("endpoint"))


def test_sigkill_while_creating_leaves_nothing(
        pytester: pytest.Pytester, aws: tuple[SageMakerControl, AwsRuntimeEmulator]) -> None:
    control, _ = aws
    control.creating_s = 3.0
    (pytester.path / "test_bench.py").write_text(textwrap.dedent(BENCHMARK_TEST))
    pytester.makefile(".yml", cfg=sagemaker_config())
    pytest_process = start_pytest(pytester.path, "--fmbench-config=cfg.yml",
                                  "--fmbench-results-dir=out")
    try:
        wait_until(lambda: _deployed(control), 60, "the endpoint to be created", pytest_process)
        (name,) = control.names("endpoint")
        assert control.status_of(name) == "Creating"
        sigkill(pytest_process)
    finally:
        if pytest_process.poll() is None:
            pytest_process.kill()
    took = wait_until(lambda: control.inventory() == EMPTY, 30, "the reaper to delete it all")
    print(f"reaped {name} {took:.1f} s after SIGKILL (Creating for 3 s)")
    log = reaper_log(pytester.path / "out")
    assert "controller  dropped without 'done'" in log, log
    # It waited for Creating to end instead of failing on the refused delete.
    assert "is Creating: waiting to delete it" in log or \
        control.errors("DeleteEndpoint").count("ValidationException") >= 1
    reaper_journal = pytester.path / "out" / "journal-reaper.jsonl"
    wait_until(lambda: rows(reaper_journal), 10, "the reaper's journal line")
    assert [(r["op"], r["by"]) for r in rows(reaper_journal)] == [("torn_down", "reaper")]


def test_sigkill_mid_case_leaves_nothing(
        pytester: pytest.Pytester, aws: tuple[SageMakerControl, AwsRuntimeEmulator]) -> None:
    control, runtime = aws
    runtime.ttft_s, runtime.token_delay_s = 0.05, 0.03  # ~0.5 s a request
    (pytester.path / "test_bench.py").write_text(textwrap.dedent(BENCHMARK_TEST))
    pytester.makefile(".yml", cfg=sagemaker_config(iters=200))
    pytest_process = start_pytest(pytester.path, "--fmbench-config=cfg.yml",
                                  "--fmbench-results-dir=out")
    try:
        wait_until(lambda: len(runtime.requests) >= 3, 60, "requests of the case", pytest_process)
        assert len(control.names("endpoint")) == 1
        sigkill(pytest_process)
    finally:
        if pytest_process.poll() is None:
            pytest_process.kill()
    took = wait_until(lambda: control.inventory() == EMPTY, 30, "the reaper to delete it all")
    print(f"reaped mid-case {took:.1f} s after SIGKILL")


def test_a_deploy_command_server_does_not_survive_sigkill_of_pytest(
        pytester: pytest.Pytester, aws: tuple[SageMakerControl, AwsRuntimeEmulator]) -> None:
    # dash does not exec the command, and the "; true" makes sure no shell could: the server
    # is the shell's child, which PR_SET_PDEATHSIG never reaches (REVIEW H4).
    server = (f"{sys.executable} -m pytest_fmbench.testing.openai_server --port $FMBENCH_PORT "
              "--ttft 0.05 --token-delay 0.02; true")
    (pytester.path / "test_bench.py").write_text(textwrap.dedent(BENCHMARK_TEST))
    pytester.makefile(".yml", cfg=command_config(server))
    pytest_process = start_pytest(pytester.path, "--fmbench-config=cfg.yml",
                                  "--fmbench-results-dir=out")
    records = pytester.path / "out" / "records.jsonl"
    try:
        wait_until(lambda: len(read_lines(records)) >= 2, 90, "requests to the server",
                   pytest_process)
        entries = [line for line in rows(pytester.path / "out" / "journal.jsonl")
                   if line["op"] in ("intent", "update")]
        identity = process.ProcessIdentity.from_json(entries[-1]["plan"]["process"])
        members = process.processes_of(identity)
        assert len(members) == 2, members  # the shell and the server
        sigkill(pytest_process)
    finally:
        if pytest_process.poll() is None:
            pytest_process.kill()
    took = wait_until(lambda: not any(alive(pid) for pid in members), 30,
                      "the server's processes to be gone")
    print(f"reaped the deploy.command server {took:.1f} s after SIGKILL")
    wait_until(lambda: "reaped served" in reaper_log(pytester.path / "out"), 10,
               "the reaper's log line")


def test_a_sigkilled_xdist_worker_endpoint_is_deleted_while_the_run_goes_on(
        pytester: pytest.Pytester, aws: tuple[SageMakerControl, AwsRuntimeEmulator]) -> None:
    control, runtime = aws
    runtime.ttft_s, runtime.token_delay_s = 0.02, 0.01
    (pytester.path / "test_bench.py").write_text(textwrap.dedent(BENCHMARK_TEST))
    pytester.makefile(".yml", cfg=sagemaker_config(
        sagemaker_experiment("alpha", concurrency="[1, 2]"),
        sagemaker_experiment("beta", concurrency="[1, 2]"), iters=40))
    pytest_process = start_pytest(pytester.path, "-n", "2", "--fmbench-config=cfg.yml",
                                  "--fmbench-results-dir=out", xdist=True)
    out = pytester.path / "out"

    def alpha_intent() -> dict[str, Any] | None:
        for path in out.glob("journal-gw*.jsonl"):
            for line in rows(path):
                if line["op"] == "intent" and line["experiment"] == "alpha":
                    return line
        return None

    try:
        wait_until(lambda: alpha_intent() is not None and len(control.names("endpoint")) == 2
                   and len(runtime.requests) >= 4, 90, "both experiments to run", pytest_process)
        intent = alpha_intent()
        assert intent is not None
        (crashed,) = [n for k, n in intent["plan"]["resources"] if k == "endpoint"]
        os.kill(intent["pid"], 9)  # the worker serving alpha
        killed = time.monotonic()
        wait_until(lambda: crashed not in control.names("endpoint"), 30,
                   "the crashed worker's endpoint to be deleted")
        took = time.monotonic() - killed
        still_running = pytest_process.poll() is None
        output, _ = pytest_process.communicate(timeout=180)
    finally:
        if pytest_process.poll() is None:
            pytest_process.kill()
    print(f"deleted the SIGKILLed worker's endpoint {took:.1f} s after the kill")
    assert still_running, "deleted only at session end"
    assert pytest_process.returncode == 1, output  # the case it died in is missing
    assert "missing cases (1)" in output
    # The controller deleted it at pytest_testnodedown (the reaper did the same, as backup).
    assert "left by crashed worker gw" in output
    # A re-deploy of alpha on another worker got other names (no collision).
    deploys = [e for p in out.glob("endpoints-gw*.jsonl") for e in rows(p)
               if e["event"] == "deploy" and e["experiment"] == "alpha"]
    assert all(e["ok"] for e in deploys)
    names = [e["endpoint"]["endpoint_name"] for e in deploys]
    assert crashed in names and len(set(names)) == len(names), names
    assert control.inventory() == EMPTY


def test_sweep_after_the_runs_finds_nothing(
        aws: tuple[SageMakerControl, AwsRuntimeEmulator], tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "pytest_fmbench", "sweep", "--older-than", "0",
                             "--results-dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=60, env=dict(os.environ),
                            check=False)
    assert result.returncode == 0, result.stderr
    assert "sweep: found 0, deleted 0, failed 0" in result.stdout


def test_a_bad_teardown_timeout_is_one_usage_error(
        pytester: pytest.Pytester, aws: tuple[SageMakerControl, AwsRuntimeEmulator]) -> None:
    pytester.makefile(".yml", cfg=sagemaker_config())
    result = pytester.runpytest_subprocess("-p", "no:randomly", "--fmbench-config=cfg.yml",
                                           "--fmbench-teardown-timeout=soon")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--fmbench-teardown-timeout expects seconds, got 'soon'" in result.stderr.str()
    assert "Traceback" not in result.stderr.str()
