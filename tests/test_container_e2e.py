"""The container backend for real: Podman starts a server image built here (``container_support``),
the benchmark measures it, and nothing of the run is left: not after a normal end, not after
SIGKILL of pytest mid-case (the reaper removes it), not as a labelled leftover (``sweep``).

FMBench's own EC2 config (``config-llama3.2-1b-m7a-24xlarge-ec2.yml`` from its 2.1.6 wheel)
runs with only its ``image_uri`` pointed at the local image. These tests need Podman: CI
installs it (``.ci/run``); they fail, never skip, where it is missing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pytest_fmbench.config.loader import load_config
from tests.container_support import (
    RUN_ARGS_ENV,
    build_server_image,
    containers_of,
    podman,
    remove_run,
    run_args,
)
from tests.e2e_support import BENCHMARK_TEST, INNER_ARGS, read_lines, rows
from tests.fmbench_support import fmbench_config_text, read_layout_files, write_read_dir
from tests.safety_support import reaper_log, sigkill, start_pytest, wait_until

REPO = Path(__file__).resolve().parents[1]
M7A_FILE = "llama3.2/1b/config-llama3.2-1b-m7a-24xlarge-ec2.yml"
M7A_EXPERIMENT = "Meta-Llama-3.2-1b-Instruct"


@pytest.fixture(scope="session")
def server_image() -> str:
    return build_server_image()


@pytest.fixture
def runtime_env(monkeypatch: pytest.MonkeyPatch, server_image: str) -> str:
    """Every container gets the host's Python read-only (inherited by inner pytest runs)."""
    monkeypatch.setenv(RUN_ARGS_ENV, run_args())
    monkeypatch.setenv("FMBENCH_CONTAINER_RUNTIME", podman())
    return server_image


def container_config(image: str, *, iters: int = 3, concurrency: str = "[1, 2]",
                     timeout: float = 60) -> str:
    return textwrap.dedent(f"""\
        general: {{name: containers}}
        datasets:
          synthetic: {{records: 30, seed: 3}}
          max_prompts_per_file: 3
          filters: [{{payload_file: payload_all.jsonl, min_length_in_tokens: 1, max_length_in_tokens: 100000}}]
        inference_parameters: {{fast: {{max_new_tokens: 8}}}}
        load: {{min_iters_per_combination: {iters}, max_iters_per_combination: {iters}, request_timeout_s: 10}}
        experiments:
          - name: served
            backend: container
            instance_type: g6e.xlarge
            container:
              image: {image}
              args: [--model, my-model]
              port: 8000
              health_url: /v1/models
              startup_timeout_s: {timeout}
              stop_timeout_s: 1
            inference_spec: {{parameter_set: fast}}
            payload_files: [payload_all.jsonl]
            concurrency_levels: {concurrency}
        """)


def slowly(condition: Callable[[], bool], every_s: float = 0.5) -> Callable[[], bool]:
    """``condition`` asked at most every ``every_s`` (each asks podman: not every 50 ms)."""
    last = [0.0]

    def ask() -> bool:
        if time.monotonic() - last[0] < every_s:
            return False
        last[0] = time.monotonic()
        return condition()
    return ask


def run_id_of(results: Path) -> str:
    """From the journal's first intent: written before the container is created."""
    return str(next(line["run_id"] for line in rows(results / "journal.jsonl")
                    if line["op"] == "intent"))


def test_a_container_is_started_measured_and_removed(
        pytester: pytest.Pytester, runtime_env: str) -> None:
    (pytester.path / "test_bench.py").write_text(BENCHMARK_TEST)
    pytester.makefile(".yml", cfg=container_config(runtime_env))
    result = pytester.runpytest(*INNER_ARGS, "--fmbench-config=cfg.yml", "--fmbench-results-dir=out")
    result.assert_outcomes(passed=2)
    out = pytester.path / "out"
    run_id = run_id_of(out)
    records = rows(out / "records.jsonl")
    assert len(records) == 9 and all(r["error"] == "" for r in records)  # 3 + 2 x 3
    events = rows(out / "endpoints.jsonl")
    assert [(e["event"], e["ok"]) for e in events] == [("deploy", True), ("teardown", True)]
    name = events[0]["endpoint"]["container"]
    assert events[0]["endpoint"]["backend"] == "container"
    # Removed after the experiment's last case; its log kept, with the args it was given.
    assert containers_of(run_id) == []
    log = (out / "logs" / "served-container.log").read_text()
    assert "'model': 'my-model'" in log and "'port': 8000" in log
    # Journaled before it was created, torn down after.
    journal = rows(out / "journal.jsonl")
    intents = [j for j in journal if j["op"] == "intent"]
    assert intents[0]["plan"]["kind"] == "container" and intents[0]["plan"]["name"] == name
    assert any(j["op"] == "torn_down" for j in journal)
    # Priced from the table's EC2 entry (g6e.xlarge).
    assert "1.861 USD/h" in result.stdout.str()


