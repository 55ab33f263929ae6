"""What the plugin does with prices, budgets and the report, without pytest.

- ``prepare`` at configure time: every needed price known, every budget valid (ConfigError
  otherwise, before anything is deployed);
- ``case_violations`` for gate mode ``every``: one case's records judged by the same code;
- ``finish`` at session end on the controller: report + verdict, never raising;
- ``summary_lines`` for the terminal summary.
"""

from __future__ import annotations

import dataclasses
import math
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pytest_fmbench.budgets import (
    GATE_MODES,
    BudgetSet,
    GateMode,
    Violation,
    budget_set,
    format_value,
    require_prices,
)
from pytest_fmbench.budgets import (
    case_violations as _violations,
)
from pytest_fmbench.cases import payload_stem
from pytest_fmbench.config.model import Config, Experiment
from pytest_fmbench.config.pricing import Price, check_prices
from pytest_fmbench.errors import ConfigError
from pytest_fmbench.load.records import RequestRecord
from pytest_fmbench.metrics import compute_metrics
from pytest_fmbench.report.history import Threshold

SUMMARY_ROWS = 40


@dataclasses.dataclass
class ReportSettings:
    prices: dict[str, Price | None]
    budgets: BudgetSet
    mode: GateMode
    # Regressions against an earlier run (``--fmbench-compare``, ``--fmbench-compare-fail``).
    baseline: Path | None = None
    # The baseline's metrics, read when the run starts: a fixed results dir is overwritten.
    baseline_metrics: dict[str, dict[str, Any]] | None = None
    thresholds: list[Threshold] = dataclasses.field(default_factory=list)


def prepare(config: Config, cli_budgets: Sequence[str] = (), mode: str | None = None,
            experiments: Sequence[Experiment] | None = None) -> ReportSettings:
    """Prices (of ``experiments``, all by default) and budgets, checked before deploying.

    The plugin passes no experiments at configure time (budgets only, no price lookups) and
    prices the selected ones later (``selection.check_selected``).
    """
    mode = mode or "best"
    if mode not in GATE_MODES:
        raise ConfigError(f"unknown gate mode '{mode}'", key="--fmbench-gate",
                          fix=f"use one of: {', '.join(GATE_MODES)}")
    prices = check_prices(config, experiments)
    budgets = budget_set(config, cli_budgets)
    require_prices(config, budgets, prices, experiments)
    return ReportSettings(prices, budgets, mode)  # type: ignore[arg-type]


def case_violations(settings: ReportSettings, config: Config, records: Sequence[RequestRecord],
                    telemetry: Mapping[str, float] | None = None) -> list[Violation]:
    """Gate mode ``every``: the budget violations of one case, from its own records (and its
    telemetry aggregates, ``CaseResult.telemetry``)."""
    if not records or settings.budgets.empty:
        return []
    from pytest_fmbench.report import experiment_info
    from pytest_fmbench.telemetry.definitions import TELEMETRY_METRIC_NAMES

    experiment = records[0].experiment
    metrics = compute_metrics(records, prices={experiment: settings.prices.get(experiment)},
                              info=experiment_info(config), slos=settings.budgets.slos([experiment]))
    for name in TELEMETRY_METRIC_NAMES:
        metrics[name] = (telemetry or {}).get(name, math.nan)
    return _violations(metrics, settings.budgets)


def case_failure_message(violations: Sequence[Violation]) -> str:
    head = f"{len(violations)} budget violation{'s' if len(violations) != 1 else ''}:"
    return "\n".join([head, *(f"  {v.line()}" for v in violations)])


@dataclasses.dataclass
class SessionReport:
    """The outcome at session end: what the terminal summary shows and the exit status needs."""

    passed: bool
    ran: bool
    report_path: Path | None = None
    lines: list[str] = dataclasses.field(default_factory=list)
    error: str | None = None
    # Endpoints whose teardown failed (``BenchmarkRun.left_running``): they fail the run.
    left_running: list[dict[str, Any]] = dataclasses.field(default_factory=list)


