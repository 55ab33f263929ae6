"""Unit tests of pytest_fmbench.config: the model, the loader and placeholder filling."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_fmbench.cases import expand_cases
from pytest_fmbench.config import Config, Experiment, load_config
from pytest_fmbench.config.model import LoadSettings
from pytest_fmbench.config.placeholders import find_placeholders, load_filled
from pytest_fmbench.errors import ConfigError

# aws-samples/foundation-model-benchmarking-tool,
# src/fmbench/configs/llama3/8b/config-llama3-8b-instruct-g5-p4d.yml (commit 2ffd4cc), verbatim.
FMBENCH_LLAMA3_8B_G5_P4D = """\
general:
  name: "llama3-8b-p4d-g5-v1"      
  model_name: "llama3-8b-instruct"
  
# AWS and SageMaker settings
aws:
  region: {region}
  # uncomment and set the Role ARN if not running on sagemaker
  sagemaker_execution_role: {role_arn}
  ## these are the buckets/resources you will create in your account below:
  bucket: {write_bucket} ## add the name of your desired bucket

## WRITE BUCKET -- Write the results, data, metrics, endpoint.json and payloads to this bucket directory
dir_paths:
    data_prefix: data ## add the prefix for all your data management/storage
    prompts_prefix: prompts
    all_prompts_file: all_prompts.csv
    metrics_dir: metrics
    models_dir: models
    metadata_dir: metadata ## add a file here to dynamically track the metrics dir

## READ BUCKET -- Represents the section to read from scripts, source data and tokenizer for a separate s3 bucket for read/write segregation
s3_read_data:
    read_bucket: {read_bucket}
    scripts_prefix: scripts ## add your own scripts in case you are using anything that is not on jumpstart
    script_files:
    - hf_token.txt ## add your scripts files you have in s3 (including inference files, serving stacks, if any)
    configs_prefix: configs
    config_files:
    - pricing.yml # mention the name of the config files that you want to be downloaded from s3 into the configs directory locally
    source_data_prefix: source_data  ## Add a source_data folder to store your raw data in an s3 path configured by you
    source_data_files:
    # - rajpurkar/squad_v2.jsonl
    - 2wikimqa_e.jsonl
    - 2wikimqa.jsonl
    - hotpotqa_e.jsonl
    - hotpotqa.jsonl
    - narrativeqa.jsonl
    - triviaqa_e.jsonl
    - triviaqa.jsonl
    tokenizer_prefix: llama3_tokenizer ## add the tokenizer.json and config.json from your specific tokenizer type
    prompt_template_dir: prompt_template
    prompt_template_file: prompt_template_llama3.txt ## add your desired prompt template type

## section that enables container to run notebooks and python scripts automatically 
run_steps:
    0_setup.ipynb: yes
    1_generate_data.ipynb: yes
    2_deploy_model.ipynb: yes
    3_run_inference.ipynb: yes
    4_model_metric_analysis.ipynb: yes
    5_cleanup.ipynb: yes


datasets:
  prompt_template_keys:
  - input
  - context
  filters:
  - language: en    
    min_length_in_tokens: 1
    max_length_in_tokens: 500
    payload_file: payload_en_1-500.jsonl
  - language: en
    min_length_in_tokens: 500
    max_length_in_tokens: 1000
    payload_file: payload_en_500-1000.jsonl
  - language: en
    min_length_in_tokens: 1000
    max_length_in_tokens: 2000
    payload_file: payload_en_1000-2000.jsonl
  - language: en
    min_length_in_tokens: 2000
    max_length_in_tokens: 3000
    payload_file: payload_en_2000-3000.jsonl
  - language: en
    min_length_in_tokens: 3000
    max_length_in_tokens: 3840
    payload_file: payload_en_3000-3840.jsonl
 
metrics:
  dataset_of_interest: en_3000-3840
  
pricing: pricing.yml

inference_parameters:
  sagemaker:
    max_new_tokens: 100
    top_p: 0.92
    temperature: 0.1
    details: True
    stop: '<|eot_id|>'

