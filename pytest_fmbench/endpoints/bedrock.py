"""The Bedrock backend: on-demand models, inference profiles, provisioned throughput.

Nothing is deployed or deleted (provisioned throughput is bought outside the run and named
by its ARN). Requests use the Converse API by default (``converse`` / ``converse_stream``:
any model, server-reported usage, TTFT from the first ``contentBlockDelta``), or
InvokeModel with a model-specific body (``bedrock.api: invoke``; see ``bedrock_formats``).

The model is ``bedrock.model_id``, else FMBench's ``ep_name``, else ``model_id``: a model
id (``anthropic.claude-3-haiku-20240307-v1:0``), an inference profile
(``us.amazon.nova-micro-v1:0`` or its ARN) or a provisioned-throughput ARN.

Throttling is recorded as ``throttled``; ``bedrock.retry`` retries it a bounded number of
times (3 by default) with jittered exponential back-off. The record of a retried request
measures its final attempt and counts the earlier ones in ``retries``; the time they took
shows as client queue time (``sent - scheduled``), never as latency (see ``aws.py``).
"""

from __future__ import annotations

import json
from typing import Any

from pytest_fmbench.clock import now_ns
from pytest_fmbench.config.model import DEFAULT_MAX_RETRIES, BedrockSettings, Config, Experiment
from pytest_fmbench.endpoints import aws
from pytest_fmbench.endpoints.base import EndpointClient, InferenceRequest, InferenceResult
from pytest_fmbench.endpoints.bedrock_formats import (
    BodyFormat,
    apply_invocation_metrics,
    body_format_names,
    converse_inference_config,
    get_body_format,
    is_provisioned,
    model_family,
    normalize_parameters,
)
from pytest_fmbench.endpoints.registry import EndpointContext
from pytest_fmbench.endpoints.sagemaker_formats import Completion
from pytest_fmbench.errors import ConfigError

DEFAULT_RETRIES = DEFAULT_MAX_RETRIES["bedrock"]


def model_id_of(experiment: Experiment) -> str | None:
    settings = experiment.bedrock or BedrockSettings()
    return settings.model_id or experiment.ep_name or experiment.model_id


def body_format_of(experiment: Experiment, model_id: str) -> str | None:
    settings = experiment.bedrock or BedrockSettings()
    return settings.body_format or model_family(model_id)