def finish(results_dir: Path, config: Config, settings: ReportSettings,
           meta: Mapping[str, Any] | None = None, *,
           missing_cases: Sequence[str] = (), stopped: Sequence[str] = (),
           left_running: Sequence[dict[str, Any]] = (),
           sources: Sequence[Path] | None = None) -> SessionReport:
    """Build the report and judge the budgets; never raises (records are never touched).

    ``missing_cases``: selected cases that never completed (a crashed worker, a failed
    deploy, the spend limit); they are named in the report and fail the gate. ``stopped``:
    why the run stopped starting cases (``--fmbench-max-cost``). ``left_running``:
    endpoints whose teardown failed; they fail the run, loudly. ``sources``: the results
    dirs whose records make the report (``merge``), ``results_dir`` alone by default.
    """
    outcome = _finish(results_dir, config, settings, meta, sources)
    if left_running:
        mark_left_running(outcome, results_dir, left_running)
    extra: list[str] = [f"STOPPED: {reason}" for reason in dict.fromkeys(stopped)]
    if outcome.ran:
        from pytest_fmbench.report.markdown import compatibility_notes

        notes = compatibility_notes(config)
        # The report already has them in its own section: the terminal gets them here.
        outcome.lines[-1:-1] = ["", "FMBench compatibility:", *(f"  {n}" for n in notes)] if notes else []
    if missing_cases:
        outcome.passed = False
        extra += [f"missing cases ({len(missing_cases)}): not measured to the end",
                  *(f"  {case}" for case in missing_cases)]
    if outcome.ran and settings.baseline is not None:
        extra += _comparison(results_dir, settings, outcome)
    if extra:
        outcome.lines[-1:-1] = ["", *extra]
        _append_to_report(outcome.report_path, missing_cases, extra)
    return outcome


def left_running_lines(items: Sequence[dict[str, Any]]) -> list[str]:
    """The block naming each resource still running and the command that deletes it."""
    if not items:
        return []
    head = f"ENDPOINT STILL RUNNING ({len(items)}): teardown failed, it may still be billing;"
    lines = [head + " delete it with:"]
    for item in items:
        lines.append(f"  {item['experiment']}: {item['resources']}")
        lines.append(f"    error: {item['error']}")
        lines += [f"    $ {command}" for command in item.get("commands") or []]
    return lines


def mark_left_running(outcome: SessionReport, results_dir: Path,
                      items: Sequence[dict[str, Any]]) -> None:
    """Fail the run and name what is left: summary lines, report.md, results.json."""
    outcome.passed = False
    outcome.left_running = [dict(item) for item in items]
    block = left_running_lines(items)
    outcome.lines[:0] = [*block, ""]
    try:
        _record_left_running(results_dir, outcome.report_path, outcome.left_running, block)
    except (OSError, ValueError) as exc:  # never raise at session end
        outcome.lines.append(f"could not record the endpoints left running: {exc}")


def _record_left_running(results_dir: Path, report_path: Path | None,
                         items: list[dict[str, Any]], block: list[str]) -> None:
    import json

    results = results_dir / "results.json"
    data: dict[str, Any] = {}
    if results.exists():
        data = json.loads(results.read_text(encoding="utf-8"))
    data["endpoints_left_running"] = items
    results_dir.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    if report_path is not None and report_path.exists():
        section = ["", "## Endpoints left running", "",
                   "Their teardown failed: they may still be running and billing. Delete them:",
                   "", "```text", *block, "```", ""]
        with open(report_path, "a", encoding="utf-8") as handle:
            handle.write("\n".join(section))


def _comparison(results_dir: Path, settings: ReportSettings, outcome: SessionReport) -> list[str]:
    from pytest_fmbench.report.history import BENCHMARK_FILE, compare, load_baseline

    assert settings.baseline is not None
    try:
        current = load_baseline(results_dir / BENCHMARK_FILE)
        baseline = settings.baseline_metrics
        if baseline is None:
            baseline = load_baseline(settings.baseline)
        changes, unmatched = compare(current, baseline, settings.thresholds)
    except ConfigError as exc:
        outcome.passed = False
        return [f"comparison failed: {exc.render()}"]
    regressions = [c for c in changes if c.regressed]
    lines = [(f"compared with {settings.baseline}: {len(regressions)} regression(s) "
              f"in {len({c.case for c in changes})} common case(s)")]
    lines += [f"  REGRESSION {c.line()}" for c in regressions]
    lines += [f"  not judged: {c.line()}" for c in changes if c.verdict == "too few requests"]
    if unmatched:
        lines.append(f"  not in both runs: {', '.join(unmatched)}")
    if regressions:
        outcome.passed = False
    return lines


def _append_to_report(report_path: Path | None, missing: Sequence[str], lines: Sequence[str]) -> None:
    if report_path is None or not report_path.exists():
        return
    section = ["", "## Missing cases and comparison", "",
               ("Cases selected for this run that were not measured to the end (a crashed worker, "
                "a failed deploy) fail the gate; so do regressions beyond the "
                "`--fmbench-compare-fail` thresholds."), "", "```text", *lines, "```", ""]
    with open(report_path, "a", encoding="utf-8") as handle:
        handle.write("\n".join(section))


