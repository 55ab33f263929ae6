"""Shared pieces of the AWS tests: configs, endpoint objects and calls against local servers."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path
from typing import Any

from pytest_fmbench.config.model import Config
from pytest_fmbench.endpoints.base import InferenceRequest, InferenceResult
from pytest_fmbench.endpoints.registry import EndpointContext

ROLE = "arn:aws:iam::123456789012:role/fmbench-test"
PROMPT = "Answer the question from the context. " * 6


def bench_config(*experiments: dict[str, Any], timeout_s: float = 5.0,
                 parameters: dict[str, dict[str, Any]] | None = None,
                 aws: dict[str, Any] | None = None) -> Config:
    return Config.model_validate({
        "aws": aws or {"region": "us-east-1", "sagemaker_execution_role": ROLE},
        "datasets": {"filters": [{"payload_file": "p.jsonl"}]},
        "inference_parameters": parameters or {
            "tgi": {"max_new_tokens": 8, "details": True}, "plain": {"max_new_tokens": 8},
            "bedrock": {"max_tokens": 8, "temperature": 0.1, "caching": False}},
        "load": {"request_timeout_s": timeout_s},
        "experiments": [{"payload_files": ["p.jsonl"], "concurrency_levels": [4], **e}
                        for e in experiments],
    })


def context(log: list[str] | None = None, *, run_id: str = "20250101T000000-test",
            count_tokens: Any = None) -> EndpointContext:
    sink = log if log is not None else []
    return EndpointContext(run_id, Path("/nonexistent"), sink.append, count_tokens)


def invoke_all(endpoint: Any, requests: list[InferenceRequest]) -> list[InferenceResult]:
    """All requests at once through one client, as a wave does."""

    async def go() -> list[InferenceResult]:
        client = endpoint.client()
        try:
            return list(await asyncio.gather(*(client.invoke(r) for r in requests)))
        finally:
            await client.aclose()

    return asyncio.run(go())


def request(parameters: dict[str, Any] | None = None) -> InferenceRequest:
    return InferenceRequest(PROMPT, parameters or {}, prompt_tokens=48)


def reset_moto(url: str) -> None:
    urllib.request.urlopen(urllib.request.Request(f"{url}/moto-api/reset", method="POST")).read()


def moto_inventory(sagemaker: Any) -> dict[str, list[str]]:
    """Every endpoint, endpoint config and model moto holds."""
    return {
        "endpoints": sorted(e["EndpointName"] for e in sagemaker.list_endpoints()["Endpoints"]),
        "configs": sorted(c["EndpointConfigName"]
                          for c in sagemaker.list_endpoint_configs()["EndpointConfigs"]),
        "models": sorted(m["ModelName"] for m in sagemaker.list_models()["Models"]),
    }


def create_byo_endpoint(sagemaker: Any, name: str) -> None:
    """An endpoint that exists before the run (moto accepts ml.g4dn.* / ml.p3.*)."""
    sagemaker.create_model(ModelName=name, ExecutionRoleArn=ROLE,
                           PrimaryContainer={"Image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/byo:1"})
    sagemaker.create_endpoint_config(EndpointConfigName=name, ProductionVariants=[{
        "VariantName": "AllTraffic", "ModelName": name, "InitialInstanceCount": 1,
        "InstanceType": "ml.g4dn.xlarge"}])
    sagemaker.create_endpoint(EndpointName=name, EndpointConfigName=name)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