experiments:
  - name: llama-3-8b-instruct-g5-djl-deepspeed0.12.6-cu121
    model_id: meta-textgeneration-llama-3-8b-instruct
    model_version: "*"
    model_name: llama3-8b-instruct-g5.12xl
    ep_name: llama-3-8b-instruct-g5-12xl
    instance_type: "ml.g5.12xlarge"
    image_uri: '763104351884.dkr.ecr.{region}.amazonaws.com/djl-inference:0.27.0-deepspeed0.12.6-cu121'
    deploy: yes
    instance_count: 1
    deployment_script: jumpstart.py
    inference_script: sagemaker_predictor.py
    inference_spec:
      parameter_set: sagemaker
    payload_files:
    - payload_en_1-500.jsonl
    - payload_en_500-1000.jsonl
    - payload_en_1000-2000.jsonl
    - payload_en_2000-3000.jsonl
    - payload_en_3000-3840.jsonl
    concurrency_levels:
    - 1
    - 2
    - 4
    - 6
    - 8

    accept_eula: true
    env:
      SAGEMAKER_PROGRAM: "inference.py"
      ENDPOINT_SERVER_TIMEOUT: "3600"
      MODEL_CACHE_ROOT: "/opt/ml/model"
      SAGEMAKER_ENV: "1"
      HF_MODEL_ID: "/opt/ml/model"
      MAX_INPUT_LENGTH: "4095"
      MAX_TOTAL_TOKENS: "4096"
      SM_NUM_GPUS: "1"
      SAGEMAKER_MODEL_SERVER_WORKERS: "1"
      
  - name: llama-3-8b-instruct-p4d-djl-deepspeed0.12.6-cu121
    model_id: meta-textgeneration-llama-3-8b-instruct
    model_version: "*"
    model_name: llama3-8b-instruct
    ep_name: llama-3-8b-instruct-p4d
    instance_type: "ml.p4d.24xlarge"
    image_uri: '763104351884.dkr.ecr.{region}.amazonaws.com/djl-inference:0.27.0-deepspeed0.12.6-cu121'
    deploy: yes
    instance_count: 1
    deployment_script: jumpstart.py
    inference_script: sagemaker_predictor.py
    inference_spec:
      parameter_set: sagemaker
    payload_files:
    - payload_en_1-500.jsonl
    - payload_en_500-1000.jsonl
    - payload_en_1000-2000.jsonl
    - payload_en_2000-3000.jsonl
    - payload_en_3000-3840.jsonl
    concurrency_levels:
    - 1
    - 2
    - 4
    - 6
    - 8
    - 10
    - 12
    - 15

    accept_eula: true
    env:
      SAGEMAKER_PROGRAM: "inference.py"
      ENDPOINT_SERVER_TIMEOUT: "3600"
      MODEL_CACHE_ROOT: "/opt/ml/model"
      SAGEMAKER_ENV: "1"
      HF_MODEL_ID: "/opt/ml/model"
      MAX_INPUT_LENGTH: "4095"
      MAX_TOTAL_TOKENS: "4096"
      SM_NUM_GPUS: "1"
      SAGEMAKER_MODEL_SERVER_WORKERS: "1"
report:
  latency_budget: 2
  cost_per_10k_txn_budget: 20
  error_rate_budget: 0
  per_inference_request_file: per_inference_request_results.csv
  all_metrics_file: all_metrics.csv
  txn_count_for_showing_cost: 10000
  v_shift_w_single_instance: 0.025
  v_shift_w_gt_one_instance: 0.025
"""

FMBENCH_VALUES = {
    "region": "us-east-1",
    "role_arn": "arn:aws:iam::123456789012:role/fmbench",
    "write_bucket": "my-write-bucket",
    "read_bucket": "my-read-bucket",
}

# A small valid config of ours; the bad-input tests each break one thing in it.
BASE = """\
general:
  name: unit
datasets:
  filters:
  - payload_file: p_short.jsonl
    max_length_in_tokens: 500
  - payload_file: p_long.jsonl
    min_length_in_tokens: 500
    max_length_in_tokens: 2000
inference_parameters:
  small:
    max_new_tokens: 10
experiments:
  - name: exp-a
    backend: local
    inference_spec:
      parameter_set: small
    payload_files: [p_short.jsonl, p_long.jsonl]
    concurrency_levels: [1, 2]