def test_a_container_that_exits_fails_the_deploy_with_its_log(
        pytester: pytest.Pytester, runtime_env: str) -> None:
    (pytester.path / "test_bench.py").write_text(BENCHMARK_TEST)
    # An argument the server rejects: it exits at once, long before the timeout.
    text = container_config(runtime_env, concurrency="[1]", timeout=120).replace(
        "[--model, my-model]", "[--no-such-option]")
    pytester.makefile(".yml", cfg=text)
    result = pytester.runpytest(*INNER_ARGS, "--fmbench-config=cfg.yml", "--fmbench-results-dir=out")
    result.assert_outcomes(errors=1)
    output = result.stdout.str()
    assert "exited" in output and "before /v1/models answered" in output
    assert "unrecognized arguments: --no-such-option" in output
    assert containers_of(run_id_of(pytester.path / "out")) == []


def test_without_a_container_runtime_it_is_one_usage_error(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FMBENCH_CONTAINER_RUNTIME", "no-such-runtime")
    (pytester.path / "test_bench.py").write_text(BENCHMARK_TEST)
    pytester.makefile(".yml", cfg=container_config("localhost/anything:1"))
    result = pytester.runpytest_subprocess(*INNER_ARGS, "--fmbench-config=cfg.yml",
                                           "--fmbench-results-dir=out")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    error = result.stderr.str()
    assert "experiment 'served' starts its server in a container" in error
    assert "'no-such-runtime' is not installed" in error
    assert "deploy: no" in error and "openai.deploy.command" in error
    assert "Traceback" not in error
    # Only the selected experiments need one: deselected, nothing is checked.
    other = pytester.runpytest_subprocess(*INNER_ARGS, "--fmbench-config=cfg.yml",
                                          "--fmbench-results-dir=out2", "-k", "nothing")
    assert other.ret == pytest.ExitCode.NO_TESTS_COLLECTED


@pytest.mark.parametrize("signal_name", ["SIGKILL", "SIGTERM"])
def test_killed_mid_case_no_container_of_the_run_is_left(
        pytester: pytest.Pytester, runtime_env: str, signal_name: str) -> None:
    """SIGKILL: the reaper removes it; SIGTERM: pytest's own teardown does (or the reaper)."""
    (pytester.path / "test_bench.py").write_text(BENCHMARK_TEST)
    pytester.makefile(".yml", cfg=container_config(runtime_env, iters=100_000, concurrency="[1]"))
    process = start_pytest(pytester.path, "--fmbench-config=cfg.yml", "--fmbench-results-dir=out")
    out = pytester.path / "out"
    started = False
    try:
        wait_until(lambda: len(read_lines(out / "records.jsonl")) >= 3, 120,
                   "requests to the container", process)
        run_id = run_id_of(out)
        started = True
        assert len(containers_of(run_id)) == 1
        if signal_name == "SIGKILL":
            sigkill(process)
        else:
            process.send_signal(signal.SIGTERM)
            process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert started
    try:
        took = wait_until(slowly(lambda: containers_of(run_id) == []), 60,
                          "the reaper to remove the container")
    finally:  # never leave it running, even when the reaper failed
        remove_run(run_id)
    print(f"no container left {took:.1f} s after {signal_name} of pytest")
    if signal_name == "SIGKILL":
        wait_until(lambda: "reaped served" in reaper_log(out), 10, "the reaper's log line")


def test_sweep_removes_a_labelled_leftover_and_nothing_else(server_image: str) -> None:
    run_id = f"sweep-test-{os.getpid()}"
    labels = ["--label", "fmbench.created-by=pytest-fmbench", "--label", f"fmbench.run-id={run_id}"]
    # Created, never started: a leftover all the same.
    ours = f"fmbench-leftover-{os.getpid()}"
    theirs = f"not-fmbench-{os.getpid()}"
    subprocess.run([podman(), "create", "--name", ours, *labels, server_image],
                   check=True, capture_output=True, timeout=60)
    subprocess.run([podman(), "create", "--name", theirs, "--label", f"fmbench.run-id={run_id}",
                    server_image], check=True, capture_output=True, timeout=60)
    try:
        def sweep(*extra: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "pytest_fmbench", "sweep", "--no-sagemaker", "--containers",
                 "--run-id", run_id, *extra],
                capture_output=True, text=True, timeout=120, env=dict(os.environ), check=False)

        dry = sweep("--dry-run")
        assert dry.returncode == 1 and f"would delete container {ours}" in dry.stdout, dry
        done = sweep()
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"deleted container {ours}" in done.stdout
        assert containers_of(run_id) == [theirs]  # without created-by: not ours, left alone
        assert "sweep: found 0" in sweep().stdout
    finally:
        for name in (ours, theirs):  # one by one: a missing name fails the whole command
            subprocess.run([podman(), "rm", "-f", name], capture_output=True, timeout=60,
                           check=False)