def _finish(results_dir: Path, config: Config, settings: ReportSettings,
            meta: Mapping[str, Any] | None = None,
            sources: Sequence[Path] | None = None) -> SessionReport:
    from pytest_fmbench.report import analyze, write_report

    try:
        analysis = analyze(results_dir, config, settings.prices, settings.budgets, settings.mode,
                           sources=sources)
    except Exception as exc:  # noqa: BLE001 - a report bug must not hide the run's outcome
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        # A run whose report cannot be built fails, budgets or not: CI must not pass blind.
        return SessionReport(
            passed=False, ran=True, error=f"could not compute metrics from {results_dir}: {detail}",
            lines=[f"report failed: {detail}", f"records are intact in {results_dir}",
                   "the report could not be built: failing the run"])
    if analysis.requests == 0:
        return SessionReport(passed=True, ran=False, lines=["no request ran: no report written"])
    try:
        outcome = write_report(results_dir, config, settings.prices, settings.budgets, analysis, meta)
        report_path, errors = outcome.report_path, outcome.errors
    except Exception as exc:  # noqa: BLE001
        report_path, errors = None, [f"{type(exc).__name__}: {exc}"]
    lines = summary_lines(analysis, report_path, errors)
    # Without report.md or results.json there is nothing for CI to read: the run fails.
    essential = [e for e in errors if e.split(":", 1)[0] in ("report.md", "results.json")]
    if report_path is None or essential:
        lines.append("the report could not be built: failing the run")
    return SessionReport(passed=analysis.gate.passed and report_path is not None and not essential,
                         ran=True, report_path=report_path, lines=lines,
                         error="; ".join(errors) or None)


def summary_lines(analysis: Any, report_path: Path | None, errors: Sequence[str] = ()) -> list[str]:
    """The terminal summary: best option, a compact table, the report path, each violation."""
    verdict = analysis.gate
    rec = verdict.recommendation
    metrics = analysis.metrics
    lines: list[str] = []
    best = rec.best
    scope = (f"dataset of interest {rec.dataset_of_interest}" if rec.dataset_of_interest and rec.dataset_matched
             else "all payload files")
    if best is not None:
        lines.append(
            f"best option ({scope}): {best['experiment']} {payload_stem(str(best['payload_file']))} "
            f"c={best['concurrency']}"
            + (f" on {best['instance_type']}" if best.get("instance_type") else "")
            + f": TPM {_num(best.get('transactions_per_minute'))}, latency p95 "
            f"{format_value(best.get('latency_p95'), 's')}, {format_value(best.get('cost_per_10k_txn'), 'USD')} "
            f"per 10k txn")
    else:
        lines.append(f"best option ({scope}): none meets every budget")
        for miss in rec.nearest_misses:
            if miss["experiment"] is None:
                continue
            lines.append(f"  nearest for {miss['metric']}: {format_value(miss['value'], _unit(miss['metric']))} "
                         f"({miss['experiment']} {payload_stem(str(miss['payload_file']))} c={miss['concurrency']})")
    lines.append(f"budget gate ({verdict.mode}): {'PASSED' if verdict.passed else 'FAILED'}: {verdict.summary}")
    lines.append("")
    header = ["experiment", "payload", "c/level", "req", "err %", "p95 s", "TTFT p95 s", "TPM", "USD/10k", "budgets"]
    bad: dict[tuple[str, str, int, str], list[str]] = {}
    for violation in verdict.violations:
        bad.setdefault((violation.experiment, violation.payload_file, violation.concurrency,
                        violation.level), []).append(violation.metric)
    rows = []
    for row in metrics.head(SUMMARY_ROWS).to_dict("records"):
        level = str(row.get("level") or "")
        key = (row["experiment"], row["payload_file"], int(row["concurrency"]), level)
        rows.append([row["experiment"], payload_stem(row["payload_file"]),
                     level or f"c{int(row['concurrency'])}",
                     str(int(row["requests"])), _num(row["error_rate"] * 100, 1), _num(row["latency_p95"], 3),
                     _num(row["ttft_p95"], 3), _num(row["transactions_per_minute"], 1),
                     _num(row["cost_per_10k_txn"], 3),
                     "ok" if key not in bad else "VIOLATES " + ",".join(bad[key])])
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) if rows else len(header[i]) for i in range(len(header))]
    lines.append("  ".join(h.ljust(widths[i]) for i, h in enumerate(header)).rstrip())
    for r in rows:
        lines.append("  ".join(v.rjust(widths[i]) if 2 <= i <= 8 else v.ljust(widths[i])
                               for i, v in enumerate(r)).rstrip())
    if len(metrics) > SUMMARY_ROWS:
        lines.append(f"... {len(metrics) - SUMMARY_ROWS} more combinations in the report")
    if verdict.violations:
        lines.append("")
        lines.append(f"violations ({len(verdict.violations)}):")
        lines += [f"  {v.line()}" for v in verdict.violations]
    lines.append("")
    cost = analysis.total_cost
    if not math.isnan(cost):
        lines.append(f"cost of the run: {format_value(cost, 'USD')} ({len(analysis.costs)} experiments)")
    for error in errors:
        lines.append(f"report part failed: {error}")
    lines.append(f"report: {report_path}" if report_path else "report: not written")
    return lines


def _unit(metric: str) -> str:
    from pytest_fmbench.metrics import METRICS

    return METRICS[metric].unit


def _num(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{float(value):.{digits}f}"
