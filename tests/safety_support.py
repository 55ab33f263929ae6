"""Shared pieces of the money-safety tests: the emulated control plane, configs, waiting."""

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

from tests.e2e_support import INNER_ARGS, read_lines

ROLE = "arn:aws:iam::123456789012:role/fmbench-test"
IMAGE = ("763104351884.dkr.ecr.us-east-1.amazonaws.com/huggingface-pytorch-tgi-inference:"
         "2.4.0-tgi2.3.1-gpu-py311-cu124-ubuntu22.04")


def sagemaker_experiment(name: str, *, concurrency: str = "[1]", ep_name: str | None = None) -> str:
    return textwrap.indent(textwrap.dedent(f"""\
        - name: {name}
          model_id: Qwen/Qwen2.5-0.5B-Instruct
          ep_name: {ep_name or name}
          instance_type: ml.g5.xlarge
          image_uri: {IMAGE}
          deploy: yes
          inference_script: sagemaker_predictor.py
          inference_spec: {{parameter_set: tgi}}
          sagemaker: {{poll_interval_s: 0.1}}
          payload_files: [payload_all.jsonl]
          concurrency_levels: {concurrency}
        """), "  ")


def sagemaker_config(*experiments: str, iters: int = 2, name: str = "safety") -> str:
    head = textwrap.dedent(f"""\
        general: {{name: {name}}}
        aws: {{region: us-east-1, sagemaker_execution_role: "{{role_arn}}"}}
        datasets:
          synthetic: {{records: 30, seed: 3}}
          max_prompts_per_file: 3
          filters: [{{payload_file: payload_all.jsonl, min_length_in_tokens: 1, max_length_in_tokens: 100000}}]
        inference_parameters: {{tgi: {{max_new_tokens: 16}}}}
        load: {{min_iters_per_combination: {iters}, max_iters_per_combination: {iters}, request_timeout_s: 30}}
        experiments:
        """)
    return head + "".join(experiments or (sagemaker_experiment("deployed"),))


def command_config(command: str, *, iters: int = 10_000) -> str:
    return textwrap.dedent(f"""\
        general: {{name: command}}
        datasets:
          synthetic: {{records: 30, seed: 3}}
          max_prompts_per_file: 3
          filters: [{{payload_file: payload_all.jsonl, min_length_in_tokens: 1, max_length_in_tokens: 100000}}]
        inference_parameters: {{fast: {{max_new_tokens: 8}}}}
        load: {{min_iters_per_combination: {iters}, max_iters_per_combination: {iters}, request_timeout_s: 10}}
        experiments:
          - name: served
            backend: openai
            price_per_hour: 1.0
            openai:
              deploy:
                command: "{command}"
                startup_timeout_s: 60
            inference_spec: {{parameter_set: fast}}
            payload_files: [payload_all.jsonl]
            concurrency_levels: [1]
        """)


def start_pytest(cwd: Path, *args: str, xdist: bool = False) -> subprocess.Popen[str]:
    inner = [a for a in INNER_ARGS if not (xdist and a == "no:xdist")]
    if xdist:  # drop the "-p" that went with "no:xdist"
        inner = list(INNER_ARGS[:-2])
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", *inner, "-p", "no:timeout", *args],
        cwd=cwd, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)


def wait_until(condition: Callable[[], Any], timeout_s: float, what: str,
               process: subprocess.Popen[str] | None = None) -> float:
    """Seconds it took; fails with ``what`` (and the process's output if it ended)."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            output = ""
            if process is not None and process.poll() is not None and process.stdout:
                output = process.stdout.read()
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}\n{output}")
        time.sleep(0.05)
    return time.monotonic() - started


def sigkill(process: subprocess.Popen[str]) -> str:
    process.send_signal(signal.SIGKILL)
    output, _ = process.communicate(timeout=30)
    return output


def reaper_log(results: Path) -> str:
    return "\n".join(read_lines(results / "logs" / "reaper.log"))
