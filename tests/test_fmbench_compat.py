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
        "(top level)": ["dir_paths"],
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
        "do_sample": True, "max_new_tokens": 7}  # the truncate policy means "whole prompt"


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
    assert "  - (top level): dir_paths" in report


# -- inference_spec keys that change requests (SageMaker formats, REST headers) -----------------

def test_split_input_and_parameters_sends_the_bare_prompt_and_invoke_arguments() -> None:
    import json

    from pytest_fmbench.endpoints.base import InferenceRequest
    from pytest_fmbench.endpoints.sagemaker_formats import get_format, request_body

    request = InferenceRequest("Paris is [MASK].", {"ContentType": "application/x-text",
                                                    "Accept": "application/json;verbose",
                                                    "max_new_tokens": 5})
    body, arguments = request_body(get_format("tgi"), request, stream=False,
                                   split_input_and_parameters=True)
    assert json.loads(body) == "Paris is [MASK]."
    assert arguments == {"ContentType": "application/x-text", "Accept": "application/json;verbose"}
    body, arguments = request_body(get_format("tgi"), request, stream=False)
    assert json.loads(body)["inputs"] == "Paris is [MASK]." and arguments == {}


def test_stop_token_ends_the_reply_and_is_not_content() -> None:
    from pytest_fmbench.endpoints.sagemaker_formats import get_format, with_stop_token

    assert with_stop_token(get_format("lmi"), None).name == "lmi"
    fmt = with_stop_token(get_format("lmi"), "<|eot_id|>")
    decoder = fmt.decoder()
    events = [b'{"token": {"text": "Hi"}}\n', b'{"token": {"text": " there"}}\n',
              b'{"token": {"text": "<|eot_id|>"}}\n', b'{"token": {"text": " junk"}}\n']
    pieces = [piece for event in events for piece in decoder.feed(event)]
    assert pieces == ["Hi", " there"]  # no TTFT/ITL event for the stop token or after it
    assert decoder.finish().text == "Hi there"
    assert fmt.parse(b'{"generated_text": "Answer.<|eot_id|>more"}').text == "Answer."


def test_sagemaker_endpoint_sends_fmbench_inference_spec(tmp_path: Path) -> None:
    from pytest_fmbench.endpoints.base import InferenceRequest
    from pytest_fmbench.endpoints.registry import EndpointContext
    from pytest_fmbench.endpoints.sagemaker import SageMakerEndpoint

    text = textwrap.dedent("""\
        datasets:
          filters: [{payload_file: p.jsonl}]
        inference_parameters:
          sagemaker: {ContentType: application/x-text}
        experiments:
          - name: bert
            inference_script: sagemaker_predictor.py
            deploy: no
            ep_name: bert-endpoint
            inference_spec: {parameter_set: sagemaker, split_input_and_parameters: yes,
                             stream: no, stop_token: "</s>"}
            payload_files: [p.jsonl]
            concurrency_levels: [1]
        """)
    config = load(tmp_path, text)
    experiment = config.experiment("bert")
    endpoint = SageMakerEndpoint(config, experiment, EndpointContext("run", tmp_path))
    sent: dict[str, object] = {}

    class Body:
        def read(self) -> bytes:
            return b'{"generated_text": "ok</s>"}'

    class Runtime:
        def invoke_endpoint(self, **kwargs: object) -> dict[str, object]:
            sent.update(kwargs)
            return {"Body": Body(), "ResponseMetadata": {"HTTPStatusCode": 200}}

    endpoint._runtime = Runtime()
    result = endpoint._invoke(InferenceRequest("Hello", config.parameters_for(experiment)))
    assert sent["Body"] == b'"Hello"'
    assert sent["ContentType"] == "application/x-text"
    assert result.error == "" and result.text == "ok"


