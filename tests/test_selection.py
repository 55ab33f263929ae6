"""Checks only for what was selected, never at collection (issue 10 item 3, REVIEW M4)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from pytest_fmbench.config import load_config
from pytest_fmbench.errors import ConfigError
from pytest_fmbench.report.session import prepare
from pytest_fmbench.selection import check_selected, price_selected, selected_experiments
from pytest_fmbench.testing.openai_server import FakeOpenAIServer, ServerBehaviour
from tests.e2e_support import BENCHMARK_TEST, INNER_ARGS, openai_config

MISSING_KEY = "FMBENCH_TEST_SELECTION_MISSING_KEY"

# FMBench-style experiments that need AWS, the SageMaker SDK (JumpStart) and a price that is
# not in any table: none of it may be needed to collect, or to run another experiment.
AWS_EXPERIMENTS = textwrap.dedent("""\
      - name: js
        deployment_script: jumpstart.py
        inference_script: sagemaker_predictor.py
        model_id: meta-textgeneration-llama-3-8b-instruct
        instance_type: ml.g5.2xlarge
        payload_files: [payload_en_1-300.jsonl]
        concurrency_levels: [1, 2, 4]
      - name: br
        inference_script: bedrock_predictor.py
        ep_name: anthropic.claude-3-haiku-20240307-v1:0
        model_id: anthropic.claude-3-haiku-20240307-v1:0
        payload_files: [payload_en_1-300.jsonl]
        concurrency_levels: [1]
      - name: unpriced
        inference_script: ec2_predictor.py
        deploy: no
        ep_name: http://127.0.0.1:9/v1/completions
        instance_type: zz9.huge
        payload_files: [payload_en_1-300.jsonl]
        concurrency_levels: [1]
    """)


@pytest.fixture(scope="module")
def server():
    with FakeOpenAIServer(ServerBehaviour(ttft_s=0.001, token_delay_s=0.0)) as running:
        yield running


def config_text(url: str) -> str:
    text = openai_config(url, name="selection")
    # beta needs an API key that is not set: only a run that selects beta may care.
    plain = f'openai: {{base_url: "{url}"}}'
    head, beta = text.rsplit(plain, 1)
    text = head + f'openai: {{base_url: "{url}", api_key_env: {MISSING_KEY}}}' + beta
    assert MISSING_KEY in text
    aws = "aws:\n  region: us-east-1\n  sagemaker_execution_role: arn:aws:iam::123456789012:role/r\n"
    return aws + text + textwrap.indent(AWS_EXPERIMENTS, "  ")


@pytest.fixture
def bench(pytester: pytest.Pytester, server: FakeOpenAIServer,
          monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_REGION", "AWS_DEFAULT_REGION", MISSING_KEY):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
    # Any AWS call would have to go somewhere: make it fail fast and loudly.
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    pytester.makepyfile(test_bench=BENCHMARK_TEST)
    pytester.makefile(".yml", cfg=config_text(server.url))
    return pytester


def test_collect_only_needs_no_credentials_key_or_sdk(bench: pytest.Pytester) -> None:
    assert importlib_missing("sagemaker")
    result = bench.runpytest(*INNER_ARGS, "--fmbench-config=cfg.yml", "--collect-only", "-q")
    assert result.ret == 0, result.stdout.str()
    assert sum("test_benchmark[" in line for line in result.outlines) == 8 + 3 + 1 + 1


def test_an_unselected_experiment_is_not_checked(bench: pytest.Pytester,
                                                 server: FakeOpenAIServer) -> None:
    before = server.stats.requests
    result = bench.runpytest(*INNER_ARGS, "--fmbench-config=cfg.yml", "-k", "alpha",
                             "--fmbench-results-dir=out")
    result.assert_outcomes(passed=4, deselected=9)
    assert server.stats.requests > before


@pytest.mark.parametrize(("selection", "expected"), [
    (("-k", "beta"), [f"*{MISSING_KEY}*"]),
    (("-m", "nightly"), [f"*{MISSING_KEY}*"]),
    (("-k", "js"), ["*experiments (js)*", "*SageMaker Python SDK*"]),
    (("-k", "unpriced"), ["*no price for instance type 'zz9.huge'*"]),
])
def test_a_selected_experiment_is_checked_before_anything_runs(
        bench: pytest.Pytester, server: FakeOpenAIServer, selection: tuple[str, str],
        expected: list[str]) -> None:
    before = server.stats.requests
    result = bench.runpytest(*INNER_ARGS, "--fmbench-config=cfg.yml", *selection,
                             "--fmbench-results-dir=out")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(expected)
    assert "Traceback" not in result.stderr.str() + result.stdout.str()
    assert server.stats.requests == before


def test_under_xdist_the_controller_checks_the_selection(bench: pytest.Pytester) -> None:
    args = ("-p", "no:randomly", "-p", "no:cacheprovider", "-n", "2",
            "--fmbench-config=cfg.yml", "--fmbench-results-dir=out")
    result = bench.runpytest_subprocess(*args, "-k", "beta")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert MISSING_KEY in result.stderr.str() + result.stdout.str()
    result = bench.runpytest_subprocess(*args, "-k", "alpha")
    result.assert_outcomes(passed=4)


# -- the plain module -------------------------------------------------------------------------

def load(tmp_path: Path, url: str = "http://127.0.0.1:9/v1") -> object:
    path = tmp_path / "cfg.yml"
    path.write_text(config_text(url), encoding="utf-8")
    return load_config(path, environ={})


def test_selected_experiments_keep_config_order_once(tmp_path: Path) -> None:
    config = load(tmp_path)
    chosen = selected_experiments(config, ["br", None, "alpha", "br"])  # type: ignore[arg-type]
    assert [e.name for e in chosen] == ["alpha", "br"]


def test_check_selected_prices_only_the_selection(tmp_path: Path) -> None:
    config = load(tmp_path)
    settings = prepare(config, experiments=[])  # type: ignore[arg-type]
    assert settings.prices == {}
    check_selected(config, settings, selected_experiments(config, ["alpha"]))  # type: ignore[arg-type]
    assert set(settings.prices) == {"alpha"}
    with pytest.raises(ConfigError, match="zz9.huge"):
        check_selected(config, settings,  # type: ignore[arg-type]
                       selected_experiments(config, ["unpriced"]))  # type: ignore[arg-type]
    price_selected(config, settings, selected_experiments(config, ["unpriced"]))  # type: ignore[arg-type]
    assert settings.prices["unpriced"] is None  # a worker leaves the error to the controller


def importlib_missing(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is None


class LearnsInstanceType:
    """A backend whose preflight learns the instance type, as a bring-your-own SageMaker
    endpoint's does (DescribeEndpoint)."""

    @classmethod
    def preflight(cls, config: object, experiment: object) -> None:
        experiment.instance_type = "ml.g5.xlarge"  # type: ignore[attr-defined]


def test_a_worker_prices_an_experiment_whose_type_preflight_learns(tmp_path: Path) -> None:
    path = tmp_path / "cfg.yml"
    path.write_text(textwrap.dedent("""\
        datasets:
          filters: [{payload_file: p.jsonl}]
        experiments:
          - name: byo
            backend: "tests.test_selection:LearnsInstanceType"
            payload_files: [p.jsonl]
            concurrency_levels: [1]
        """), encoding="utf-8")
    config = load_config(path, environ={}, known_backends=[])
    settings = prepare(config, experiments=[])
    price_selected(config, settings, config.experiments)
    price = settings.prices["byo"]
    assert price is not None and price.key == "ml.g5.xlarge"