"""


def write(tmp_path: Path, text: str, name: str = "config.yml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_text(tmp_path: Path, text: str, **kwargs: object) -> Config:
    kwargs.setdefault("environ", {})
    return load_config(write(tmp_path, text), **kwargs)  # type: ignore[arg-type]


def config_error(tmp_path: Path, text: str, **kwargs: object) -> tuple[str, ConfigError, Path]:
    path = write(tmp_path, text)
    kwargs.setdefault("environ", {})
    with pytest.raises(ConfigError) as info:
        load_config(path, **kwargs)  # type: ignore[arg-type]
    return str(info.value), info.value, path


def assert_names_file_key_fix(text: str, path: Path, key: str) -> None:
    assert str(path) in text
    assert f"key '{key}'" in text, text
    assert "\n  fix: " in text, text


# --- a real FMBench config ----------------------------------------------------------------

def test_fmbench_text_is_the_upstream_file() -> None:
    # read_file reported total_chars 5666 for the upstream file.
    assert len(FMBENCH_LLAMA3_8B_G5_P4D) == 5666


def test_real_fmbench_config_loads_unchanged(tmp_path: Path) -> None:
    config = load_text(tmp_path, FMBENCH_LLAMA3_8B_G5_P4D, values=FMBENCH_VALUES)

    assert config.general.name == "llama3-8b-p4d-g5-v1"
    assert config.aws.region == "us-east-1"
    assert config.aws.sagemaker_execution_role == FMBENCH_VALUES["role_arn"]
    assert config.aws.bucket == "my-write-bucket"
    assert [f.payload_file for f in config.datasets.filters] == [
        "payload_en_1-500.jsonl", "payload_en_500-1000.jsonl", "payload_en_1000-2000.jsonl",
        "payload_en_2000-3000.jsonl", "payload_en_3000-3840.jsonl",
    ]
    assert config.datasets.filters[4].min_length_in_tokens == 3000
    assert config.datasets.filters[4].max_length_in_tokens == 3840
    assert config.metrics.dataset_of_interest == "en_3000-3840"
    assert config.pricing == "pricing.yml"
    assert config.report.latency_budget == 2
    assert config.report.cost_per_10k_txn_budget == 20
    assert config.report.error_rate_budget == 0

    g5, p4d = config.experiments
    assert g5.name == "llama-3-8b-instruct-g5-djl-deepspeed0.12.6-cu121"
    assert g5.resolved_backend == p4d.resolved_backend == "sagemaker"
    assert g5.instance_family == "g5" and p4d.instance_family == "p4d"
    assert g5.image_uri == (
        "763104351884.dkr.ecr.us-east-1.amazonaws.com/djl-inference:0.27.0-deepspeed0.12.6-cu121"
    )
    assert g5.deploy is True and g5.instance_count == 1
    assert g5.concurrency_levels == [1, 2, 4, 6, 8]
    assert p4d.concurrency_levels == [1, 2, 4, 6, 8, 10, 12, 15]
    assert len(p4d.payload_files) == 5
    assert g5.env is not None and g5.env["SM_NUM_GPUS"] == "1"
    assert config.parameters_for(g5) == {
        "max_new_tokens": 100, "top_p": 0.92, "temperature": 0.1, "details": True,
        "stop": "<|eot_id|>",
    }
    assert config.source_path == tmp_path / "config.yml"


def test_real_fmbench_config_without_values_names_the_placeholders(tmp_path: Path) -> None:
    text, _error, path = config_error(tmp_path, FMBENCH_LLAMA3_8B_G5_P4D)
    for name in ("region", "role_arn"):
        assert "{" + name + "}" in text
        assert f"--fmbench-set {name}=VALUE" in text
    assert str(path) in text


def test_buckets_default_like_fmbench_when_not_given(tmp_path: Path) -> None:
    values = {"region": "us-west-2", "role_arn": "arn:aws:iam::123456789012:role/x"}
    config = load_text(tmp_path, FMBENCH_LLAMA3_8B_G5_P4D, values=values, environ={})
    assert config.aws.bucket == "sagemaker-fmbench-write-us-west-2"
    given = load_text(tmp_path, FMBENCH_LLAMA3_8B_G5_P4D, environ={},
                      values={**values, "write_bucket": "mine"})
    assert given.aws.bucket == "mine"


def test_environment_fills_region_and_values_win(tmp_path: Path) -> None:
    values = {k: v for k, v in FMBENCH_VALUES.items() if k != "region"}
    config = load_text(tmp_path, FMBENCH_LLAMA3_8B_G5_P4D, values=values,
                       environ={"AWS_REGION": "eu-west-1"})
    assert config.aws.region == "eu-west-1"
    assert "eu-west-1" in (config.experiments[0].image_uri or "")

    config = load_text(tmp_path, FMBENCH_LLAMA3_8B_G5_P4D, values=FMBENCH_VALUES,
                       environ={"AWS_REGION": "eu-west-1"})
    assert config.aws.region == "us-east-1"


def test_aws_default_region_also_fills_region(tmp_path: Path) -> None:
    config = load_text(tmp_path, "aws:\n  region: {region}\n" + BASE,
                       environ={"AWS_DEFAULT_REGION": "ap-south-1"})
    assert config.aws.region == "ap-south-1"


# --- placeholders -------------------------------------------------------------------------

def test_placeholder_filled() -> None:
    data, missing = load_filled("a: {name}\nb: x-{name}-{other}\n", {"name": "N", "other": "O"})
    assert data == {"a": "N", "b": "x-N-O"}
    assert missing == []


@pytest.mark.parametrize("line, expected", [
    ("t: '{{ jinja }}'", {"t": "{{ jinja }}"}),
    ("t: '{{name}}'", {"t": "{{name}}"}),
    ('j: \'{"json": 1}\'', {"j": '{"json": 1}'}),
    ("s: '{ spaced }'", {"s": "{ spaced }"}),
    ("c: 1  # a comment with {name} in it", {"c": 1}),
    ("# whole-line comment {name}\nc: 2", {"c": 2}),
])
def test_other_braces_untouched(line: str, expected: dict[str, object]) -> None:
    data, missing = load_filled(line + "\n", {"name": "FILLED"})
    assert data == expected
    assert missing == []
    assert find_placeholders(line) == []


def test_hash_inside_quotes_is_not_a_comment() -> None:
    data, missing = load_filled("u: 'http://h/#{name}'  # {ignored}\n", {"name": "x"})
    assert data == {"u": "http://h/#x"}
    assert missing == []


def test_find_placeholders_in_order_once() -> None:
    assert find_placeholders("a: {b}\nc: '{a} {b}'\n# {zzz}\n") == ["b", "a"]


def test_plain_placeholder_is_typed_like_fmbench_text_substitution() -> None:
    data, _ = load_filled("n: {count}\nf: {flag}\ns: '{count}'\n", {"count": "2", "flag": "yes"})
    assert data == {"n": 2, "f": True, "s": "2"}


@pytest.mark.parametrize("value", [
    "x: injected", "x # cut", "a\nb: c", "[1, 2]", "{k: v}", "'quoted", "- item",
])
def test_a_value_never_reshapes_the_config(value: str) -> None:
    text = "general:\n  name: {name}\nother: kept\nquoted: 'q-{name}'\n"
    data, missing = load_filled(text, {"name": value})
    assert missing == []
    assert data == {"general": {"name": value}, "other": "kept", "quoted": f"q-{value}"}


def test_a_value_in_a_deploy_command_is_one_shell_word(tmp_path: Path) -> None:
    """A --fmbench-set value filled into deploy.command cannot run anything of its own."""
    import subprocess

    marker = tmp_path / "pwned"
    text = ("experiments:\n  - openai:\n      deploy:\n"
            "        command: 'echo serving {model} --port 8000'\n")
    value = f"m; touch {marker} $(touch {marker}) '\"`touch {marker}`"
    data, missing = load_filled(text, {"model": value})
    command = data["experiments"][0]["openai"]["deploy"]["command"]
    assert missing == []
    out = subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True, check=True)
    assert out.stdout == f"serving {value} --port 8000\n" and not marker.exists()
    # Elsewhere a value is plain text, as FMBench fills it.
    assert load_filled("cmd: 'run {model}'\n", {"model": "a b"})[0] == {"cmd": "run a b"}


def test_placeholder_inside_a_larger_string_and_a_block_scalar() -> None:
    text = ("dir: s3://{write_bucket}/x/{name}\n"
            "props: |\n  option.model_id={model_id}\n  option.tp=1\n")
    data, missing = load_filled(text, {"write_bucket": "b", "name": "n", "model_id": "m/x"})
    assert missing == []
    assert data == {"dir": "s3://b/x/n", "props": "option.model_id=m/x\noption.tp=1\n"}


def test_prompt_template_keys_are_not_placeholders() -> None:
    text = ("datasets:\n  prompt_template: 'Q: {input} C: {context} M: {model}'\n"
            "other: '{input}'\n")
    data, missing = load_filled(text, {"model": "llama"})
    assert data["datasets"]["prompt_template"] == "Q: {input} C: {context} M: llama"
    assert missing == ["input"]  # outside the template it is a placeholder like any other
    text = ("datasets:\n  prompt_template_keys: [question]\n"
            "  prompt_template: '{question} {input}'\n")
    assert load_filled(text, {})[1] == ["input"]


def test_inline_prompt_template_loads(tmp_path: Path) -> None:
    config = load_text(tmp_path, BASE.replace(
        "datasets:\n", "datasets:\n  prompt_template: \"Context: {context}\\nQuestion: {input}\"\n", 1))
    assert config.datasets.prompt_template == "Context: {context}\nQuestion: {input}"


@pytest.mark.parametrize("value", ["a\nb", "tab\there", "bell\x07"])
def test_control_characters_in_values_are_refused(tmp_path: Path, value: str) -> None:
    text, _error, path = config_error(tmp_path, BASE.replace("name: unit", "name: {run_name}"),
                                      values={"run_name": value})
    assert "control character" in text
    assert_names_file_key_fix(text, path, "--fmbench-set run_name")


def test_unfilled_placeholder_is_a_config_error(tmp_path: Path) -> None:
    text, _error, path = config_error(tmp_path, BASE.replace("name: unit", "name: {run_name}"))
    assert "unfilled placeholder" in text
    assert "{run_name}" in text
    assert "--fmbench-set run_name=VALUE" in text
    assert_names_file_key_fix(text, path, "run_name")


def test_values_fill_any_placeholder(tmp_path: Path) -> None:
    config = load_text(tmp_path, BASE.replace("name: unit", "name: {run_name}"),
                       values={"run_name": "from-set"})
    assert config.general.name == "from-set"


def test_braces_in_a_real_config_survive_loading(tmp_path: Path) -> None:
    text = BASE + (
        "    env:\n"
        "      TEMPLATE: '{{ messages }}'\n"
        "      JSON: '{\"a\": 1}'\n"
        "      SPACED: '{ x }'\n"
        "      REGION: '{region}'  # {not_a_placeholder}\n"
    )
    config = load_text(tmp_path, text, values={"region": "us-west-2"})
    assert config.experiments[0].env == {
        "TEMPLATE": "{{ messages }}", "JSON": '{"a": 1}', "SPACED": "{ x }",
        "REGION": "us-west-2",
    }


# --- bad input: one clear message naming the file, the key path and a fix -----------------

def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yml"
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    text = str(info.value)
    assert str(path) in text and "not found" in text
    assert "fix: " in text and "--fmbench-config" in text


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a file"):
        load_config(tmp_path, environ={})


@pytest.mark.parametrize(("mutate", "key", "suggestion"), [
    pytest.param(lambda t: t + "reprot:\n  latency_budget: 1\n", "reprot", "report", id="top"),
    pytest.param(lambda t: t.replace("    backend: local\n",
                                     "    backend: local\n    concurency_levels: [4]\n"),
                 "experiments[0] (exp-a).concurency_levels", "concurrency_levels",
                 id="experiment"),
    pytest.param(lambda t: t.replace("    max_length_in_tokens: 500\n",
                                     "    max_length_in_token: 500\n"),
                 "datasets.filters[0].max_length_in_token", "max_length_in_tokens",
                 id="dataset-filter"),
    pytest.param(lambda t: t.replace("    backend: local\n",
                                     "    backend: local\n    load:\n"
                                     "      min_iters_per_combinaton: 3\n"),
                 "experiments[0] (exp-a).load.min_iters_per_combinaton",
                 "min_iters_per_combination", id="experiment-load"),
    pytest.param(lambda t: t.replace("    backend: local\n",
                                     "    backend: local\n    local:\n      modle: tiny\n"),
                 "experiments[0] (exp-a).local.modle", "model", id="experiment-local"),
])
def test_unknown_key_with_did_you_mean(tmp_path: Path, mutate, key: str, suggestion: str) -> None:
    text, error, path = config_error(tmp_path, mutate(BASE))
    assert_names_file_key_fix(text, path, key)
    assert f"did you mean '{suggestion}'?" in text
    assert error.key == key


def test_unknown_key_without_close_match_lists_known_keys(tmp_path: Path) -> None:
    text, _, path = config_error(tmp_path, BASE + "zzzzzz: 1\n")
    assert_names_file_key_fix(text, path, "zzzzzz")
    assert "known keys:" in text and "experiments" in text


def test_fmbench_only_keys_are_ignored(tmp_path: Path) -> None:
    text = BASE.replace("    backend: local\n", "    backend: local\n    accept_eula: true\n"
                        "    deployment_script: jumpstart.py\n    model_version: '*'\n")
    text += "run_steps:\n  0_setup.ipynb: yes\ndir_paths:\n  data_prefix: data\n"
    text = text.replace("  - payload_file: p_short.jsonl\n",
                        "  - payload_file: p_short.jsonl\n    language: en\n")
    config = load_text(tmp_path, text)
    assert config.experiments[0].name == "exp-a"


def test_wrong_type(tmp_path: Path) -> None:
    text, _error, path = config_error(tmp_path, BASE.replace("[1, 2]", "[1, two]"))
    assert_names_file_key_fix(text, path, "experiments[0] (exp-a).concurrency_levels[1]")
    assert "integer" in text
    assert "'two'" in text


def test_local_device(tmp_path: Path) -> None:
    config = load_text(tmp_path, BASE.replace("    backend: local\n",
                                              "    backend: local\n    local: {device: 'cuda:1'}\n"))
    assert config.experiments[0].local.device == "cuda:1"
    text, _, path = config_error(tmp_path, BASE.replace(
        "    backend: local\n", "    backend: local\n    local: {device: gpu}\n"))
    assert_names_file_key_fix(text, path, "experiments[0] (exp-a).local.device")


def test_wrong_type_of_a_section(tmp_path: Path) -> None:
    text, _, path = config_error(tmp_path, BASE.replace("general:\n  name: unit\n",
                                                        "general: 5\n"))
    assert_names_file_key_fix(text, path, "general")


def test_unknown_backend_with_did_you_mean(tmp_path: Path) -> None:
    text, _error, path = config_error(tmp_path, BASE.replace("backend: local",
                                                            "backend: sagemkr"))
    assert_names_file_key_fix(text, path, "experiments[0] (exp-a).backend")
    assert "unknown backend 'sagemkr'" in text
    assert "did you mean 'sagemaker'?" in text


def test_unknown_backend_checked_against_given_backends(tmp_path: Path) -> None:
    config = load_text(tmp_path, BASE.replace("backend: local", "backend: mine"),
                       known_backends=["local", "mine"])
    assert config.experiments[0].resolved_backend == "mine"


def test_no_backend_at_all(tmp_path: Path) -> None:
    text, _, path = config_error(tmp_path, BASE.replace("    backend: local\n", ""))
    assert_names_file_key_fix(text, path, "experiments[0] (exp-a).backend")
    assert "backend:" in text


def test_empty_experiment_list(tmp_path: Path) -> None:
    head = BASE.split("experiments:")[0]
    text, _, path = config_error(tmp_path, head + "experiments: []\n")
    assert_names_file_key_fix(text, path, "experiments")
    assert "at least one" in text


def test_missing_experiments(tmp_path: Path) -> None:
    text, _, path = config_error(tmp_path, BASE.split("experiments:")[0])
    assert_names_file_key_fix(text, path, "experiments")
    assert "add 'experiments'" in text


def test_invalid_yaml_gives_the_line(tmp_path: Path) -> None:
    broken = BASE.replace("    backend: local\n", "    backend: local\n   bad: [\n")
    text, _, path = config_error(tmp_path, broken)
    assert str(path) in text
    assert "invalid YAML at line 16" in text  # the "bad: [" line
    assert "fix: " in text
    assert "Traceback" not in text


def test_yaml_that_is_not_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="mapping"):
        load_text(tmp_path, "- a\n- b\n")


def test_payload_file_not_produced_by_any_filter_is_skipped_with_a_warning(tmp_path: Path) -> None:
    # FMBench logs an error and skips the combination; so do we, and the count stays right.
    config = load_text(
        tmp_path, BASE.replace("[p_short.jsonl, p_long.jsonl]", "[p_short.jsonl, p_lung.jsonl]"))
    assert config.unproduced_payload_files("exp-a") == ["p_lung.jsonl"]
    [warning] = config.warnings
    assert "experiments[0] (exp-a).payload_files" in warning
    assert "'p_lung.jsonl'" in warning and "did you mean 'p_long.jsonl'?" in warning
    cases = expand_cases(config)
    assert len(cases) == 2 * 2  # payload files × concurrency levels, as FMBench counts
    skipped = [c for c in cases if c.skip_reason]
    assert [c.id for c in skipped] == ["exp-a-p_lung-c1", "exp-a-p_lung-c2"]
    assert "not produced by any datasets.filters entry" in (skipped[0].skip_reason or "")


def test_unknown_parameter_set(tmp_path: Path) -> None:
    text, _, path = config_error(tmp_path, BASE.replace("parameter_set: small",
                                                        "parameter_set: smal"))
    assert_names_file_key_fix(text, path, "experiments[0] (exp-a).inference_spec.parameter_set")
    assert "'smal' is not a section of inference_parameters" in text
    assert "did you mean 'small'?" in text


def test_duplicate_experiment_names_get_a_suffix_and_a_warning(tmp_path: Path) -> None:
    # FMBench runs both; case ids and results need unique names.
    twice = BASE + (
        "  - name: exp-a\n    backend: local\n    payload_files: [p_short.jsonl]\n"
        "    concurrency_levels: [1]\n"
        "  - name: exp-a\n    backend: local\n    payload_files: [p_short.jsonl]\n"
        "    concurrency_levels: [1]\n"
    )
    config = load_text(tmp_path, twice)
    assert [e.name for e in config.experiments] == ["exp-a", "exp-a-2", "exp-a-3"]
    assert len(config.warnings) == 2
    assert "experiments[1] (exp-a).name" in config.warnings[0]
    assert "runs as 'exp-a-2'" in config.warnings[0]
    ids = [c.id for c in expand_cases(config)]
    assert len(ids) == len(set(ids)) == 4 + 1 + 1


@pytest.mark.parametrize(("levels", "message"), [
    ("[1, -2]", "concurrency level -2 must be 1 or more"),
    ("[0]", "concurrency level 0 must be 1 or more"),
    ("[1, 2, 1]", "concurrency levels repeat"),
])
def test_bad_concurrency(tmp_path: Path, levels: str, message: str) -> None:
    text, _, path = config_error(tmp_path, BASE.replace("[1, 2]", levels))
    assert_names_file_key_fix(text, path, "experiments[0] (exp-a).concurrency_levels")
    assert message in text


def test_filter_range_inverted(tmp_path: Path) -> None:
    text, _, path = config_error(tmp_path, BASE.replace("min_length_in_tokens: 500",
                                                        "min_length_in_tokens: 5000"))
    assert_names_file_key_fix(text, path, "datasets.filters[1]")
    assert "above" in text


def test_several_problems_are_all_listed(tmp_path: Path) -> None:
    broken = BASE.replace("[1, 2]", "[1, two]").replace(
        "    backend: local\n", "    backend: local\n    instance_count: many\n")
    text, error, _ = config_error(tmp_path, broken)
    assert error.key == "experiments[0] (exp-a).instance_count"
    assert "also: key 'experiments[0] (exp-a).concurrency_levels[1]'" in text


# --- backend inference, instance family ---------------------------------------------------

def experiment(**fields: object) -> Experiment:
    return Experiment(name="e", payload_files=["p.jsonl"], concurrency_levels=[1], **fields)


@pytest.mark.parametrize(("fields", "backend"), [
    ({"inference_script": "bedrock_predictor.py"}, "bedrock"),
    ({"inference_script": "sagemaker_predictor.py"}, "sagemaker"),
    ({"inference_script": "ec2_predictor.py"}, "openai"),
    ({"ep_name": "http://10.0.0.1:8080/v2/models/m/generate"}, "openai"),
    ({"ep_name": "https://example.invalid/v1"}, "openai"),
    ({"ep_name": "my-sagemaker-endpoint"}, None),
    ({"local": {"model": "tiny"}}, "local"),
    ({"openai": {"base_url": "http://127.0.0.1:1"}}, "openai"),
    ({"backend": "local", "inference_script": "sagemaker_predictor.py"}, "local"),
    ({}, None),
])
def test_backend_inferred_from_fmbench_fields(fields: dict[str, object], backend: str | None
                                              ) -> None:
    assert experiment(**fields).resolved_backend == backend


@pytest.mark.parametrize(("instance_type", "family"), [
    ("ml.g5.12xlarge", "g5"),
    ("g5.2xlarge", "g5"),
    ("ml.p4d.24xlarge", "p4d"),
    ("ml.inf2.xlarge", "inf2"),
    ("trn1.32xlarge", "trn1"),
    (None, None),
    ("", None),
    ("weird", None),
])
def test_instance_family(instance_type: str | None, family: str | None) -> None:
    assert experiment(instance_type=instance_type).instance_family == family


def test_safe_name() -> None:
    assert Experiment(name="my exp/1", payload_files=["p"], concurrency_levels=[1]).safe_name \
        == "my-exp-1"


def test_instance_count_blank_means_one() -> None:
    assert experiment(instance_count=None).instance_count == 1


# --- load settings precedence -------------------------------------------------------------

def test_load_defaults() -> None:
    merged = LoadSettings().merged(None)
    assert merged.min_iters_per_combination == 5
    assert merged.max_iters_per_combination == 105
    assert merged.request_timeout_s == 120.0
    assert merged.warmup_requests == 1


def test_load_precedence_defaults_global_experiment() -> None:
    global_ = LoadSettings(min_iters_per_combination=3, request_timeout_s=30)
    override = LoadSettings(min_iters_per_combination=7, warmup_requests=0)
    merged = global_.merged(override)
    assert merged.min_iters_per_combination == 7  # experiment beats global
    assert merged.request_timeout_s == 30  # global beats default
    assert merged.warmup_requests == 0  # experiment beats default, zero kept
    assert merged.max_iters_per_combination == 105  # default


def test_load_for_experiment_from_yaml(tmp_path: Path) -> None:
    text = BASE.replace("general:\n  name: unit\n",
                        "general:\n  name: unit\nload:\n  min_iters_per_combination: 2\n"
                        "  max_iters_per_combination: 4\n")
    text = text.replace("    backend: local\n",
                        "    backend: local\n    load:\n      max_iters_per_combination: 9\n")
    config = load_text(tmp_path, text)
    settings = config.load_for(config.experiments[0])
    assert settings.min_iters_per_combination == 2
    assert settings.max_iters_per_combination == 9
    assert settings.request_timeout_s == 120.0
    assert config.experiment("exp-a") is config.experiments[0]
    with pytest.raises(KeyError):
        config.experiment("nope")


def test_negative_load_setting_rejected(tmp_path: Path) -> None:
    text = BASE + "load:\n  request_timeout_s: -1\n"
    text_, _, path = config_error(tmp_path, text)
    assert_names_file_key_fix(text_, path, "load.request_timeout_s")


SHIPPED = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yml"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_config_loads_and_expands(path: Path) -> None:
    from pytest_fmbench.cases import expand_cases

    config = load_config(path, {"region": "us-east-1",
                                "role_arn": "arn:aws:iam::123456789012:role/fmbench"}, environ={})
    assert expand_cases(config)
