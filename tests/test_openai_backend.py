"""The openai backend: API keys, deploy.command, FMBench's self-hosted experiments, faults
through the load engine, and the client's parsing fast path.

Basic client behaviours (streaming, usage, parameters, each fault on one request) are in
test_openai_http.py.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from pytest_fmbench.config.model import Config
from pytest_fmbench.endpoints.base import InferenceRequest, InferenceResult
from pytest_fmbench.endpoints.command import CommandServer
from pytest_fmbench.endpoints.openai import OpenAIEndpoint, split_endpoint_url
from pytest_fmbench.endpoints.openai_http import OpenAIClient
from pytest_fmbench.endpoints.registry import EndpointContext
from pytest_fmbench.errors import ConfigError, EndpointError
from pytest_fmbench.load.engine import RecordContext, run_load
from pytest_fmbench.load.patterns import LoadPlan
from pytest_fmbench.load.records import RequestRecord
from pytest_fmbench.run import run_async
from pytest_fmbench.testing.openai_server import FakeOpenAIServer, ServerBehaviour
from tests.e2e_support import BENCHMARK_TEST, INNER_ARGS, alive, rows, serve_raw

FAKE_SERVER = f"{sys.executable} -m pytest_fmbench.testing.openai_server --port $FMBENCH_PORT"
SECRET = "sk-test-5f9c2b7e-do-not-log"


def config(experiment: str, *, load: str = "", top: str = "") -> str:
    return textwrap.dedent("""\
        general: {name: oa}
        datasets:
          synthetic: {records: 30, seed: 1}
          max_prompts_per_file: 4
          filters:
            - {payload_file: payload_a.jsonl, min_length_in_tokens: 1, max_length_in_tokens: 100000}
        inference_parameters:
          fast: {max_new_tokens: 4}
        load: {min_iters_per_combination: 2, max_iters_per_combination: 2, warmup_requests: 1,
               request_timeout_s: 5%s}
        %s
        experiments:
        """) % (load, top) + textwrap.indent(textwrap.dedent(experiment), "  ")


def experiment_config(text: str) -> Config:
    return Config.model_validate(__import__("yaml").safe_load(config(text)))


def context(tmp_path: Path, log: list[str] | None = None) -> EndpointContext:
    return EndpointContext("run", tmp_path, (log if log is not None else []).append)


# -- API key: from the environment, sent, and never written anywhere -----------------------

def test_api_key_is_sent_and_never_recorded_logged_or_described(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_LLM_KEY", SECRET)
    with FakeOpenAIServer(ServerBehaviour(completion_tokens=4)) as server:
        pytester.makepyfile(test_bench=BENCHMARK_TEST)
        pytester.makefile(".yml", cfg=config(f"""\
            - name: keyed
              backend: openai
              deploy: no
              price_per_hour: 1.0
              openai: {{base_url: "{server.url}", api_key_env: MY_LLM_KEY,
                        headers: {{X-Team: bench}}, extra_body: {{seed: 7}}}}
              inference_spec: {{parameter_set: fast}}
              payload_files: [payload_a.jsonl]
              concurrency_levels: [2]
            """, load=", pattern: concurrency, requests: 6"))
        result = pytester.runpytest(*INNER_ARGS, "--fmbench-config=cfg.yml",
                                    "--fmbench-results-dir=out", "-v")
        result.assert_outcomes(passed=1)
        sent = server.stats.headers
    assert sent and all(h["Authorization"] == f"Bearer {SECRET}" for h in sent)
    assert all(h["X-Team"] == "bench" for h in sent)
    assert all(b["seed"] == 7 for b in server.stats.bodies)
    records = rows(pytester.path / "out" / "records.jsonl")
    assert len(records) == 6 and all(r["error"] == "" for r in records)
    written = [p for p in (pytester.path / "out").rglob("*") if p.is_file()]
    assert written
    for path in written:
        assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET not in result.stdout.str() + result.stderr.str()


def test_missing_api_key_variable_fails_at_configure_time(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MY_LLM_KEY", raising=False)
    pytester.makepyfile(test_bench=BENCHMARK_TEST)
    pytester.makefile(".yml", cfg=config("""\
        - name: keyed
          backend: openai
          openai: {base_url: "http://127.0.0.1:9", api_key_env: MY_LLM_KEY}
          payload_files: [payload_a.jsonl]
          concurrency_levels: [1]
        """))
    result = pytester.runpytest(*INNER_ARGS, "--fmbench-config=cfg.yml")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "MY_LLM_KEY is not set" in result.stderr.str()
    assert "export MY_LLM_KEY=" in result.stderr.str()


def test_a_key_or_header_that_would_break_the_request_fails_at_configure_time(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_LLM_KEY", SECRET + "\n")  # read from a file with its newline
    pytester.makepyfile(test_bench=BENCHMARK_TEST)
    experiment = """\
        - name: keyed
          backend: openai
          openai: {base_url: "http://127.0.0.1:9", api_key_env: MY_LLM_KEY%s}
          payload_files: [payload_a.jsonl]
          concurrency_levels: [1]
        """
    pytester.makefile(".yml", cfg=config(experiment % ""))
    result = pytester.runpytest(*INNER_ARGS, "--fmbench-config=cfg.yml")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "MY_LLM_KEY holds a line break" in result.stderr.str()
    assert SECRET not in result.stdout.str() + result.stderr.str()
    monkeypatch.setenv("MY_LLM_KEY", SECRET)
    pytester.makefile(".yml", cfg=config(experiment % ', headers: {"X Team": "a"}'))
    result = pytester.runpytest(*INNER_ARGS, "--fmbench-config=cfg.yml")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "header 'X Team'" in result.stderr.str() and "openai.headers" in result.stderr.str()


def test_client_repr_hides_headers() -> None:
    client = OpenAIClient("http://h:1", headers={"Authorization": f"Bearer {SECRET}"})
    assert SECRET not in repr(client)


# -- deploy.command: started, healthy, stopped with its whole process group ----------------

def test_deploy_command_serves_the_run_and_teardown_stops_its_process_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    # The server runs under a shell that also starts a stray child: both must go.
    command = f"sleep 300 & echo $! > {pid_file}; exec {FAKE_SERVER} --ttft 0 --token-delay 0"
    cfg = experiment_config(f"""\
        - name: served
          backend: openai
          openai:
            deploy: {{command: "{command}", startup_timeout_s: 60}}
          inference_spec: {{parameter_set: fast}}
          payload_files: [payload_a.jsonl]
          concurrency_levels: [1]
        """)
    log: list[str] = []
    endpoint = OpenAIEndpoint(cfg, cfg.experiments[0], context(tmp_path, log))
    assert endpoint.base_url.startswith("http://127.0.0.1:") and not endpoint.deployed_by_us
    endpoint.deploy()
    try:
        assert endpoint.deployed_by_us
        server_pid = endpoint.describe()["pid"]
        child_pid = int(pid_file.read_text())
        assert alive(server_pid) and alive(child_pid)

        async def one() -> InferenceResult:
            client = endpoint.client()
            try:
                return await client.invoke(InferenceRequest("hello there", {"max_new_tokens": 3}))
            finally:
                await client.aclose()

        result = run_async(one)
        assert result.error == "" and result.completion_tokens == 3
    finally:
        endpoint.teardown()
    assert not endpoint.deployed_by_us
    deadline = time.monotonic() + 10
    while (alive(server_pid) or alive(child_pid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(server_pid) and not alive(child_pid)
    assert any("starting the server of 'served'" in line for line in log)
    assert (tmp_path / "logs" / "served-server.log").exists()
    endpoint.teardown()  # twice is fine


def test_deploy_command_that_exits_reports_the_log_tail(tmp_path: Path) -> None:
    server = CommandServer("echo 'CUDA out of memory' >&2; exit 3", health_url="http://127.0.0.1:9/",
                           port=9, log_path=tmp_path / "s.log", startup_timeout_s=30,
                           key="experiments (x).openai.deploy.command")
    with pytest.raises(EndpointError) as failure:
        server.start()
    text = failure.value.render()
    assert "exited with code 3" in text and "CUDA out of memory" in text
    assert "experiments (x).openai.deploy.command" in text and "fix:" in text
    assert not server.running


def test_deploy_command_that_never_gets_healthy_is_stopped(tmp_path: Path) -> None:
    server = CommandServer("echo starting; exec sleep 300", health_url="http://127.0.0.1:9/health",
                           port=9, log_path=tmp_path / "s.log", startup_timeout_s=0.5,
                           stop_timeout_s=2)
    started = time.monotonic()
    with pytest.raises(EndpointError, match=r"did not answer .* within 0.5 s(.|\n)*starting"):
        server.start()
    assert time.monotonic() - started < 10
    assert server.pid is None


def test_deploy_no_with_a_command_is_a_config_error() -> None:
    cfg = experiment_config("""\
        - name: both
          backend: openai
          deploy: no
          openai: {base_url: "http://127.0.0.1:9", deploy: {command: "vllm serve m"}}
          payload_files: [payload_a.jsonl]
          concurrency_levels: [1]
        """)
    with pytest.raises(ConfigError, match="'deploy: no' but openai.deploy.command is set"):
        OpenAIEndpoint.preflight(cfg, cfg.experiments[0])


# -- FMBench's self-hosted (EC2) experiments -----------------------------------------------

def fmbench_ec2(url: str, *, deploy: str, container: str = "vllm") -> str:
    return f"""\
        - name: llama3-8b-g5-vllm
          model_id: meta-llama/Meta-Llama-3-8B-Instruct
          ep_name: '{url}'
          instance_type: g5.2xlarge
          image_uri: vllm/vllm-openai:latest
          deploy: {deploy}
          instance_count: 1
          deployment_script: ec2_deploy.py
          inference_script: ec2_predictor.py
          inference_spec:
            parameter_set: fast
            container_type: {container}
          payload_files: [payload_a.jsonl]
          concurrency_levels: [1, 2]
          env:
        """


def test_fmbench_ec2_experiment_with_deploy_no_runs_against_its_url(pytester: pytest.Pytester) -> None:
    with FakeOpenAIServer(ServerBehaviour(completion_tokens=4)) as server:
        pytester.makepyfile(test_bench=BENCHMARK_TEST)
        pytester.makefile(".yml", cfg=config(
            fmbench_ec2(f"{server.url}/v1/completions", deploy="no"),
            top="pricing: {instance_based: {g5.2xlarge: 1.212}}"))
        result = pytester.runpytest(*INNER_ARGS, "--fmbench-config=cfg.yml",
                                    "--fmbench-results-dir=out", "-v")
        result.assert_outcomes(passed=2)
        assert all("prompt" in body for body in server.stats.bodies)  # /v1/completions
    records = rows(pytester.path / "out" / "records.jsonl")
    assert len(records) == 2 + 4 and all(r["error"] == "" for r in records)


def test_fmbench_docker_deploy_yes_without_a_runtime_says_what_else_to_do(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """deploy: yes goes to the container backend (tests/test_container_e2e.py); without a
    container runtime it is one usage error naming the experiment and the alternatives."""
    monkeypatch.setenv("FMBENCH_CONTAINER_RUNTIME", "no-such-runtime")
    pytester.makepyfile(test_bench=BENCHMARK_TEST)
    pytester.makefile(".yml", cfg=config(
        fmbench_ec2("http://localhost:8000/v1/completions", deploy="yes")))
    result = pytester.runpytest(*INNER_ARGS, "--fmbench-config=cfg.yml")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    error = result.stderr.str()
    assert "experiments (llama3-8b-g5-vllm).deploy" in error
    assert "experiment 'llama3-8b-g5-vllm' starts its server in a container" in error
    assert "deploy: no" in error and "openai.deploy.command" in error
    assert "Traceback" not in error


def test_fmbench_deploy_yes_with_our_command_starts_the_server(pytester: pytest.Pytester) -> None:
    lines = fmbench_ec2("unused", deploy="yes").splitlines()
    lines = [line for line in lines if "ep_name" not in line]
    lines.append(f"          openai: {{deploy: {{command: '{FAKE_SERVER} --ttft 0 --token-delay 0'}}}}")
    experiment = "\n".join(lines) + "\n"
    pytester.makepyfile(test_bench=BENCHMARK_TEST)
    pytester.makefile(".yml", cfg=config(experiment))
    result = pytester.runpytest(*INNER_ARGS, "--fmbench-config=cfg.yml",
                                "--fmbench-results-dir=out", "-v")
    result.assert_outcomes(passed=2)
    events = rows(pytester.path / "out" / "endpoints.jsonl")
    assert [e["event"] for e in events] == ["deploy", "teardown"]
    assert events[0]["deployed_by_us"] and events[0]["endpoint"]["deploy"] == "command"
    assert not alive(events[0]["endpoint"]["pid"])
    assert len(rows(pytester.path / "out" / "records.jsonl")) == 2 + 4


@pytest.mark.parametrize("container", ["triton", "djl"])
def test_fmbench_native_triton_and_djl_apis_are_a_clear_error(container: str) -> None:
    url = {"triton": "http://localhost:8080/v2/models/ensemble/generate",
           "djl": "http://localhost:8080/invocations"}[container]
    cfg = experiment_config(fmbench_ec2(url, deploy="no", container=container))
    with pytest.raises(ConfigError, match="not OpenAI-compatible") as failure:
        OpenAIEndpoint.preflight(cfg, cfg.experiments[0])
    assert "openai.base_url" in failure.value.render()


@pytest.mark.parametrize(("url", "base", "api"), [
    ("http://h:8000/v1/completions", "http://h:8000", "completions"),
    ("http://h:8000/v1/chat/completions/", "http://h:8000", "chat"),
    ("http://h:11434/api/generate", "http://h:11434", "completions"),  # ollama, FMBench style
    ("http://h:11434/api/chat", "http://h:11434", "chat"),
    ("https://api.example.com/v1", "https://api.example.com/v1", None),
])
def test_endpoint_urls(url: str, base: str, api: str | None) -> None:
    assert split_endpoint_url(url) == (base, api)


# -- faults through the load engine: the right class, and the run goes on ------------------

@pytest.mark.parametrize(("fault", "error"), [
    ("throttle", "throttled"), ("error_5xx", "http_5xx"), ("error_4xx", "http_4xx"),
    ("truncate", "stream_truncated"), ("stall", "timeout"), ("garbage", "bad_response"),
    ("drop", "connection"),
])
@pytest.mark.parametrize("pattern", ["concurrency", "rate"])
def test_each_fault_is_classified_and_the_run_goes_on(fault: str, error: str, pattern: str) -> None:
    behaviour = ServerBehaviour(completion_tokens=6, fault=fault, fault_every=3, stall_s=5.0)
    with FakeOpenAIServer(behaviour, keep_bodies=False) as server:
        plan = LoadPlan(pattern, 3, requests=9, rate=200.0 if pattern == "rate" else None,
                        arrival="constant", timeout_s=0.5)
        records: list[RequestRecord] = []
        run_load(plan, lambda: OpenAIClient(server.url, timeout_s=0.5),
                 [InferenceRequest(f"p {i}") for i in range(9)],
                 RecordContext("r", "e", "p", 3, "case"), records.append)
    assert len(records) == 9
    errors = sorted(r.error for r in records)
    assert errors == [""] * 6 + [error] * 3, [r.error_detail for r in records]
    assert all(r.token_source == "server" and r.completion_tokens == 6 for r in records if r.ok)


@pytest.mark.parametrize(("fault", "error"), [
    ("throttle", "throttled"), ("error_5xx", "http_5xx"), ("truncate", "stream_truncated"),
    ("stall", "timeout"), ("garbage", "bad_response"), ("drop", "connection"),
])
def test_faults_of_a_separate_server_process(fault: str, error: str) -> None:
    """The faulty server in a process of its own, as a real endpoint would be."""
    server = subprocess.Popen(
        [sys.executable, "-m", "pytest_fmbench.testing.openai_server", "--ttft", "0.01",
         "--token-delay", "0.002", "--fault", fault, "--fault-every", "4"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), url
        plan = LoadPlan("concurrency", 4, requests=16, timeout_s=0.5)
        records: list[RequestRecord] = []
        run_load(plan, lambda: OpenAIClient(url, timeout_s=0.5),
                 [InferenceRequest(f"p {i}") for i in range(16)],
                 RecordContext("r", "e", "p", 4, "case"), records.append)
    finally:
        server.kill()
        server.wait(10)
    assert len(records) == 16
    assert sorted(r.error for r in records) == [""] * 12 + [error] * 4, [
        r.error_detail for r in records]
    assert all(r.token_source == "server" for r in records if r.ok)


# -- the parsing fast path is exact ---------------------------------------------------------

def vllm_chunk(text: str, finish: str | None = None, sep: bytes = b"\n\n") -> bytes:
    import json

    body = {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
            "usage": None}
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + sep


USAGE = b'data: {"id":"cmpl-1","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":5}}\n\n'
TEXTS = [" Hello", ' "quoted" \\ back', " \u00e9t\u00e9 \\u2603", "\n", " end"]


def test_fast_path_matches_a_full_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_fmbench.endpoints import openai_http

    parsed: list[bytes] = []
    original = openai_http._parse_json

    def counting(payload: bytes) -> Any:
        parsed.append(payload)
        return original(payload)

    monkeypatch.setattr(openai_http, "_parse_json", counting)
    body = [vllm_chunk(t) for t in TEXTS[:-1]] + [vllm_chunk(TEXTS[-1], "length"), USAGE,
                                                     b"data: [DONE]\n\n"]
    first, second = serve_raw(body, gap_s=0.002, requests=2, client={"keep_text": True})
    for result in (first, second):
        assert result.error == "", result.error_detail
        assert result.text == "".join(TEXTS)
        assert len(result.itl_us) == 4 and all(gap >= 1000 for gap in result.itl_us)
        assert result.completion_tokens == 5 and result.token_source == "server"
    # First request: the first content chunk, the finish chunk and usage are parsed; the
    # rest match the learnt shape. Second request: the shape is known from the first.
    assert len(parsed) == 3 + 2


def test_fast_path_with_crlf_split_reads_comments_and_multiline_data() -> None:
    crlf = [vllm_chunk(t, sep=b"\r\n\r\n") for t in ("a", "b", "c")]
    joined = b"".join(crlf) + b": keep-alive\r\n\r\n" + vllm_chunk("d", "stop", sep=b"\r\n\r\n")
    # Reads cut anywhere, even inside an event or between \r and \n.
    cuts = [joined[:7], joined[7:60], joined[60:61], joined[61:200], joined[200:]]
    (result,) = serve_raw(cuts + [b"data: [DONE]\r\n\r\n"], gap_s=0.001, client={"keep_text": True})
    assert result.error == "" and result.text == "abcd"
    assert result.token_source == "estimate" and result.completion_tokens == 4
    multiline = b'event: message\ndata: {"choices":[{"index":0,\ndata: "text":"zz","finish_reason":"stop"}]}\n\n'
    (result,) = serve_raw([vllm_chunk("y"), multiline, b"data: [DONE]\n\n"], client={"keep_text": True})
    assert result.error == "" and result.text == "yzz"


def test_a_corrupted_chunk_after_the_shape_is_learnt_is_still_caught() -> None:
    good = [vllm_chunk(t) for t in ("a", "b")]
    bad = vllm_chunk("c")[:-10] + b"\n\n"  # same prefix, broken suffix
    (result,) = serve_raw(good + [bad, vllm_chunk("d", "stop"), b"data: [DONE]\n\n"])
    assert result.error == "bad_response"


def test_text_is_skipped_unless_needed() -> None:
    body = [vllm_chunk("a"), vllm_chunk("b", "stop"), USAGE, b"data: [DONE]\n\n"]
    (lean,) = serve_raw(body, client={"keep_text": False})
    assert lean.text == "" and lean.token_source == "server"
    no_usage = [vllm_chunk("a b"), vllm_chunk(" c", "stop"), b"data: [DONE]\n\n"]
    (counted,) = serve_raw(no_usage, client={"keep_text": False,
                                             "count_tokens": lambda text: len(text.split())})
    assert counted.token_source == "tokenizer" and counted.completion_tokens == 3


def test_client_pickles_without_its_pool() -> None:
    import pickle

    with FakeOpenAIServer(ServerBehaviour(completion_tokens=2)) as server:
        client = OpenAIClient(server.url, headers={"X": "1"})

        async def use(c: OpenAIClient) -> InferenceResult:
            try:
                return await c.invoke(InferenceRequest("hi"))
            finally:
                await c.aclose()

        async def use_then_pickle() -> bytes:
            await client.invoke(InferenceRequest("hi"))
            data = pickle.dumps(client)  # a live pool is not carried over
            await client.aclose()
            return data

        copy = pickle.loads(run_async(use_then_pickle))
        assert copy.url == client.url and copy.headers == client.headers
        assert run_async(lambda: use(copy)).error == ""
