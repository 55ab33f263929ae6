"""Accuracy at session finish: the controller's one call, and how its outcome joins the
report and the verdict."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pytest_fmbench.accuracy.phase import AccuracyOutcome, evaluate
from pytest_fmbench.accuracy.settings import resolve
from pytest_fmbench.config.model import Config


def cache_dir(rootpath: Path) -> Path:
    """Where the judge cache lives by default: beside pytest's own cache, so it survives
    a new results dir (and CI can persist it like ``.pytest_cache``)."""
    return rootpath / ".pytest_cache" / "fmbench"


def evaluate_run(config: Config, results_dir: Path, run_id: str, rootpath: Path,
                 log: Callable[[str], None]) -> AccuracyOutcome | None:
    settings = resolve(config, cache_dir(rootpath))
    if not settings.enabled:
        if settings.notice:
            log(f"[fmbench] {settings.notice}")
        return None
    try:
        return evaluate(config, settings, results_dir, run_id=run_id, log=log)
    except Exception as exc:  # noqa: BLE001 - accuracy must never cost the performance report
        line = f"[fmbench] ERROR accuracy failed: {type(exc).__name__}: {exc}"
        return AccuracyOutcome([line], ["### Model evaluations", "", line], passed=False)


def cost_per_correct(metrics_rows: list[dict[str, str]],
                     correct_share: dict[tuple[str, str], float]) -> list[dict[str, Any]]:
    """Cost per 10k correct answers per combination = cost_per_10k_txn / share correct
    (its payload file's accuracy); undefined (None) at 0 correct or without a price."""
    rows = []
    for metric in metrics_rows:
        key = (metric.get("experiment_name", ""), metric.get("payload_file", ""))
        share = correct_share.get(key)
        try:
            cost = float(metric.get("cost_per_10k_txn") or "nan")
        except ValueError:
            cost = float("nan")
        if share is None:
            continue
        per_correct = cost / share if share > 0 and not math.isnan(cost) else None
        rows.append({"experiment": key[0], "payload_file": key[1],
                     "concurrency": metric.get("concurrency", ""),
                     "cost_per_10k_txn": None if math.isnan(cost) else cost, "accuracy": share,
                     "cost_per_10k_correct_answers": per_correct})
    return rows


def _cost_section(results_dir: Path, accuracy: AccuracyOutcome) -> list[str]:
    import csv

    from pytest_fmbench.accuracy.answers import ANSWERS_DIR
    from pytest_fmbench.accuracy.phase import _write_csv

    path = results_dir / "all_metrics.csv"
    if not path.exists():
        return []
    with open(path, encoding="utf-8") as handle:
        rows = cost_per_correct(list(csv.DictReader(handle)), accuracy.correct_share)
    if not rows:
        return []
    _write_csv(results_dir / ANSWERS_DIR / "cost_per_10k_correct_answers.csv", rows)

    def money(value: float | None) -> str:
        return "undefined" if value is None else f"{value:.4f}"

    return ["", "#### Cost per 10k correct answers", "",
            f"cost_per_10k_txn / share of correct answers (by {accuracy.correct_by}).", "",
            "| experiment | payload file | concurrency | cost per 10k txn | accuracy | cost per 10k correct |",
            "| --- | --- | --- | --- | --- | --- |",
            *(f"| {r['experiment']} | {r['payload_file']} | {r['concurrency']} | "
              f"{money(r['cost_per_10k_txn'])} | {r['accuracy']:.3f} | "
              f"{money(r['cost_per_10k_correct_answers'])} |" for r in rows)]


def merge_into_report(outcome: Any, accuracy: AccuracyOutcome, results_dir: Path) -> None:
    """The accuracy lines into the terminal summary, its section into report.md (with the
    cost per 10k correct answers, now that the metrics are written), its verdict into the
    run's."""
    try:
        accuracy.markdown += _cost_section(results_dir, accuracy)
    except (OSError, ValueError) as exc:
        accuracy.lines.append(f"[fmbench] accuracy: cost per 10k correct answers failed: {exc}")
    outcome.lines[-1:-1] = ["", *accuracy.lines]
    if not accuracy.passed:
        outcome.passed = False
    path = outcome.report_path
    if path is not None and Path(path).exists():
        with open(path, "a", encoding="utf-8") as handle:
            handle.write("\n" + "\n".join(accuracy.markdown) + "\n")


def rescore_run(config: Config, saved_run: Path, rootpath: Path) -> tuple[list[str], bool]:
    """Score and judge a saved run's answers again (outputs rewritten in its accuracy/ dir);
    the summary lines and whether the accuracy budgets pass."""
    from pytest_fmbench.accuracy.answers import ANSWERS_DIR
    from pytest_fmbench.errors import ConfigError

    if not any((saved_run / ANSWERS_DIR).glob("answers*.jsonl")):
        raise ConfigError("no saved answers to re-score", file=str(saved_run),
                          key="--fmbench-rescore",
                          fix="give the results dir of a run that had an accuracy pass "
                              "(it holds accuracy/answers*.jsonl)")
    settings = resolve(config, cache_dir(rootpath))
    lines: list[str] = []
    outcome = evaluate(config, settings, saved_run, log=lines.append)
    if outcome is None:
        return lines, True
    return [*lines, *outcome.lines], outcome.passed
