"""The load engine and the OpenAI client against a real server: ``transformers serve``.

One short test (a few requests): the client's parsing fast path and server usage on real
chunks, through the concurrency and rate patterns.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("fastapi")

from pytest_fmbench.endpoints.base import InferenceRequest
from pytest_fmbench.endpoints.local_model import LocalServer, ModelSpec, ensure_model
from pytest_fmbench.endpoints.openai_http import OpenAIClient
from pytest_fmbench.load.engine import RecordContext, run_load
from pytest_fmbench.load.patterns import LoadPlan
from pytest_fmbench.load.records import RequestRecord


def test_patterns_and_client_against_transformers_serve(tmp_path: Path) -> None:
    model_dir = ensure_model(ModelSpec("tiny"))
    prompts = [InferenceRequest(f"Once upon a time there was a {word} who", {"max_new_tokens": 8},
                                prompt_tokens=10) for word in ("king", "cat", "ship")]
    with LocalServer(model_dir, log_path=tmp_path / "serve.log") as server:
        assert server.url is not None
        runs = {
            "completions": LoadPlan("concurrency", 2, requests=4, timeout_s=60),
            "chat": LoadPlan("rate", 2, requests=3, rate=20.0, arrival="constant", timeout_s=60),
        }
        for api, plan in runs.items():
            records: list[RequestRecord] = []
            run_load(plan, lambda api=api: OpenAIClient(server.url, api=api, model=server.model_id,
                                                        timeout_s=60),
                     prompts, RecordContext("r", "local", "p", plan.concurrency, api), records.append)
            assert len(records) == plan.requests, api
            for record in records:
                assert record.error == "", (api, record.error_detail)
                assert record.token_source == "server"
                assert record.completion_tokens is not None and 1 <= record.completion_tokens <= 8
                assert record.prompt_tokens is not None and record.prompt_tokens > 5
                assert record.first_token_ns is not None
                assert record.sent_ns < record.first_token_ns <= record.last_byte_ns
                assert len(record.itl_us) == record.completion_tokens - 1  # a token per chunk
                assert record.scheduled_ns <= record.sent_ns
