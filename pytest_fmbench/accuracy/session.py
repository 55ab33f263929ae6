"""Accuracy at session finish: the controller's one call, and how its outcome joins the
report and the verdict."""

from __future__ import annotations

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


def merge_into_report(outcome: Any, accuracy: AccuracyOutcome) -> None:
    """The accuracy lines into the terminal summary, its section into report.md, its
    verdict into the run's."""
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
