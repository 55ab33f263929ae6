"""FMBench's keys and semantics (issue 10 items 2 and 4): accepted, acted on or reported."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from pytest_fmbench.config import load_config
from pytest_fmbench.config.fmbench_keys import FMBENCH_KEYS
from pytest_fmbench.config.model import Config
from pytest_fmbench.errors import ConfigError
from pytest_fmbench.report.markdown import compatibility_notes
from pytest_fmbench.testing.openai_server import FakeOpenAIServer, ServerBehaviour
from tests.e2e_support import BENCHMARK_TEST, INNER_ARGS, openai_config

FMBENCH_EXTRAS = textwrap.dedent("""\
    dir_paths:
      data_prefix: data
    run_steps:
      0_setup.ipynb: yes
    metrics:
      dataset_of_interest: en_1-300
      weights: {price_per_tx_wt: 0.65, latenct_wt: 0.35}
    report:
      title: my benchmark
      latency_budget: 20
    """)


def fmbench_config(url: str) -> str:
    text = openai_config(url, name="compat")
    # alpha carries FMBench's EC2 settings and predictor keys we do not act on.
    return FMBENCH_EXTRAS + text.replace(
        "    markers: [nightly]\n",
        "    markers: [nightly]\n"
        "    ec2: {model_loading_timeout: 2400}\n"
        "    serving.properties: 'option.tensor_parallel_degree=1'\n", 1).replace(
        "    inference_spec: {parameter_set: fast}\n",
        "    inference_spec: {parameter_set: fast, tp_degree: 1, shm_size: 12g}\n", 1)


def load(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "cfg.yml"
    path.write_text(text, encoding="utf-8")
    return load_config(path, environ={})


def test_fmbench_keys_not_acted_on_are_kept_per_section_and_experiment(tmp_path: Path) -> None:
    config = load(tmp_path, fmbench_config("http://127.0.0.1:9"))
    assert config.ignored_fmbench_keys() == {
        "(top level)": ["dir_paths", "run_steps"],
        "metrics": ["weights"],
        "report": ["title"],
        "experiments[0] (alpha)": ["inference_spec.shm_size", "inference_spec.tp_degree"],
        "experiments[1] (beta)": ["ec2", "serving.properties"],
    }
    notes = compatibility_notes(config)
    assert "  - experiments[1] (beta): ec2, serving.properties" in notes


def test_a_key_known_to_neither_is_still_a_usage_error(tmp_path: Path) -> None:
    text = fmbench_config("http://127.0.0.1:9").replace("ec2: {", "ecc2: {")
    with pytest.raises(ConfigError, match=r"unknown key 'ecc2' \(did you mean 'ec2'\?\)"):
        load(tmp_path, text)


def test_every_section_of_the_key_table_is_a_section_we_check() -> None:
    assert {"", "general", "aws", "datasets", "datasets.filters", "metrics", "report",
            "experiments", "experiments.inference_spec"} == set(FMBENCH_KEYS)


def test_flat_inference_parameters_of_fmbench_1x(tmp_path: Path) -> None:
    text = fmbench_config("http://127.0.0.1:9").replace(
        "inference_parameters:\n  fast: {max_new_tokens: 4}\n",
        "inference_parameters:\n  do_sample: yes\n  max_new_tokens: 7\n"
        "  truncate: at-prompt-token-length\n").replace("parameter_set: fast", "stream: false")
    config = load(tmp_path, text)
    beta = config.experiment("beta")
    assert config.parameters_for(beta) == {
        "do_sample": True, "max_new_tokens": 7, "truncate": "at-prompt-token-length"}


def test_inference_spec_parameters_override_the_set(tmp_path: Path) -> None:
    text = fmbench_config("http://127.0.0.1:9").replace(
        "inference_spec: {parameter_set: fast}",
        "inference_spec: {parameter_set: fast, parameters: {max_new_tokens: 9, top_p: 0.5}}")
    config = load(tmp_path, text)
    assert config.parameters_for(config.experiment("beta")) == {"max_new_tokens": 9, "top_p": 0.5}


@pytest.fixture(scope="module")
def server():
    with FakeOpenAIServer(ServerBehaviour(ttft_s=0.001, token_delay_s=0.0)) as running:
        yield running


def test_summary_and_report_list_the_keys_not_acted_on(pytester: pytest.Pytester,
                                                       server: FakeOpenAIServer) -> None:
    pytester.makepyfile(test_bench=BENCHMARK_TEST)
    pytester.makefile(".yml", cfg=fmbench_config(server.url))
    result = pytester.runpytest(*INNER_ARGS, "--fmbench-config=cfg.yml", "-k", "c1",
                                "--fmbench-results-dir=out")
    result.assert_outcomes(passed=4, deselected=4)
    result.stdout.fnmatch_lines([
        "*FMBench compatibility:*",
        "*FMBench keys pytest-fmbench does not act on*",
        "*experiments[[]0[]] (alpha): inference_spec.shm_size, inference_spec.tp_degree*",
        "*experiments[[]1[]] (beta): ec2, serving.properties*",
    ])
    report = (pytester.path / "out" / "report.md").read_text(encoding="utf-8")
    assert "## FMBench compatibility" in report
    assert "  - (top level): dir_paths, run_steps" in report
