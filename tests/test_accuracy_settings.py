"""Accuracy settings from FMBench's keys and ours."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from pytest_fmbench.accuracy.settings import FMBENCH_PANEL, resolve
from pytest_fmbench.config.loader import load_config
from pytest_fmbench.config.model import Config
from pytest_fmbench.errors import ConfigError

BASE = """\
run_steps: {{4_get_evaluations.ipynb: {step}}}
datasets:
  {ground_truth}
  question_col_key: input
  filters: [{{payload_file: p.jsonl, min_length_in_tokens: 1, max_length_in_tokens: 100000}}]
model_evaluations: model_eval_all_info.yml
experiments:
  - {{name: m, backend: bedrock, model_id: m, payload_files: [p.jsonl], concurrency_levels: [1]}}
"""


def config(tmp_path: Path, *, step: str = "yes", ground_truth: str = "ground_truth_col_key: answers",
           extra: str = "") -> Config:
    path = tmp_path / "cfg.yml"
    path.write_text(BASE.format(step=step, ground_truth=ground_truth) + extra)
    return load_config(path, environ={})


def test_fmbench_default_panel_when_evaluations_run(tmp_path: Path) -> None:
    settings = resolve(config(tmp_path))
    assert settings.enabled and settings.source == "fmbench"
    assert [j.name for j in settings.judges] == list(FMBENCH_PANEL)
    judge = settings.judges[0]
    assert judge.experiment["backend"] == "bedrock" and judge.concurrency == 5
    assert judge.parameters == {"temperature": 0.1, "max_tokens": 300, "top_p": 0.92}
    assert not resolve(config(tmp_path, step="no")).enabled


def test_no_ground_truth_skips_with_a_notice(tmp_path: Path) -> None:
    settings = resolve(config(tmp_path, ground_truth=""))
    assert not settings.enabled and "ground_truth_col_key" in (settings.notice or "")


def test_a_model_evaluations_file_beside_the_config_is_read_with_placeholders(tmp_path: Path) -> None:
    (tmp_path / "model_eval_all_info.yml").write_text(textwrap.dedent("""\
        model_evaluations:
          ground_truth_col: {ground_truth}
          subjective_eval_info:
            judge_panel_list:
              - model_id: us.anthropic.claude-3-5-sonnet-20241022-v2:0
                eval_prompt_template_name: "claude_eval_{method_name}"
              - {model_id: qwen, endpoint: {backend: openai, openai: {base_url: "http://127.0.0.1:9/v1"}}}
            run_parallel_inference_count: 2
            inference_parameters: {temperature: 0.0, max_tokens: 50, caching: false}
        """))
    settings = resolve(config(tmp_path))
    assert [j.name for j in settings.judges] == ["us.anthropic.claude-3-5-sonnet-20241022-v2:0", "qwen"]
    assert settings.judges[1].experiment["backend"] == "openai"
    assert settings.judges[0].parameters == {"temperature": 0.0, "max_tokens": 50, "top_p": 0.92}
    assert settings.judges[0].concurrency == 2


def test_our_section_and_its_errors(tmp_path: Path) -> None:
    settings = resolve(config(tmp_path, extra="accuracy: {quorum: 3, tie: undecided, judges: []}\n"))
    assert settings.voting.quorum == 3 and settings.voting.tie == "undecided" and not settings.judges
    with pytest.raises(ConfigError, match="accuracy.quorom"):
        resolve(config(tmp_path, extra="accuracy: {quorom: 3}\n"))
    with pytest.raises(ConfigError, match="tie policy"):
        resolve(config(tmp_path, extra="accuracy: {tie: coin}\n"))


def test_a_paid_judge_endpoint_is_never_deployed_by_the_judging_phase(tmp_path: Path) -> None:
    extra = ("accuracy:\n  judges:\n    - {model_id: j, endpoint: {backend: sagemaker, "
             "deploy: yes, instance_type: ml.g5.xlarge}}\n")
    with pytest.raises(ConfigError, match="must be an existing endpoint"):
        resolve(config(tmp_path, extra=extra))