class BedrockEndpoint:
    def __init__(self, config: Config, experiment: Experiment, context: EndpointContext) -> None:
        self.name = experiment.name
        self.config = config
        self.experiment = experiment
        self.context = context
        self.settings = experiment.bedrock or BedrockSettings()
        self.timeout_s = config.load_for(experiment).request_timeout_s or 120.0
        self.stream = experiment.inference_spec.stream
        model_id = model_id_of(experiment)
        if not model_id:
            raise _missing_model(experiment)
        self.model_id = model_id
        self.parameters = normalize_parameters(config.parameters_for(experiment))
        self.body_format: BodyFormat | None = None
        if self.settings.api == "invoke":
            name = body_format_of(experiment, model_id)
            if name is None or name not in body_format_names():
                raise _unknown_body(experiment, model_id, name)
            self.body_format = get_body_format(name)
        self._runtime: Any = None
        self._warned = False

    @classmethod
    def preflight(cls, config: Config, experiment: Experiment) -> None:
        model_id = model_id_of(experiment)
        if not model_id:
            raise _missing_model(experiment)
        settings = experiment.bedrock or BedrockSettings()
        if settings.api == "invoke":
            name = body_format_of(experiment, model_id)
            if name is None or name not in body_format_names():
                raise _unknown_body(experiment, model_id, name)
        aws.check_region_and_credentials(config, experiment)

    # -- lifecycle: nothing to create or delete ----------------------------------------
    @property
    def deployed_by_us(self) -> bool:
        return False

    def deploy(self) -> None:
        if self.parameters.unknown and not self._warned:
            self._warned = True
            self.context.log(
                f"[fmbench] {self.name}: inference parameters not sent to Bedrock: "
                f"{', '.join(sorted(self.parameters.unknown))} (use "
                "bedrock.additional_model_request_fields for model-specific fields)")

    def teardown(self) -> None:
        """Nothing was created."""

    def runtime(self) -> Any:
        if self._runtime is None:
            self._runtime = aws.session(self.config).client(
                "bedrock-runtime",
                config=aws.client_config(workers=aws.max_concurrency(self.experiment),
                                         timeout_s=self.timeout_s))
        return self._runtime

    def client(self) -> EndpointClient:
        call = self._invoke if self.settings.api == "invoke" else self._converse
        self.runtime()  # created here, once: botocore clients are slow to build, safe to share
        return aws.ThreadedClient(call, workers=aws.max_concurrency(self.experiment),
                                  timeout_s=self.timeout_s, retry=self.settings.retry,
                                  default_retries=DEFAULT_RETRIES)

    # -- converse ----------------------------------------------------------------------
    def _converse_kwargs(self, request: InferenceRequest) -> dict[str, Any]:
        parameters = normalize_parameters(request.parameters) if request.parameters else self.parameters
        kwargs: dict[str, Any] = {
            "modelId": self.model_id,
            "messages": [{"role": "user", "content": [{"text": request.prompt}]}],
        }
        inference = converse_inference_config(parameters)
        if inference:
            kwargs["inferenceConfig"] = inference
        if self.settings.additional_model_request_fields:
            kwargs["additionalModelRequestFields"] = self.settings.additional_model_request_fields
        return kwargs

    def _converse(self, request: InferenceRequest) -> InferenceResult:
        kwargs = self._converse_kwargs(request)
        runtime = self.runtime()
        sent = now_ns()
        deadline_ns = sent + int(self.timeout_s * 1e9)
        result = InferenceResult(sent_ns=sent, last_byte_ns=0)
        progress = aws.StreamProgress()
        completion = Completion()
        started = False
        try:
            if self.stream:
                response = runtime.converse_stream(**kwargs)
                started = True
                result.status = aws.status_of(response)

                def on_event(event: Any, arrived: int) -> None:
                    if "contentBlockDelta" in event and not event["contentBlockDelta"]:
                        # botocore turns an unparseable event into an empty one.
                        raise ValueError("a contentBlockDelta event without content")
                    delta = (event.get("contentBlockDelta") or {}).get("delta") or {}
                    if delta.get("text"):
                        completion.chunks.append(delta["text"])
                        progress.content(arrived, 1, result.itl_us)
                    elif delta.get("reasoningContent") and result.first_reasoning_ns is None:
                        result.first_reasoning_ns = arrived
                    elif "metadata" in event:
                        _converse_usage(event["metadata"].get("usage") or {}, completion)
                    elif "messageStop" in event:
                        completion.finished = True

                aws.drain_stream(response["stream"], on_event, deadline_ns, self.timeout_s)
                completion.text = "".join(completion.chunks)
                if not completion.finished:
                    result.first_token_ns = progress.first
                    return _truncated(result, "the stream ended without messageStop")
            else:
                response = runtime.converse(**kwargs)
                started = True
                result.status = aws.status_of(response)
                if "output" not in response:
                    raise ValueError("the Converse reply has no output")
                message = (response.get("output") or {}).get("message") or {}
                completion.text = "".join(p.get("text", "") for p in message.get("content", []))
                _converse_usage(response.get("usage") or {}, completion)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a record
            return self._failure(result, exc, started, progress)
        return self._success(result, request, completion, progress)

    # -- invoke_model ------------------------------------------------------------------
    def _invoke(self, request: InferenceRequest) -> InferenceResult:
        assert self.body_format is not None
        fmt = self.body_format
        parameters = normalize_parameters(request.parameters) if request.parameters else self.parameters
        body = fmt.body(request.prompt, parameters)
        body.update(self.settings.additional_model_request_fields)
        kwargs = {"modelId": self.model_id, "body": json.dumps(body).encode(),
                  "contentType": "application/json", "accept": "application/json"}
        runtime = self.runtime()
        sent = now_ns()
        deadline_ns = sent + int(self.timeout_s * 1e9)
        result = InferenceResult(sent_ns=sent, last_byte_ns=0)
        progress = aws.StreamProgress()
        completion = Completion()
        started = False
        try:
            if self.stream:
                response = runtime.invoke_model_with_response_stream(**kwargs)
                started = True
                result.status = aws.status_of(response)

                def on_chunk(event: Any, arrived: int) -> None:
                    raw = (event.get("chunk") or {}).get("bytes")
                    if raw:
                        data = _json_object(raw)
                        text = fmt.chunk(data, completion)
                        apply_invocation_metrics(data, completion)
                        if text:
                            completion.chunks.append(text)
                            progress.content(arrived, 1, result.itl_us)

                aws.drain_stream(response["body"], on_chunk, deadline_ns, self.timeout_s)
                completion.text = "".join(completion.chunks)
            else:
                response = runtime.invoke_model(**kwargs)
                started = True
                result.status = aws.status_of(response)
                data = _json_object(response["body"].read())
                completion = fmt.parse(data)
                headers = (response.get("ResponseMetadata") or {}).get("HTTPHeaders") or {}
                for header, attr in (("x-amzn-bedrock-input-token-count", "prompt_tokens"),
                                     ("x-amzn-bedrock-output-token-count", "completion_tokens")):
                    if str(headers.get(header, "")).isdigit():
                        setattr(completion, attr, int(headers[header]))
        except Exception as exc:  # noqa: BLE001 - every failure becomes a record
            return self._failure(result, exc, started, progress)
        return self._success(result, request, completion, progress)

    # -- shared ------------------------------------------------------------------------
    def _failure(self, result: InferenceResult, exc: BaseException, started: bool,
                 progress: aws.StreamProgress) -> InferenceResult:
        failure = aws.failed(result.sent_ns, exc, started=started, first_token_ns=progress.first)
        failure.status = failure.status or result.status
        failure.itl_us = result.itl_us
        failure.first_reasoning_ns = result.first_reasoning_ns
        return failure

    def _success(self, result: InferenceResult, request: InferenceRequest,
                 completion: Completion, progress: aws.StreamProgress) -> InferenceResult:
        result.last_byte_ns = now_ns()
        result.first_token_ns = progress.first
        result.text = completion.text
        aws.fill_tokens(result, request, server_prompt=completion.prompt_tokens,
                        server_completion=completion.completion_tokens,
                        content_chunks=progress.pieces if self.stream else None,
                        count_tokens=self.context.count_tokens)
        return result

    def describe(self) -> dict[str, Any]:
        return {
            "backend": "bedrock",
            "model_id": self.model_id,
            "api": self.settings.api,
            "stream": self.stream,
            "region": aws.region_of(self.config),
            "provisioned_throughput": is_provisioned(self.model_id),
            "pricing": "instance" if is_provisioned(self.model_id) else "token",
            "body_format": self.body_format.name if self.body_format else None,
        }


