"""Secrets by allow-list (REVIEW M2): redaction by place, and a canary through a whole run."""

from __future__ import annotations

import socket
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_fmbench import redaction
from pytest_fmbench.redaction import (
    KNOWN,
    REDACTED,
    redact,
    redact_args,
    redact_url,
    scrub,
    secret_values,
)
from pytest_fmbench.runlog import RunLog, private_log_path, publish_log
from tests.e2e_support import BENCHMARK_TEST, INNER_ARGS

CANARY = "CANARY-s3cr3t-7f1d9a"


@pytest.fixture(autouse=True)
def clean_registry() -> Iterator[None]:
    KNOWN.clear()
    yield
    KNOWN.clear()


# -- unit: places ----------------------------------------------------------------------------

def test_every_header_and_env_value_is_redacted_whatever_its_name() -> None:
    data = {"openai": {"headers": {"Ocp-Apim-Subscription-Key": "k1", "Cookie": "c=1", "X-Plain": "p"},
                       "headers_env": {"X-Gw-Key": "GW_KEY"},
                       "deploy": {"env": {"WANDB_KEY": "w", "HF_APITOKEN": "h", "bearer": "b"}}}}
    out = redact(data)
    assert out["openai"]["headers"] == {k: REDACTED for k in data["openai"]["headers"]}
    assert out["openai"]["deploy"]["env"] == {k: REDACTED for k in data["openai"]["deploy"]["env"]}
    assert out["openai"]["headers_env"] == {"X-Gw-Key": "GW_KEY"}  # a variable's name is no secret


def test_url_userinfo_and_query_values_are_redacted() -> None:
    assert redact_url("https://user:pw@gw.example/v1?key=abc&api-version=2024") == (
        f"https://***@gw.example/v1?key={REDACTED}&api-version={REDACTED}")
    assert redact({"base_url": "https://gw/v1?key=abc"})["base_url"] == f"https://gw/v1?key={REDACTED}"


@pytest.mark.parametrize("command, secret", [
    ("HF_TOKEN=hf_abcdef vllm serve m", "hf_abcdef"),
    ("vllm serve m --api-key sk-123456 --port 8000", "sk-123456"),
    ("server --token=tok-998877", "tok-998877"),
    ("OPENAI_API_KEY='sk xyz' run", "sk xyz"),
    ("MY_SECRET_THING=abc123 run", "abc123"),
    ("curl -H 'Authorization: Bearer abc.def' http://h", "abc.def"),
    ("curl -H 'Ocp-Apim-Subscription-Key: zz9988' http://h", "zz9988"),
])
def test_inline_command_secrets_are_masked(command: str, secret: str) -> None:
    assert secret not in scrub(command)
    assert secret not in str(redact({"deploy": {"command": command}}))
    assert secret in {v.strip("'") for v in secret_values({"command": command})} or \
        secret.split()[0] in str(secret_values({"command": command}))


def test_ordinary_flags_stay_readable() -> None:
    command = "vllm serve m --max-num-batched-tokens 8192 --max-model-len 4096 max_tokens=100"
    assert scrub(command) == command


def test_fmbench_set_values_are_masked_on_the_command_line() -> None:
    args = ["tests", "--fmbench-set", "token=abc", "--fmbench-set=region=us-east-1", "-q"]
    assert redact_args(args) == ["tests", "--fmbench-set", f"token={REDACTED}",
                                 f"--fmbench-set=region={REDACTED}", "-q"]


def test_values_named_by_env_keys_are_known_and_scrubbed_from_free_text() -> None:
    data = {"openai": {"api_key_env": "K", "headers_env": {"X-A": "H"}, "headers": {"X-B": "literal-1"}}}
    redaction.register_config_secrets(data, {"K": "key-value-1", "H": "header-value-1"})
    line = "error from server: key-value-1 header-value-1 literal-1"
    assert scrub(line) == f"error from server: {REDACTED} {REDACTED} {REDACTED}"


def test_short_values_are_not_scrubbed_from_free_text() -> None:
    KNOWN.add(["0", "true"])
    assert scrub("true 0") == "true 0"


# -- unit: logs ------------------------------------------------------------------------------

