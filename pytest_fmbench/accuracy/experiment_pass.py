"""The ``<experiment>-accuracy`` item: the run's side of the accuracy pass."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pytest_fmbench.accuracy.answers import Question, answers_path, collect_answers, references_of
from pytest_fmbench.accuracy.settings import resolve
from pytest_fmbench.data.payloads import load_payloads
from pytest_fmbench.endpoints.base import Endpoint
from pytest_fmbench.load.records import RequestRecord

if TYPE_CHECKING:
    from pytest_fmbench.cases import Case
    from pytest_fmbench.run import BenchmarkRun, CaseResult


def run_accuracy_pass(run: BenchmarkRun, case: Case, endpoint: Endpoint) -> CaseResult:
    """Every prompt of the experiment's payload files sent once; the answers saved for the
    controller. Its requests are not load records: they never enter the metrics."""
    from pytest_fmbench.load.summary import case_summary
    from pytest_fmbench.run import CaseResult

    settings = resolve(run.config)
    experiment = run.config.experiment(case.experiment)
    records = run.dataset_records()
    by_id = {str(r.get("_id", i)): r for i, r in enumerate(records)}
    paths = run.payload_paths()
    questions = []
    for payload_file in experiment.payload_files:
        if payload_file not in paths:
            continue
        payloads = load_payloads(paths[payload_file])[:settings.max_items_per_payload_file]
        for payload in payloads:
            record = by_id.get(payload.id, {})
            questions.append(Question(
                payload_file, payload.id, payload.prompt, payload.prompt_tokens,
                str(record.get(settings.question_key) or ""),
                references_of(record, settings.ground_truth_key),
                str(record["dataset"]) if record.get("dataset") else None,
                tuple(str(c) for c in record.get("all_classes") or ())))
    parameters = {**run.config.parameters_for(experiment), **settings.parameters}
    results = collect_answers(endpoint, experiment.name, questions, parameters,
                              answers_path(run.results_dir, run.worker), settings.concurrency)
    rows = [RequestRecord(run_id=run.run_id, experiment=experiment.name,
                          payload_file=q.payload_file, concurrency=1, case_id=case.id,
                          request_id=index, scheduled_ns=r.sent_ns, sent_ns=r.sent_ns,
                          last_byte_ns=r.last_byte_ns, first_token_ns=r.first_token_ns,
                          prompt_tokens=r.prompt_tokens, completion_tokens=r.completion_tokens,
                          token_source=r.token_source, error=r.error, worker=run.worker)
            for index, (q, r) in enumerate(results)]
    run.log(f"[fmbench] {case.id}: {len(rows)} answers kept for scoring and judging "
            f"({sum(1 for r in rows if r.error)} failed, counted apart)")
    return CaseResult(case, rows, case_summary(rows))
