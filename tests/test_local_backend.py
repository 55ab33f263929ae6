"""The embedded local backend end to end: a real ``transformers serve`` process.

No server process may outlive the run: not after a normal finish, not after Ctrl-C in the
middle of a case.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.e2e_support import BENCHMARK_TEST, alive, rows

CONFIG = """\
general: {{name: local-e2e}}
datasets:
  tokenizer: local:tiny
  synthetic: {{records: 40, seed: 3}}
  max_prompts_per_file: 4
  filters:
    - {{payload_file: payload_short.jsonl, min_length_in_tokens: 1, max_length_in_tokens: 200}}
inference_parameters:
  short: {{max_new_tokens: 8}}
load: {{min_iters_per_combination: {waves}, max_iters_per_combination: {waves}, warmup_requests: 1}}
experiments:
  - name: tiny
    backend: local
    local: {{model: tiny}}
    price_per_hour: 0.1
    inference_spec: {{parameter_set: short}}
    payload_files: [payload_short.jsonl]
    concurrency_levels: [1]
"""


def start_pytest(tmp_path: Path, waves: int) -> subprocess.Popen[bytes]:
    (tmp_path / "cfg.yml").write_text(CONFIG.format(waves=waves))
    (tmp_path / "test_bench.py").write_text(textwrap.dedent(BENCHMARK_TEST))
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:randomly", "-p", "no:cacheprovider",
         "-p", "no:xdist", "--fmbench-config=cfg.yml", "--fmbench-results-dir=out", "-q"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )


def server_pid(results: Path) -> int:
    deploys = [e for e in rows(results / "endpoints.jsonl") if e["event"] == "deploy"]
    assert deploys and deploys[0]["ok"], deploys
    return int(deploys[0]["endpoint"]["pid"])


def wait_for(condition, timeout: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.2)


def test_a_finished_run_leaves_no_server(tmp_path: Path) -> None:
    process = start_pytest(tmp_path, waves=2)
    output, _ = process.communicate(timeout=280)
    assert process.returncode == 0, output.decode()
    records = rows(tmp_path / "out" / "records.jsonl")
    assert len(records) == 2
    assert all(r["error"] == "" and r["completion_tokens"] == 8 for r in records)
    assert all(r["token_source"] == "server" for r in records)
    assert not alive(server_pid(tmp_path / "out"))


def test_sigint_in_the_middle_of_a_case_leaves_no_server(tmp_path: Path) -> None:
    process = start_pytest(tmp_path, waves=10_000)
    records = tmp_path / "out" / "records.jsonl"
    try:
        wait_for(lambda: len(rows(records)) >= 2, timeout=240)
        pid = server_pid(tmp_path / "out")
        assert alive(pid)
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert b"KeyboardInterrupt" in output
    assert not alive(pid)
    # What was measured before the interrupt is kept.
    assert len(rows(records)) >= 2


@pytest.mark.parametrize("sig", [signal.SIGTERM])
def test_sigterm_takes_the_same_path(tmp_path: Path, sig: int) -> None:
    process = start_pytest(tmp_path, waves=10_000)
    try:
        wait_for(lambda: len(rows(tmp_path / "out" / "records.jsonl")) >= 1, timeout=240)
        pid = server_pid(tmp_path / "out")
        process.send_signal(sig)
        process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert not alive(pid)