def test_rest_predictor_headers_reach_the_request(tmp_path: Path) -> None:
    from pytest_fmbench.endpoints.openai import OpenAIEndpoint
    from pytest_fmbench.endpoints.registry import EndpointContext

    text = textwrap.dedent("""\
        datasets:
          filters: [{payload_file: p.jsonl}]
        experiments:
          - name: rest
            inference_script: custom_rest_predictor.py
            deploy: no
            ep_name: http://127.0.0.1:9/v1/completions
            inference_spec: {headers: {X-Team: bench, X-Both: fmbench}}
            openai: {headers: {X-Both: ours}}
            payload_files: [p.jsonl]
            concurrency_levels: [1]
        """)
    config = load(tmp_path, text)
    OpenAIEndpoint.preflight(config, config.experiment("rest"))
    endpoint = OpenAIEndpoint(config, config.experiment("rest"), EndpointContext("run", tmp_path))
    headers = dict(endpoint.client().headers)  # type: ignore[attr-defined]
    assert headers["X-Team"] == "bench"
    assert headers["X-Both"] == "ours"
    bad = text.replace("X-Team: bench", "'X Team': bench")
    with pytest.raises(ConfigError, match="inference_spec.headers"):
        bad_config = load(tmp_path, bad)
        OpenAIEndpoint.preflight(bad_config, bad_config.experiment("rest"))


# -- token counting with the model's tokenizer --------------------------------------------------

def test_tokenizer_model_ids_prefer_hf_tokenizer_model_id(tmp_path: Path) -> None:
    text = textwrap.dedent("""\
        datasets:
          filters: [{payload_file: p.jsonl}]
        experiments:
          - {name: a, backend: openai, ep_name: "http://h/v1", model_id: meta-textgeneration-x,
             hf_tokenizer_model_id: meta-llama/Meta-Llama-3-8B-Instruct,
             payload_files: [p.jsonl], concurrency_levels: [1]}
          - {name: b, backend: openai, ep_name: "http://h/v1", model_id: mistralai/Mistral-7B,
             payload_files: [p.jsonl], concurrency_levels: [1]}
          - {name: c, backend: openai, ep_name: "http://h/v1", model_id: anthropic.claude-v2,
             payload_files: [p.jsonl], concurrency_levels: [1]}
        """)
    config = load(tmp_path, text)
    assert config.tokenizer_model_ids() == ["meta-llama/Meta-Llama-3-8B-Instruct",
                                            "mistralai/Mistral-7B"]
    # Acted on (a field), so not listed among the keys we ignore.
    assert config.experiment("a").hf_tokenizer_model_id == "meta-llama/Meta-Llama-3-8B-Instruct"
    assert config.ignored_fmbench_keys() == {}


def test_cached_tokenizer_is_found_offline_and_a_missing_one_is_none(tmp_path: Path) -> None:
    from pytest_fmbench.data.tokens import cached_tokenizer_file

    snapshot = tmp_path / "models--org--tiny" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "tokenizer.json").write_text("{}", encoding="utf-8")
    (tmp_path / "models--org--tiny" / "refs").mkdir()
    (tmp_path / "models--org--tiny" / "refs" / "main").write_text("abc123", encoding="utf-8")
    assert cached_tokenizer_file("org/tiny", tmp_path) == snapshot / "tokenizer.json"
    assert cached_tokenizer_file("org/absent", tmp_path) is None


def test_tolerated_problems_are_warnings_on_the_terminal(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_bench=BENCHMARK_TEST)
    twice = openai_config("http://127.0.0.1:9/v1", name="dupes").replace("name: beta", "name: alpha")
    pytester.makefile(".yml", cfg=twice + "pricing: custom_pricing.yml\n")
    result = pytester.runpytest(*INNER_ARGS, "--fmbench-config=cfg.yml", "--collect-only", "-q")
    assert result.ret == 0
    assert sum("test_benchmark[alpha-2-" in line for line in result.outlines) == 4
    result.stdout.fnmatch_lines([
        "*PytestConfigWarning*experiments[[]1[]] (alpha).name*runs as 'alpha-2'*",
        "*PytestConfigWarning*'custom_pricing.yml' was not found*",
    ], consecutive=False)