def test_run_log_scrubs_and_keeps_worker_lines_for_the_controller(tmp_path: Path) -> None:
    KNOWN.add(["hunter2-secret"])
    worker = RunLog(tmp_path, "gw0")
    worker("[fmbench] deploying with hunter2-secret")
    assert worker.take() == [f"[fmbench] deploying with {REDACTED}"]
    assert worker.take() == []
    text = (tmp_path / "logs" / "fmbench-gw0.log").read_text()
    assert "hunter2-secret" not in text and REDACTED in text
    printed: list[str] = []
    controller = RunLog(tmp_path, echo=printed.append)
    controller("plain line")
    assert printed == ["plain line"] and controller.take() == []
    assert (tmp_path / "logs" / "fmbench.log").exists()


def test_server_logs_are_published_scrubbed_and_the_raw_log_is_private(tmp_path: Path) -> None:
    KNOWN.add(["sk-raw-secret"])
    raw = private_log_path("run-test", "x-server.log")
    assert (raw.parent.parent.stat().st_mode & 0o777) == 0o700
    assert tmp_path not in raw.parents
    raw.write_text("args: --api-key sk-raw-secret\nready\n")
    published = publish_log(raw, tmp_path / "logs" / "x-server.log")
    assert published is not None and not raw.exists()
    assert published.read_text() == f"args: --api-key {REDACTED}\nready\n"


# -- end to end: the canary --------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def canary_config(port: int) -> str:
    """The canary in every place a user can put a secret (see the test below)."""
    command = (f"FMB_INLINE_TOKEN={CANARY} {sys.executable} -m pytest_fmbench.testing.openai_server "
               f"--port $FMBENCH_PORT --ttft 0.001 --token-delay 0.001 --api-key {CANARY} "
               f"--require-header X-Literal-Secret={CANARY} --require-header X-From-Set={CANARY} "
               f"--require-header Ocp-Apim-Subscription-Key={CANARY} --require-query key={CANARY}")
    return textwrap.dedent(f"""\
        general:
          name: canary
        datasets:
          synthetic: {{records: 20, seed: 1}}
          max_prompts_per_file: 3
          filters:
            - {{payload_file: payload_en_1-5000.jsonl, min_length_in_tokens: 1, max_length_in_tokens: 5000}}
        inference_parameters:
          fast: {{max_new_tokens: 3}}
        load:
          min_iters_per_combination: 2
          max_iters_per_combination: 2
          warmup_requests: 1
          request_timeout_s: 10
        experiments:
          - name: guarded
            backend: openai
            price_per_hour: 1.0
            instance_type: ml.g5.xlarge
            inference_spec: {{parameter_set: fast}}
            payload_files: [payload_en_1-5000.jsonl]
            concurrency_levels: [1]
            openai:
              base_url: "http://fmuser:{CANARY}@127.0.0.1:{port}/v1?key={CANARY}"
              api_key_env: FMB_CANARY_API_KEY
              headers:
                X-Literal-Secret: "{CANARY}"
                X-From-Set: "{{canary}}"
              headers_env:
                Ocp-Apim-Subscription-Key: FMB_CANARY_HEADER
              deploy:
                command: "{command}"
                health_url: "http://127.0.0.1:{port}/health"
                startup_timeout_s: 60
                env:
                  HF_TOKEN: "{CANARY}"
        """)


@pytest.mark.parametrize("mode", [INNER_ARGS, ("-p", "no:randomly", "-p", "no:cacheprovider", "-n", "1")],
                         ids=["one-process", "xdist-worker"])
def test_canary_secret_reaches_the_server_and_no_file_of_the_results_dir(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, mode: tuple[str, ...]) -> None:
    monkeypatch.setenv("FMB_CANARY_API_KEY", CANARY)
    monkeypatch.setenv("FMB_CANARY_HEADER", CANARY)
    pytester.makepyfile(test_bench=BENCHMARK_TEST)
    pytester.makefile(".yml", cfg=canary_config(_free_port()))
    result = pytester.runpytest_subprocess(*mode, "--fmbench-config=cfg.yml",
                                           "--fmbench-results-dir=out",
                                           "--fmbench-set", f"canary={CANARY}")
    # The server refuses (401) any request missing one of the real values: every request
    # succeeding proves redaction changed nothing that was sent.
    result.assert_outcomes(passed=1)
    out = pytester.path / "out"
    assert '"requests": 2' in (out / "results.json").read_text()
    server_log = out / "logs" / "guarded-server.log"
    assert "non-default args" in server_log.read_text()  # it printed the key, scrubbed
    files = [p for p in out.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"report.md", "results.json", "run.json",
                                        "guarded-server.log", "fmbench.log"}
    assert any(p.name.startswith("endpoints") for p in files)
    leaks = [str(p.relative_to(out)) for p in files if CANARY.encode() in p.read_bytes()]
    assert leaks == []
    assert CANARY not in result.stdout.str()


