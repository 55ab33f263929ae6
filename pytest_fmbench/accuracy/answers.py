"""The accuracy pass of one experiment: each prompt sent once, its answer kept.

Runs as its own collected item (``<experiment>-accuracy``, marker ``fmbench_accuracy``)
after the experiment's load cases, on the endpoint they measured, so answers never share the
endpoint with a measurement. Answers go to ``accuracy/answers*.jsonl`` in the results dir
(one file per process, appended); scoring and judging happen at session finish on the
controller (``accuracy.phase``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pytest_fmbench.endpoints.base import Endpoint, InferenceRequest, InferenceResult, KeepsText

ANSWERS_DIR = "accuracy"


@dataclasses.dataclass(frozen=True)
class Question:
    payload_file: str
    item: str                      # the payload's id (the dataset record's _id)
    prompt: str
    prompt_tokens: int | None
    question: str
    references: tuple[str, ...]
    dataset: str | None
    all_classes: tuple[str, ...] = ()


def references_of(record: Mapping[str, Any], key: str) -> tuple[str, ...]:
    """The reference answers of a dataset record: a list kept as a list (never joined with
    "," as FMBench does), a scalar as one answer; missing → none."""
    value = record.get(key)
    if value is None:
        return ()
    if isinstance(value, (list, tuple)):
        return tuple(str(v) for v in value if v is not None)
    return (str(value),)


def answers_path(results_dir: Path, worker: str) -> Path:
    return results_dir / ANSWERS_DIR / (f"answers-{worker}.jsonl" if worker else "answers.jsonl")


def collect_answers(endpoint: Endpoint, experiment: str, questions: Sequence[Question],
                    parameters: dict[str, Any], out: Path,
                    concurrency: int = 4) -> list[tuple[Question, InferenceResult]]:
    """Send every question once (``concurrency`` at a time), append one answer line each."""
    max_tokens = parameters.get("max_tokens") or parameters.get("max_new_tokens")

    async def run() -> list[tuple[Question, InferenceResult]]:
        client = endpoint.client()
        if isinstance(client, KeepsText):
            client.keep_text = True
        semaphore = asyncio.Semaphore(max(1, concurrency))

        async def one(q: Question) -> tuple[Question, InferenceResult]:
            async with semaphore:
                return q, await client.invoke(InferenceRequest(q.prompt, parameters, q.prompt_tokens))

        try:
            return list(await asyncio.gather(*(one(q) for q in questions)))
        finally:
            await client.aclose()

    results = asyncio.run(run())
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a", encoding="utf-8") as handle:
        for q, result in results:
            # No finish_reason reaches us from every backend: an answer that used the whole
            # max_tokens allowance is flagged as (probably) cut off.
            truncated = bool(max_tokens and result.completion_tokens
                             and result.completion_tokens >= int(max_tokens))
            handle.write(json.dumps({
                "experiment": experiment, "payload_file": q.payload_file, "item": q.item,
                "question": q.question, "references": list(q.references), "dataset": q.dataset,
                "all_classes": list(q.all_classes), "answer": result.text,
                "error": result.error, "truncated": truncated,
                "prompt_tokens": result.prompt_tokens,
                "completion_tokens": result.completion_tokens,
                "latency_s": (result.last_byte_ns - result.sent_ns) / 1e9,
            }, ensure_ascii=False) + "\n")
    return results


def read_answers(results_dir: Path) -> list[dict[str, Any]]:
    rows = []
    for path in sorted((results_dir / ANSWERS_DIR).glob("answers*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                rows.append(json.loads(line))
    return rows
