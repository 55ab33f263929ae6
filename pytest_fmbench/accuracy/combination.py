"""``accuracy.per_combination``: the answers of every load case kept and scored per
combination (experiment × payload file × concurrency), so accuracy under load and
"completion drift" (distinct answers to one prompt) are visible.

Off by default: the load path then decodes every answer's text (a cost per chunk the
measurement otherwise avoids). The answers never enter the request records; a thin client
proxy collects them in this process, so it applies to in-process loads only
(``load.processes`` 1).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_fmbench.accuracy.answers import ANSWERS_DIR, references_of
from pytest_fmbench.accuracy.settings import resolve
from pytest_fmbench.endpoints.base import (
    EndpointClient,
    EnforcesTimeout,
    InferenceRequest,
    InferenceResult,
    KeepsText,
)

if TYPE_CHECKING:
    from pytest_fmbench.cases import Case
    from pytest_fmbench.run import BenchmarkRun

Tapped = list[tuple[str, str, str]]  # (payload id, answer text, error)
# Reference answers per run, built once per process (run id → payload id → references).
_REFERENCES: dict[str, dict[str, tuple[str, ...]]] = {}


class AnswerTap:
    """An ``EndpointClient`` that hands each answer to a list and otherwise changes nothing."""

    def __init__(self, inner: EndpointClient, sink: Tapped) -> None:
        self.inner = inner
        self.sink = sink
        # Keep the engine's timeout decision as it is for the real client.
        self.enforces_timeout = isinstance(inner, EnforcesTimeout) and inner.enforces_timeout
        if isinstance(inner, KeepsText):
            inner.keep_text = True

    async def invoke(self, request: InferenceRequest) -> InferenceResult:
        result = await self.inner.invoke(request)
        self.sink.append((request.payload_id, result.text, result.error))
        return result

    async def aclose(self) -> None:
        await self.inner.aclose()


def answer_tap(run: BenchmarkRun, case: Case, processes: int,
               make_client: Callable[[], EndpointClient]
               ) -> tuple[Callable[[], EndpointClient], Callable[[], None]]:
    """The client factory for this case and what saves its answers after the load."""
    settings = resolve(run.config)
    if not (settings.enabled and settings.per_combination) or processes > 1:
        return make_client, lambda: None
    tapped: Tapped = []

    def save() -> None:
        references = _references(run, settings.ground_truth_key)
        by_item: dict[str, Counter[str]] = defaultdict(Counter)
        errors: Counter[str] = Counter()
        for item, text, error in tapped:
            if error:
                errors[item] += 1
            else:
                by_item[item][text] += 1
        out = run.results_dir / ANSWERS_DIR / (
            f"combinations-{run.worker}.jsonl" if run.worker else "combinations.jsonl")
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "a", encoding="utf-8") as handle:
            for item in sorted(set(by_item) | set(errors)):
                handle.write(json.dumps({
                    "experiment": case.experiment, "payload_file": case.payload_file,
                    "concurrency": case.concurrency, "item": item,
                    "references": list(references.get(item, ())),
                    "answers": dict(by_item[item]), "errors": errors[item]},
                    ensure_ascii=False) + "\n")

    return (lambda: AnswerTap(make_client(), tapped)), save


def _references(run: BenchmarkRun, key: str) -> dict[str, tuple[str, ...]]:
    if run.run_id not in _REFERENCES:
        _REFERENCES[run.run_id] = {str(r.get("_id", i)): references_of(r, key)
                                   for i, r in enumerate(run.dataset_records())}
    return _REFERENCES[run.run_id]


def read_combinations(results_dir: Path) -> list[dict[str, Any]]:
    rows = []
    for path in sorted((results_dir / ANSWERS_DIR).glob("combinations*.jsonl")):
        rows += [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
                 if line.strip()]
    return rows