def test_fmbench_ec2_config_deploys_its_container_end_to_end(
        pytester: pytest.Pytester, runtime_env: str) -> None:
    """FMBench's vLLM-on-CPU EC2 config, verbatim but for its image_uri."""
    text = fmbench_config_text(M7A_FILE)
    assert text.count("image_uri: vllm-cpu-env") == 1
    (pytester.path / "cfg.yml").write_text(
        text.replace("image_uri: vllm-cpu-env", f"image_uri: {runtime_env}"), encoding="utf-8")
    sets = {"region": "us-east-1", "role_arn": "arn:aws:iam::123456789012:role/x",
            "write_bucket": "write-bucket", "read_bucket": "read-bucket"}
    config = load_config(pytester.path / "cfg.yml", sets)
    experiment = config.experiments[0]
    assert experiment.resolved_backend == "container" and experiment.deploy
    assert config.s3_read_data is not None
    files = read_layout_files(config.s3_read_data.model_dump(), records=24,
                              keys=config.datasets.prompt_template_keys)
    write_read_dir(pytester.path / "fmbench-read", files)
    shutil_copy(REPO / "benchmarks" / "test_fmbench.py", pytester.path / "test_fmbench.py")
    result = pytester.runpytest(
        *INNER_ARGS, "--fmbench-config=cfg.yml", "--fmbench-results-dir=out",
        f"--fmbench-read-dir={pytester.path / 'fmbench-read'}",
        *[f"--fmbench-set={k}={v}" for k, v in sets.items()], "-k", "en_1-500 and c2")
    result.assert_outcomes(passed=1)
    out = pytester.path / "out"
    records = rows(out / "records.jsonl")
    assert records and {r["experiment"] for r in records} == {M7A_EXPERIMENT}
    assert all(r["error"] == "" for r in records), {r["error"] for r in records}
    events = rows(out / "endpoints.jsonl")
    assert [(e["event"], e["ok"]) for e in events] == [("deploy", True), ("teardown", True)]
    described: dict[str, Any] = events[0]["endpoint"]
    assert described["container_type"] == "vllm" and described["image"] == runtime_env
    # The container got FMBench's vLLM arguments; the container is gone; a report exists.
    log = (out / "logs" / f"{M7A_EXPERIMENT}-container.log").read_text()
    assert "'model': 'meta-llama/Llama-3.2-1b-Instruct'" in log
    assert containers_of(run_id_of(out)) == []
    report = (out / "report.md").read_text()
    assert M7A_EXPERIMENT in report and "m7a.24xlarge" in report
    # Priced from FMBench's EC2 entry (m7a.24xlarge: 5.564 USD/h).
    assert "5.564 USD/h" in result.stdout.str()


def shutil_copy(source: Path, target: Path) -> None:
    target.write_bytes(source.read_bytes())


def test_a_sigkilled_xdist_workers_container_is_removed_while_the_run_goes_on(
        pytester: pytest.Pytester, runtime_env: str) -> None:
    (pytester.path / "test_bench.py").write_text(BENCHMARK_TEST)
    text = container_config(runtime_env, iters=20)
    experiment = text[text.index("  - name: served"):]
    pytester.makefile(".yml", cfg=text + experiment.replace("name: served", "name: other"))
    process = start_pytest(pytester.path, "-n", "2", "--fmbench-config=cfg.yml",
                           "--fmbench-results-dir=out", xdist=True)
    out = pytester.path / "out"

    def served_intent() -> dict[str, Any] | None:
        for path in out.glob("journal-gw*.jsonl"):
            for line in rows(path):
                if line["op"] == "intent" and line["experiment"] == "served":
                    return line
        return None

    run_id = ""
    try:
        wait_until(slowly(lambda: served_intent() is not None and len(
            containers_of(str((served_intent() or {}).get("run_id")))) == 2),
                   120, "both experiments' containers", process)
        intent = served_intent()
        assert intent is not None
        run_id, crashed = str(intent["run_id"]), str(intent["plan"]["name"])
        os.kill(intent["pid"], signal.SIGKILL)  # the worker serving "served"
        took = wait_until(slowly(lambda: crashed not in containers_of(run_id)), 60,
                          "the crashed worker's container to be removed")
        still_running = process.poll() is None
        output, _ = process.communicate(timeout=240)
    finally:
        if process.poll() is None:
            process.kill()
        if run_id:
            wait_until(slowly(lambda: containers_of(run_id) == []), 60,
                       "every container of the run gone")
            remove_run(run_id)
    print(f"removed the SIGKILLed worker's container {took:.1f} s after the kill")
    assert still_running, "removed only at session end"
    assert "missing cases (1)" in output and "left by crashed worker gw" in output
    assert containers_of(run_id) == []
