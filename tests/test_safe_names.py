"""Payload file names and the run name cannot escape the results dir (REVIEW L8)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from pytest_fmbench.config.loader import load_config
from pytest_fmbench.errors import ConfigError

CONFIG = """\
general: {{name: {name}}}
datasets:
  filters:
    - {{payload_file: {filter_file}}}
experiments:
  - name: e
    backend: openai
    openai: {{base_url: "http://127.0.0.1:9"}}
    payload_files: [{experiment_file}]
    concurrency_levels: [1]
"""


def _load(tmp_path: Path, *, name: str = "run", filter_file: str = "p.jsonl",
          experiment_file: str = "p.jsonl") -> None:
    path = tmp_path / "cfg.yml"
    path.write_text(CONFIG.format(name=name, filter_file=filter_file, experiment_file=experiment_file))
    load_config(path)


@pytest.mark.parametrize("field, value, key", [
    ("name", "../../etc", "general.name"),
    ("name", "..", "general.name"),
    ("filter_file", "../outside.jsonl", "datasets.filters[0].payload_file"),
    ("experiment_file", "/tmp/abs.jsonl", "payload_files[0]"),
    ("experiment_file", "sub\\\\x.jsonl", "payload_files[0]"),
])
def test_names_joined_to_the_results_dir_must_be_bare_file_names(
        tmp_path: Path, field: str, value: str, key: str) -> None:
    values = {"filter_file": "p.jsonl", "experiment_file": "p.jsonl", field: value}
    if field == "filter_file":
        values["experiment_file"] = value
    with pytest.raises(ConfigError) as raised:
        _load(tmp_path, **values)
    text = raised.value.render()
    assert "must be a bare file name" in text and key in text


def test_ordinary_names_load(tmp_path: Path) -> None:
    _load(tmp_path, name="llama3 8b g5-v2", filter_file="payload_en_1-500.jsonl",
          experiment_file="payload_en_1-500.jsonl")


def test_an_escaping_run_name_is_a_usage_error_before_anything_runs(pytester: pytest.Pytester) -> None:
    pytester.makefile(".yml", cfg=textwrap.dedent(CONFIG.format(
        name="'{name}'", filter_file="p.jsonl", experiment_file="p.jsonl")))
    pytester.makepyfile(test_bench="def test_benchmark(fmbench_load):\n    fmbench_load()\n")
    result = pytester.runpytest("-p", "no:randomly", "-p", "no:xdist", "--fmbench-config=cfg.yml",
                                "--fmbench-set", "name=../../escaped")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "must be a bare file name" in result.stderr.str()
    assert "Traceback" not in result.stderr.str()
    assert not (pytester.path.parent / "escaped").exists()
