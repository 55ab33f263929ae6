"""Bedrock request shapes: Converse parameters, and InvokeModel bodies per model family.

FMBench parameter sets are written loosely (``max_tokens`` / ``max_new_tokens`` /
``max_gen_len``, ``top_p`` / ``topP``, ``stop``); ``normalize_parameters`` reads them once,
and each shape writes them the way its API wants. Keys that only mean something to FMBench
(``caching``, ``use_boto3``, ...) are dropped; other unknown keys are dropped and reported.

InvokeModel bodies (``bedrock.api: invoke``) are model-specific; the family comes from
``bedrock.body_format`` or the model id (``anthropic.``, ``meta.``, ``mistral.``,
``amazon.titan``, ``amazon.nova``, with or without an inference-profile region prefix).
Register more with ``register_body_format``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from pytest_fmbench.endpoints.sagemaker_formats import Completion

DEFAULT_MAX_TOKENS = 512
_MAX_KEYS = ("max_tokens", "max_new_tokens", "max_gen_len", "maxTokens", "max_tokens_to_sample",
             "maxTokenCount")
_TEMPERATURE_KEYS = ("temperature",)
_TOP_P_KEYS = ("top_p", "topP")
_TOP_K_KEYS = ("top_k", "topK")
_STOP_KEYS = ("stop", "stop_sequences", "stopSequences")
# FMBench / TGI keys with no Bedrock meaning.
FMBENCH_ONLY = frozenset({"caching", "use_boto3", "details", "do_sample", "return_full_text",
                          "stream", "decoder_input_details", "truncate", "watermark"})
_REGION_PREFIX = re.compile(r"^(us|eu|apac|us-gov|global|jp|au|ca)\.")


@dataclass
class Parameters:
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)


def normalize_parameters(parameters: Mapping[str, Any]) -> Parameters:
    result = Parameters()
    for key, value in parameters.items():
        if value is None or key in FMBENCH_ONLY:
            continue
        if key in _MAX_KEYS:
            result.max_tokens = int(value)
        elif key in _TEMPERATURE_KEYS:
            result.temperature = float(value)
        elif key in _TOP_P_KEYS:
            result.top_p = float(value)
        elif key in _TOP_K_KEYS:
            result.top_k = int(value)
        elif key in _STOP_KEYS:
            result.stop = [value] if isinstance(value, str) else [str(v) for v in value]
        else:
            result.unknown.append(key)
    return result


def converse_inference_config(p: Parameters) -> dict[str, Any]:
    config: dict[str, Any] = {}
    if p.max_tokens is not None:
        config["maxTokens"] = p.max_tokens
    if p.temperature is not None:
        config["temperature"] = p.temperature
    if p.top_p is not None:
        config["topP"] = p.top_p
    if p.stop:
        config["stopSequences"] = p.stop
    return config


def model_family(model_id: str) -> str | None:
    """``us.anthropic.claude-...`` → ``anthropic``; ARNs by their last part; None if unknown."""
    tail = model_id.rsplit("/", 1)[-1] if model_id.startswith("arn:") else model_id
    tail = _REGION_PREFIX.sub("", tail.lower())
    provider = tail.split(".", 1)[0]
    if provider == "amazon":
        if "nova" in tail:
            return "nova"
        if "titan" in tail:
            return "titan"
        return None
    return provider if provider in _BODY_FORMATS else None


def is_provisioned(model_id: str) -> bool:
    return ":provisioned-model/" in model_id


# -- InvokeModel body formats ------------------------------------------------------------

class BodyFormat(Protocol):
    name: str

    def body(self, prompt: str, p: Parameters) -> dict[str, Any]: ...

    def parse(self, data: dict[str, Any]) -> Completion: ...

    def chunk(self, data: dict[str, Any], completion: Completion) -> str | None:
        """Content text in one streamed chunk; updates token counts on ``completion``."""
        ...


def _put(body: dict[str, Any], key: str, value: Any) -> None:
    if value is not None and value != []:
        body[key] = value


class AnthropicBody:
    name = "anthropic"

    def body(self, prompt: str, p: Parameters) -> dict[str, Any]:
        body: dict[str, Any] = {
            "anthropic_version": "bedrock-2023-05-31",
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": p.max_tokens or DEFAULT_MAX_TOKENS,
        }
        _put(body, "temperature", p.temperature)
        _put(body, "top_p", p.top_p)
        _put(body, "top_k", p.top_k)
        _put(body, "stop_sequences", p.stop)
        return body

    def parse(self, data: dict[str, Any]) -> Completion:
        text = "".join(part.get("text", "") for part in data.get("content", [])
                       if isinstance(part, dict) and part.get("type", "text") == "text")
        usage = data.get("usage") or {}
        return Completion(text=text, prompt_tokens=usage.get("input_tokens"),
                          completion_tokens=usage.get("output_tokens"), finished=True)

    def chunk(self, data: dict[str, Any], completion: Completion) -> str | None:
        kind = data.get("type")
        if kind == "content_block_delta":
            return (data.get("delta") or {}).get("text") or None
        if kind == "message_start":
            usage = (data.get("message") or {}).get("usage") or {}
            completion.prompt_tokens = usage.get("input_tokens", completion.prompt_tokens)
        elif kind == "message_delta":
            usage = data.get("usage") or {}
            completion.completion_tokens = usage.get("output_tokens", completion.completion_tokens)
        elif kind == "message_stop":
            completion.finished = True
        return None


class MetaBody:
    name = "meta"

    def body(self, prompt: str, p: Parameters) -> dict[str, Any]:
        body: dict[str, Any] = {"prompt": prompt}
        _put(body, "max_gen_len", p.max_tokens)
        _put(body, "temperature", p.temperature)
        _put(body, "top_p", p.top_p)
        return body

    def parse(self, data: dict[str, Any]) -> Completion:
        return Completion(text=str(data.get("generation") or ""),
                          prompt_tokens=data.get("prompt_token_count"),
                          completion_tokens=data.get("generation_token_count"), finished=True)

    def chunk(self, data: dict[str, Any], completion: Completion) -> str | None:
        if isinstance(data.get("prompt_token_count"), int):
            completion.prompt_tokens = data["prompt_token_count"]
        if isinstance(data.get("generation_token_count"), int):
            completion.completion_tokens = data["generation_token_count"]
        if data.get("stop_reason"):
            completion.finished = True
        return data.get("generation") or None


class MistralBody:
    name = "mistral"

    def body(self, prompt: str, p: Parameters) -> dict[str, Any]:
        body: dict[str, Any] = {"prompt": prompt}
        _put(body, "max_tokens", p.max_tokens)
        _put(body, "temperature", p.temperature)
        _put(body, "top_p", p.top_p)
        _put(body, "top_k", p.top_k)
        _put(body, "stop", p.stop)
        return body

    def parse(self, data: dict[str, Any]) -> Completion:
        outputs = data.get("outputs") or [{}]
        return Completion(text=str(outputs[0].get("text") or ""), finished=True)

    def chunk(self, data: dict[str, Any], completion: Completion) -> str | None:
        outputs = data.get("outputs") or [{}]
        if outputs[0].get("stop_reason"):
            completion.finished = True
        return outputs[0].get("text") or None


class TitanBody:
    name = "titan"

    def body(self, prompt: str, p: Parameters) -> dict[str, Any]:
        config: dict[str, Any] = {}
        _put(config, "maxTokenCount", p.max_tokens)
        _put(config, "temperature", p.temperature)
        _put(config, "topP", p.top_p)
        _put(config, "stopSequences", p.stop)
        body: dict[str, Any] = {"inputText": prompt}
        if config:
            body["textGenerationConfig"] = config
        return body

    def parse(self, data: dict[str, Any]) -> Completion:
        results = data.get("results") or [{}]
        return Completion(text=str(results[0].get("outputText") or ""),
                          prompt_tokens=data.get("inputTextTokenCount"),
                          completion_tokens=results[0].get("tokenCount"), finished=True)

    def chunk(self, data: dict[str, Any], completion: Completion) -> str | None:
        if isinstance(data.get("inputTextTokenCount"), int):
            completion.prompt_tokens = data["inputTextTokenCount"]
        if isinstance(data.get("totalOutputTextTokenCount"), int):
            completion.completion_tokens = data["totalOutputTextTokenCount"]
        if data.get("completionReason"):
            completion.finished = True
        return data.get("outputText") or None


class NovaBody:
    name = "nova"

    def body(self, prompt: str, p: Parameters) -> dict[str, Any]:
        config: dict[str, Any] = {}
        _put(config, "max_new_tokens", p.max_tokens)
        _put(config, "temperature", p.temperature)
        _put(config, "top_p", p.top_p)
        _put(config, "top_k", p.top_k)
        _put(config, "stopSequences", p.stop)
        body: dict[str, Any] = {"schemaVersion": "messages-v1",
                                "messages": [{"role": "user", "content": [{"text": prompt}]}]}
        if config:
            body["inferenceConfig"] = config
        return body

    def parse(self, data: dict[str, Any]) -> Completion:
        message = (data.get("output") or {}).get("message") or {}
        text = "".join(p.get("text", "") for p in message.get("content", []) if isinstance(p, dict))
        usage = data.get("usage") or {}
        return Completion(text=text, prompt_tokens=usage.get("inputTokens"),
                          completion_tokens=usage.get("outputTokens"), finished=True)

    def chunk(self, data: dict[str, Any], completion: Completion) -> str | None:
        if "contentBlockDelta" in data:
            return ((data["contentBlockDelta"] or {}).get("delta") or {}).get("text") or None
        if "metadata" in data:
            usage = (data["metadata"] or {}).get("usage") or {}
            completion.prompt_tokens = usage.get("inputTokens", completion.prompt_tokens)
            completion.completion_tokens = usage.get("outputTokens", completion.completion_tokens)
        if "messageStop" in data:
            completion.finished = True
        return None


_BODY_FORMATS: dict[str, Callable[[], BodyFormat]] = {
    "anthropic": AnthropicBody, "meta": MetaBody, "mistral": MistralBody,
    "titan": TitanBody, "nova": NovaBody,
}


def register_body_format(name: str, factory: Callable[[], BodyFormat]) -> None:
    _BODY_FORMATS[name] = factory


def body_format_names() -> list[str]:
    return sorted(_BODY_FORMATS)


def get_body_format(name: str) -> BodyFormat:
    return _BODY_FORMATS[name]()


def apply_invocation_metrics(data: Mapping[str, Any], completion: Completion) -> None:
    """Bedrock's own counts, sent in the last chunk of every InvokeModel stream."""
    metrics = data.get("amazon-bedrock-invocationMetrics")
    if isinstance(metrics, Mapping):
        if isinstance(metrics.get("inputTokenCount"), int):
            completion.prompt_tokens = metrics["inputTokenCount"]
        if isinstance(metrics.get("outputTokenCount"), int):
            completion.completion_tokens = metrics["outputTokenCount"]