def test_fmbench_set_values_named_like_secrets_are_scrubbed_everywhere() -> None:
    redaction.register_config_secrets({}, {}, {"hf_token": "hf_from_the_cli", "region": "us-east-1"})
    assert scrub("token hf_from_the_cli in us-east-1") == f"token {REDACTED} in us-east-1"


def test_env_settings_are_redacted_in_place_but_only_credentials_scrubbed_from_text() -> None:
    data = {"deploy": {"env": {"VLLM_LOGGING_LEVEL": "WARNING", "HF_TOKEN": "plainword",
                               "UNLABELLED": "ak9Zq7Lm2Pw4"}}}
    assert redact(data)["deploy"]["env"] == {k: REDACTED for k in data["deploy"]["env"]}
    redaction.register_config_secrets(data, {})
    assert scrub("WARNING plainword ak9Zq7Lm2Pw4") == f"WARNING {REDACTED} {REDACTED}"


def test_query_settings_stay_readable_in_text_while_keys_are_scrubbed() -> None:
    redaction.register_config_secrets({"base_url": "https://gw/v1?api-version=2024-02-01&key=k3y-value"}, {})
    assert scrub("day 2024-02-01 key k3y-value") == f"day 2024-02-01 key {REDACTED}"


# -- openai.headers_env ----------------------------------------------------------------------

def _headers_env_experiment(headers_env: str) -> object:
    from tests.test_openai_backend import experiment_config

    return experiment_config(f"""\
        - name: gw
          backend: openai
          openai: {{base_url: "http://127.0.0.1:9", headers_env: {headers_env}}}
          payload_files: [payload_a.jsonl]
          concurrency_levels: [1]
        """)


@pytest.mark.parametrize("headers_env, value, message", [
    ("{X-Gw-Key: FMB_UNSET_VAR}", None, "FMB_UNSET_VAR (header X-Gw-Key) is not set"),
    ("{X-Gw-Key: FMB_GW_VAR}", "abc\n", "FMB_GW_VAR (header X-Gw-Key) holds a line break"),
    ('{"X Gw": FMB_GW_VAR}', "abc", "header 'X Gw'"),
])
def test_headers_env_mistakes_are_config_errors_that_never_echo_the_value(
        monkeypatch: pytest.MonkeyPatch, headers_env: str, value: str | None, message: str) -> None:
    from pytest_fmbench.endpoints.openai import OpenAIEndpoint
    from pytest_fmbench.errors import ConfigError

    monkeypatch.delenv("FMB_UNSET_VAR", raising=False)
    if value is not None:
        monkeypatch.setenv("FMB_GW_VAR", value)
    config = _headers_env_experiment(headers_env)
    with pytest.raises(ConfigError) as raised:
        OpenAIEndpoint.preflight(config, config.experiments[0])  # type: ignore[attr-defined]
    text = raised.value.render()
    assert message in text and "openai.headers_env" in text and "abc" not in text


def test_headers_env_values_are_sent_from_the_environment(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from pytest_fmbench.endpoints.openai import OpenAIEndpoint
    from pytest_fmbench.endpoints.registry import EndpointContext

    monkeypatch.setenv("FMB_GW_VAR", "gw-secret-1")
    config = _headers_env_experiment("{Ocp-Apim-Subscription-Key: FMB_GW_VAR}")
    endpoint = OpenAIEndpoint(config, config.experiments[0],  # type: ignore[attr-defined]
                              EndpointContext("run", tmp_path))
    client = endpoint.client()
    assert client.headers["Ocp-Apim-Subscription-Key"] == "gw-secret-1"  # type: ignore[attr-defined]
    assert "gw-secret-1" not in str(endpoint.describe())
