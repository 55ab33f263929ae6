"""Results where CI systems read them: JUnit properties and the GitHub step summary."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pytest_fmbench.report.session import SessionReport

STEP_SUMMARY_ENV = "GITHUB_STEP_SUMMARY"


def junit_properties(summary: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """A case's summary as flat ``fmbench.<name>`` properties (numbers and error counts)."""
    out: list[tuple[str, Any]] = []
    for name, value in summary.items():
        if isinstance(value, dict):
            out += [(f"fmbench.{name}.{k}", v) for k, v in value.items()]
        elif value is not None:
            out.append((f"fmbench.{name}", round(value, 6) if isinstance(value, float) else value))
    return out


def step_summary_markdown(outcome: SessionReport) -> str:
    verdict = "PASSED" if outcome.passed else "FAILED"
    lines = [f"## pytest-fmbench: {verdict}", ""]
    if outcome.report_path is not None:
        lines += [f"Report: `{outcome.report_path}`", ""]
    lines += ["```text", *outcome.lines, "```", ""]
    return "\n".join(lines)


def write_step_summary(outcome: SessionReport, environ: Mapping[str, str] | None = None) -> Path | None:
    """Append the verdict and summary table to ``$GITHUB_STEP_SUMMARY`` when it is set."""
    target = (os.environ if environ is None else environ).get(STEP_SUMMARY_ENV)
    if not target or not (outcome.ran or outcome.error or outcome.left_running):
        return None
    path = Path(target)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(step_summary_markdown(outcome))
    return path
