"""The ``rest`` backend: a bring-your-own HTTP server spoken to the way FMBench's REST
predictors speak to it (``inference_script``; see ``config/predictors.py``):

- ``custom_rest_predictor.py``: ``POST <ep_name>`` with ``{"model_id": inference_spec.model_id,
  "prompt": ..., **parameters}`` and ``inference_spec.headers``; the answer is
  ``completions[0].text``, token counts from ``usage`` when the server sends it.
- ``rest_predictor.py``: ``GET <ep_name>?sentence=<prompt>`` (Ray Serve style); the body is
  the text, with the echoed prompt removed.
- ``eks_predictor.py``: ``GET <ep_name>/<prompt>``; the body is the text.

Nothing is deployed or deleted. Requests are not streamed (neither are FMBench's), so the
time to first token is the time to the whole answer. Blocking calls run in a thread pool
sized to the highest concurrency, like the AWS backends.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from pytest_fmbench.clock import now_ns
from pytest_fmbench.config.model import Config, Experiment, RetrySettings
from pytest_fmbench.config.predictors import predictor_file
from pytest_fmbench.endpoints import aws
from pytest_fmbench.endpoints.base import EndpointClient, InferenceRequest, InferenceResult
from pytest_fmbench.endpoints.registry import EndpointContext
from pytest_fmbench.errors import ConfigError

CUSTOM, SENTENCE, PATH = "custom", "sentence", "path"
# DJL Serving's /invocations (FMBench's ec2_predictor.py for container_type djl): POST
# {"inputs": prompt, "parameters": {...}}, the answer in generated_text; used by the
# container backend for the DJL containers it starts.
DJL_STYLE = "djl"
STYLES = {"custom_rest_predictor.py": CUSTOM, "rest_predictor.py": SENTENCE,
          "eks_predictor.py": PATH}


def style_of(experiment: Experiment) -> str:
    return STYLES.get(predictor_file(experiment.inference_script), CUSTOM)


class RestEndpoint:
    def __init__(self, config: Config, experiment: Experiment, context: EndpointContext, *,
                 url: str | None = None, style: str | None = None) -> None:
        self.name = experiment.name
        self.experiment = experiment
        self.context = context
        self.style = style or style_of(experiment)
        self.url = url or str(experiment.ep_name or "")
        self.headers = dict(experiment.inference_spec.headers)
        self.model_id = experiment.inference_spec.model_id
        self.parameters = config.parameters_for(experiment)
        self.timeout_s = config.load_for(experiment).request_timeout_s or 120.0

    @classmethod
    def preflight(cls, config: Config, experiment: Experiment) -> None:
        if experiment.deploy and experiment.backend is None:
            # FMBench configs with eks_deploy.py ask FMBench to deploy onto an EKS cluster.
            script = experiment.deployment_script or "its deployment script"
            raise ConfigError(
                f"experiments ({experiment.name}) asks FMBench to deploy the server "
                f"({script}, deploy: yes); pytest-fmbench does not deploy REST servers",
                key=f"experiments ({experiment.name}).deploy",
                fix="deploy it yourself (for EKS: FMBench's eks_manifests with kubectl), then "
                "set 'deploy: no' and ep_name to its URL")
        url = experiment.ep_name or ""
        parsed = urllib.parse.urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc or "<" in url:
            raise ConfigError(
                f"experiments ({experiment.name}) sends REST requests "
                f"({experiment.inference_script or 'backend: rest'}) but ep_name is "
                f"'{url}', not a URL",
                key=f"experiments ({experiment.name}).ep_name",
                fix="set ep_name to the server's URL, e.g. http://my-nlb.example.com/serve/infer",
            )

    @property
    def deployed_by_us(self) -> bool:
        return False

    def deploy(self) -> None:
        self.context.log(f"[fmbench] {self.name}: benchmarking the REST server at "
                         f"{self._safe_url()} ({self.style} requests)")

    def teardown(self) -> None:
        return None

    def client(self) -> EndpointClient:
        return aws.ThreadedClient(self._invoke, workers=aws.max_concurrency(self.experiment),
                                  timeout_s=self.timeout_s, retry=RetrySettings())

    def describe(self) -> dict[str, Any]:
        # Headers often carry tokens: never in the report.
        return {"backend": "rest", "url": self._safe_url(), "style": self.style,
                "model_id": self.model_id, "instance_type": self.experiment.instance_type}

    def _safe_url(self) -> str:
        parsed = urllib.parse.urlparse(self.url)
        return parsed._replace(query="", netloc=parsed.netloc.rpartition("@")[2]).geturl()

    # -- requests --------------------------------------------------------------------------
    def http_request(self, request: InferenceRequest) -> urllib.request.Request:
        if self.style == SENTENCE:
            quoted = urllib.parse.quote(request.prompt, safe="")
            # FMBench's own configs end ep_name with "?sentence=".
            url = (self.url + quoted if self.url.endswith("sentence=") else
                   f"{self.url}{'&' if '?' in self.url else '?'}sentence={quoted}")
            return urllib.request.Request(url, headers=self.headers, method="GET")
        if self.style == PATH:
            url = f"{self.url.rstrip('/')}/{urllib.parse.quote(request.prompt, safe='')}"
            return urllib.request.Request(url, headers=self.headers, method="GET")
        if self.style == DJL_STYLE:
            body: dict[str, Any] = {"inputs": request.prompt,
                                    "parameters": request.parameters or self.parameters}
        else:
            body = {"model_id": self.model_id, "prompt": request.prompt,
                    **(request.parameters or self.parameters)}
        headers = {"Content-Type": "application/json", **self.headers}
        return urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=headers,
                                      method="POST")

    def _invoke(self, request: InferenceRequest) -> InferenceResult:
        http = self.http_request(request)
        sent = now_ns()
        result = InferenceResult(sent_ns=sent, last_byte_ns=0)
        try:
            with urllib.request.urlopen(http, timeout=self.timeout_s) as response:
                result.status = response.status
                data = response.read()
        except urllib.error.HTTPError as exc:
            result.status = exc.code
            kind = "throttled" if exc.code == 429 else f"http_{exc.code // 100}xx"
            return _error(result, kind if exc.code >= 400 else "client", f"HTTP {exc.code}: {exc.reason}")
        except TimeoutError as exc:
            return _error(result, "timeout", f"{type(exc).__name__}: {exc}")
        except (urllib.error.URLError, OSError) as exc:
            return _error(result, "connection", f"{type(exc).__name__}: {exc}")
        result.last_byte_ns = now_ns()
        result.first_token_ns = result.last_byte_ns
        try:
            text, prompt_tokens, completion_tokens = self.parse(data, request.prompt)
        except ValueError as exc:
            return _error(result, "bad_response", str(exc), keep_time=True)
        result.text = text
        aws.fill_tokens(result, request, server_prompt=prompt_tokens,
                        server_completion=completion_tokens, content_chunks=None,
                        count_tokens=self.context.count_tokens)
        return result

    def parse(self, data: bytes, prompt: str) -> tuple[str, int | None, int | None]:
        """(answer text, server prompt tokens, server completion tokens)."""
        if self.style not in (CUSTOM, DJL_STYLE):
            text = data.decode("utf-8", errors="replace")
            # FMBench's REST predictors strip the echoed prompt and JSON-ish quoting.
            return text.replace(prompt, "", 1).strip('["]?\n \t'), None, None
        try:
            reply = json.loads(data)
        except json.JSONDecodeError as exc:
            raise ValueError(f"the server's reply is not JSON: {exc.msg}: {data[:200]!r}") from None
        if not isinstance(reply, dict):
            raise ValueError(f"expected a JSON object with 'completions', got {data[:200]!r}")  # noqa: TRY004 - a bad reply, not a bad argument
        if self.style == DJL_STYLE:
            # FMBench's predictor removes the echoed prompt from DJL's answer.
            return str(reply.get("generated_text") or "").replace(prompt, "", 1), None, None
        completions = reply.get("completions") or [{}]
        text = str((completions[0] or {}).get("text", "")) if isinstance(completions, list) else ""
        usage: dict[str, Any] = reply["usage"] if isinstance(reply.get("usage"), dict) else {}
        return text, _int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens"))


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _error(result: InferenceResult, kind: str, detail: str, *, keep_time: bool = False) -> InferenceResult:
    result.error, result.error_detail = kind, detail[:500]
    if not keep_time or not result.last_byte_ns:
        result.last_byte_ns = now_ns()
    return result