def _truncated(result: InferenceResult, detail: str) -> InferenceResult:
    result.error, result.error_detail = "stream_truncated", detail
    result.last_byte_ns = now_ns()
    return result


def _converse_usage(usage: dict[str, Any], completion: Completion) -> None:
    if isinstance(usage.get("inputTokens"), int):
        completion.prompt_tokens = usage["inputTokens"]
    if isinstance(usage.get("outputTokens"), int):
        completion.completion_tokens = usage["outputTokens"]


def _json_object(raw: bytes) -> dict[str, Any]:
    data = json.loads(raw)  # ValueError → bad_response
    if not isinstance(data, dict):
        raise ValueError(f"not a JSON object: {raw[:200]!r}")  # noqa: TRY004 - → bad_response
    return data


def _missing_model(experiment: Experiment) -> ConfigError:
    return ConfigError(
        f"experiments ({experiment.name}) names no Bedrock model",
        key=f"experiments ({experiment.name}).ep_name",
        fix="set ep_name (FMBench) or bedrock.model_id to a model id, inference profile or "
        "provisioned-throughput ARN",
    )


def _unknown_body(experiment: Experiment, model_id: str, name: str | None) -> ConfigError:
    what = f"unknown InvokeModel body format '{name}'" if name else (
        f"cannot tell the InvokeModel body format of '{model_id}'")
    return ConfigError(
        what,
        key=f"experiments ({experiment.name}).bedrock.body_format",
        fix=f"set bedrock.body_format to one of: {', '.join(body_format_names())}, "
        "or use bedrock.api: converse",
    )
