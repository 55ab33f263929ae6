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
    return evaluate(config, settings, results_dir, run_id=run_id, log=log)


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
