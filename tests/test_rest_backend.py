"""The rest backend: FMBench's REST predictors (custom_rest, rest, eks) against a loopback server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from pytest_fmbench.config.model import Config
from pytest_fmbench.config.predictors import predictor_backend
from pytest_fmbench.endpoints.base import InferenceRequest
from pytest_fmbench.endpoints.registry import create_endpoint, preflight
from pytest_fmbench.endpoints.rest import RestEndpoint
from pytest_fmbench.errors import ConfigError
from tests.aws_support import context, invoke_all
from tests.fmbench_support import RestServer

PROMPT = "What is the capital of France?"


@pytest.fixture(scope="module")
def server() -> Iterator[RestServer]:
    with RestServer() as running:
        yield running


@pytest.fixture(autouse=True)
def fresh(server: RestServer) -> None:
    server.requests.clear()
    server.status = 200


def config(script: str, url: str, **spec: Any) -> Config:
    return Config.model_validate({
        "datasets": {"filters": [{"payload_file": "p.jsonl"}]},
        "inference_parameters": {"custom_rest": {"max_tokens": 8, "temperature": 0.1}},
        "load": {"request_timeout_s": 5},
        "experiments": [{"name": "byo", "ep_name": url, "deploy": False, "instance_type": "g6e.xlarge",
                         "inference_script": script, "payload_files": ["p.jsonl"],
                         "concurrency_levels": [2],
                         "inference_spec": {"parameter_set": "custom_rest", **spec}}],
    })


def endpoint(cfg: Config) -> RestEndpoint:
    made = create_endpoint(cfg, cfg.experiments[0], context())
    assert isinstance(made, RestEndpoint)
    return made


def test_fmbench_predictors_map_onto_backends() -> None:
    assert [predictor_backend(s) for s in (
        "sagemaker_predictor.py", "bedrock_predictor.py", "ec2_predictor.py", "eks_predictor.py",
        "rest_predictor.py", "fmbench/scripts/custom_rest_predictor.py", "mine.py")] == [
        "sagemaker", "bedrock", "openai", "rest", "rest", "rest", None]
    assert config("custom_rest_predictor.py", "http://h/x").experiments[0].resolved_backend == "rest"


def test_custom_rest_posts_fmbench_body_with_headers(server: RestServer) -> None:
    cfg = config("custom_rest_predictor.py", f"{server.url}/v2/completions", model_id="tinyllama",
                 headers={"custom_authentication_token": "secret-token"})
    ep = endpoint(cfg)
    parameters = cfg.parameters_for(cfg.experiments[0])
    results = invoke_all(ep, [InferenceRequest(PROMPT, parameters, 7)] * 2)
    assert [r.error for r in results] == ["", ""]
    method, path, headers, body = server.requests[0]
    assert (method, path) == ("POST", "/v2/completions")
    assert {k.lower(): v for k, v in headers.items()}["custom_authentication_token"] == "secret-token"
    assert json.loads(body) == {"model_id": "tinyllama", "prompt": PROMPT, "max_tokens": 8,
                                "temperature": 0.1}
    first = results[0]
    assert first.text == server.answer and first.token_source == "server"
    assert (first.prompt_tokens, first.completion_tokens) == (6, 6)
    assert first.first_token_ns == first.last_byte_ns > first.sent_ns
    assert "secret-token" not in json.dumps(ep.describe())


def test_rest_predictor_sends_the_sentence_and_strips_the_echo(server: RestServer) -> None:
    ep = endpoint(config("rest_predictor.py", f"{server.url}/serve/infer?sentence="))
    [result] = invoke_all(ep, [InferenceRequest(PROMPT, {}, 7)])
    assert result.error == "" and result.text == server.answer
    assert server.requests[0][1] == "/serve/infer?sentence=What%20is%20the%20capital%20of%20France%3F"
    assert result.token_source == "estimate" and result.completion_tokens == 8


def test_eks_predictor_puts_the_prompt_in_the_path(server: RestServer) -> None:
    ep = endpoint(config("eks_predictor.py", f"{server.url}/infer"))
    [result] = invoke_all(ep, [InferenceRequest(PROMPT, {}, 7)])
    assert result.error == "" and result.text == server.answer
    assert server.requests[0][1].startswith("/infer/What%20is")


@pytest.mark.parametrize(("status", "kind"), [(503, "http_5xx"), (429, "throttled"), (404, "http_4xx")])
def test_errors_become_classified_records(server: RestServer, status: int, kind: str) -> None:
    server.status = status
    ep = endpoint(config("custom_rest_predictor.py", f"{server.url}/v2/completions"))
    [result] = invoke_all(ep, [InferenceRequest(PROMPT, {}, 7)])
    assert (result.error, result.status) == (kind, status)


def test_unreachable_server_is_a_connection_error() -> None:
    ep = endpoint(config("custom_rest_predictor.py", "http://127.0.0.1:9/v2/completions"))
    [result] = invoke_all(ep, [InferenceRequest(PROMPT, {}, 7)])
    assert result.error == "connection"


def test_placeholder_url_is_refused_at_startup() -> None:
    cfg = config("rest_predictor.py", "http://<NLB_DNS_NAME>/serve/infer?sentence=")
    with pytest.raises(ConfigError) as error:
        preflight(cfg)
    assert "experiments (byo).ep_name" in error.value.render()


def test_an_fmbench_eks_deployment_is_refused_at_startup_with_the_way_out() -> None:
    cfg = config("eks_predictor.py", "")
    cfg.experiments[0].deploy = True
    cfg.experiments[0].deployment_script = "eks_deploy.py"
    with pytest.raises(ConfigError) as error:
        preflight(cfg)
    text = error.value.render()
    assert "experiments (byo).deploy" in text and "eks_deploy.py" in text and "deploy: no" in text


def test_djl_style_posts_inputs_and_parameters_and_reads_generated_text() -> None:
    """DJL Serving's /invocations, as FMBench's ec2_predictor.py calls it (the container
    backend's DJL containers): the echoed prompt is removed from generated_text."""
    import http.server
    import threading

    from pytest_fmbench.endpoints.rest import DJL_STYLE

    bodies: list[dict[str, Any]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
            bodies.append(body)
            reply = json.dumps({"generated_text": body["inputs"] + " Paris."}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/invocations"
        cfg = config("ec2_predictor.py", "http://unused:8080/invocations")
        ep = RestEndpoint(cfg, cfg.experiments[0], context(), url=url, style=DJL_STYLE)
        parameters = cfg.parameters_for(cfg.experiments[0])
        [result] = invoke_all(ep, [InferenceRequest(PROMPT, parameters, 7)])
    finally:
        httpd.shutdown()
    assert result.error == "" and result.text == " Paris."
    assert bodies == [{"inputs": PROMPT, "parameters": {"max_tokens": 8, "temperature": 0.1}}]
