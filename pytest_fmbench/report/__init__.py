"""The report of a run: records → metrics, costs, verdicts → report.md, plots, CSV and JSON.

``analyze`` computes everything from the results directory; ``write_report`` writes the
files. Records are only ever read: a report that fails to build (or half-builds) loses
nothing, and can be rebuilt later from the same directory.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from pytest_fmbench import __version__, redaction
from pytest_fmbench.budgets import BudgetSet, GateMode, GateResult, gate
from pytest_fmbench.config.model import Config
from pytest_fmbench.config.pricing import Price
from pytest_fmbench.endpoints.lifecycle import read_endpoint_events
from pytest_fmbench.load.columnar import read_records_table, records_files
from pytest_fmbench.metrics import (
    METRICS,
    ExperimentInfo,
    compute_metrics,
    dataset_of_interest_mask,
    experiment_costs,
    request_frame,
)
from pytest_fmbench.report import exports, history, html, markdown, plots, timeline
from pytest_fmbench.report.workloads import workload_section
from pytest_fmbench.telemetry.report import add_telemetry
from pytest_fmbench.telemetry.report import section as telemetry_section
from pytest_fmbench.telemetry.sampler import read_telemetry

REPORT_FILE = "report.md"
RESULTS_FILE = "results.json"
ALL_METRICS_FILE = "all_metrics.csv"
PER_REQUEST_FILE = "per_inference_request_results.csv"
PLOTS_DIR = "plots"


def experiment_info(config: Config) -> dict[str, ExperimentInfo]:
    return {
        e.name: ExperimentInfo(instance_type=e.instance_type, instance_count=e.instance_count or 1,
                               backend=e.resolved_backend, model_id=e.model_id,
                               endpoint_name=e.ep_name if e.ep_name and "://" not in e.ep_name else None,
                               order=index)
        for index, e in enumerate(config.experiments)
    }


@dataclasses.dataclass
class Analysis:
    records: pa.Table
    frame: pd.DataFrame
    metrics: pd.DataFrame
    costs: pd.DataFrame
    gate: GateResult
    events: list[dict[str, Any]]
    # Load levels (report/levels.py): each level's outcome, each SLO search's result.
    levels: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    searches: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    # telemetry*.jsonl lines (pytest_fmbench.telemetry): samples and each case's sources.
    telemetry: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @property
    def requests(self) -> int:
        return self.records.num_rows

    @property
    def total_cost(self) -> float:
        return float(self.costs["cost"].sum(min_count=1)) if len(self.costs) else float("nan")


def read_events(results_dir: Path) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for path in sorted(results_dir.glob("endpoints*.jsonl")):
        try:
            events += read_endpoint_events(path)
        except (OSError, ValueError):
            continue
    return events


def analyze(results_dir: Path, config: Config, prices: Mapping[str, Price | None], budgets: BudgetSet,
            mode: GateMode = "best", *, records: pa.Table | None = None,
            sources: Sequence[Path] | None = None) -> Analysis:
    """Metrics, costs and the gate verdict of the records in ``results_dir``, or in the
    results dirs ``sources`` (``merge``: several shards' records, one report)."""
    dirs = list(sources) if sources is not None else [results_dir]
    table = records if records is not None else read_records_table(
        [path for folder in dirs for path in records_files(folder)])
    info = experiment_info(config)
    names = [e.name for e in config.experiments]
    frame = request_frame(table) if table.num_rows else pd.DataFrame()
    metrics = compute_metrics(table, prices=prices, info=info, slos=budgets.slos(names),
                              frame=frame if table.num_rows else None)
    telemetry = [line for folder in dirs for line in read_telemetry(folder)]
    metrics = add_telemetry(metrics, telemetry)  # before the gate: budgets may name them
    events = [event for folder in dirs for event in read_events(folder)]
    costs = experiment_costs(table, events, prices, info)
    verdict = gate(metrics, budgets, mode, config.metrics.dataset_of_interest)
    from pytest_fmbench.budgets import search_violations
    from pytest_fmbench.report.levels import read_level_lines, search_results

    levels, raw_searches = read_level_lines(results_dir)
    searches = search_results(raw_searches, metrics)
    missed = search_violations(searches, budgets, names)
    if missed:  # a max_sustainable_rate budget fails the run in either gate mode
        verdict.violations += missed
        verdict.passed = False
        verdict.summary += f"; {len(missed)} SLO search(es) below their max_sustainable_rate budget"
    return Analysis(table, frame, metrics, costs, verdict, events, levels, searches, telemetry)


def versions() -> dict[str, str]:
    out = {"pytest-fmbench": __version__, "python": platform.python_version()}
    for package in ("pytest", "pandas", "numpy", "pyarrow", "matplotlib", "pytest-xdist", "boto3"):
        try:
            out[package] = importlib_metadata.version(package)
        except importlib_metadata.PackageNotFoundError:
            continue
    return out


def glossary() -> str:
    lines = [
        ("Definitions follow the project's METRICS.md; one definition per name, used in every "
        "table, plot, budget and export.\n"),
        ("Per request: **latency** = `last_byte − sent`; **TTFT** = `first_token − sent`; "
        "**TPOT** = `(last_byte − first_token) / (completion_tokens − 1)` for completion_tokens ≥ 2; "
        "**ITL** = each gap between consecutive content chunks, pooled over requests; "
        "**client queue** = `first sent − scheduled` (the client's own lateness; `sent − scheduled` "
        "for a request sent once); **retry wait** = `sent − first sent` (a request retried after "
        "throttling: its earlier attempts and back-off, the server's doing; 0 when sent once). "
        "`sent` is always the final attempt's send. Token counts are server-reported when the backend "
        "gives them, else counted with the configured tokenizer.\n"),
        ("Per combination (experiment × payload file × concurrency), over all its requests, never "
        "averaged over waves. Percentiles: linear interpolation (numpy's default), reported with "
        "the request count.\n"),
        markdown.table(["metric", "unit", "better", "definition"],
                       [[f"`{m.name}`", m.unit, m.better if m.better != "none" else "—", m.definition]
                        for m in METRICS.values() if not m.name.endswith("_count") or m.name == "latency_count"]),
        "",
        ("**Recommendation rule**: a combination meets budgets when every configured budget holds "
        "(error_rate ≤ error budget, latency_p95 ≤ latency budget, cost_per_10k_txn ≤ cost budget, "
        "and any other budget by name; an undefined value never meets a budget). Per experiment and "
        "payload file, the recommended combination is the one meeting budgets with the highest TPM "
        "(ties: lower cost). The best option for the dataset of interest is, among combinations "
        "meeting budgets, the lowest price_per_txn (ties: higher TPM).\n"),
    ]
    return "\n".join(lines)


@dataclasses.dataclass
class ReportOutcome:
    analysis: Analysis
    report_path: Path | None
    files: list[Path]
    errors: list[str]


def run_metadata(results_dir: Path, config: Config, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    run_json = results_dir / "run.json"
    if run_json.is_file():
        try:
            meta.update(json.loads(run_json.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            pass
    meta.setdefault("name", config.general.name)
    meta.setdefault("host", platform.node())
    if config.source_path and config.source_path.is_file():
        from pytest_fmbench.config.loader import config_hash

        meta["config"] = str(config.source_path)
        meta["config_hash"] = config_hash(config.source_path)
    meta["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    meta["versions"] = versions()
    meta.update(extra or {})
    return meta


def write_report(results_dir: Path, config: Config, prices: Mapping[str, Price | None],
                 budgets: BudgetSet, analysis: Analysis, meta: Mapping[str, Any] | None = None) -> ReportOutcome:
    """Write every report file; a part that fails is listed in ``errors``, the rest still written."""
    errors: list[str] = []
    files: list[Path] = []
    info = experiment_info(config)
    meta = redaction.redact(run_metadata(results_dir, config, meta))
    metrics, verdict = analysis.metrics, analysis.gate

    def attempt(label: str, action: Any) -> Any:
        try:
            result = action()
        except Exception as exc:  # noqa: BLE001 - a broken part must not lose the others
            errors.append(f"{label}: {type(exc).__name__}: {exc}")
            return None
        if isinstance(result, Path):
            files.append(result)
        elif isinstance(result, list):
            files.extend(result)
        return result

    attempt(ALL_METRICS_FILE, lambda: exports.write_all_metrics(results_dir / ALL_METRICS_FILE, metrics, verdict.meets))
    # The per-request CSV (a million rows at scale) is written by Arrow on another thread,
    # without the GIL, while the plots draw.
    per_request = ThreadPoolExecutor(1)
    csv_done = per_request.submit(exports.write_per_request, results_dir / PER_REQUEST_FILE, analysis.records, info)

    common = {m: b.threshold for m, b in budgets.common.items()}
    focus = None
    doi = config.metrics.dataset_of_interest
    if doi and len(metrics):
        matched = metrics[dataset_of_interest_mask(metrics, doi)]
        if len(matched):
            focus = str(matched["payload_file"].iloc[0])
    drawn = attempt("plots", lambda: plots.render_all(plots.PlotInputs(
        metrics=metrics, requests=plots.request_sample(analysis.frame) if len(analysis.frame) else analysis.frame,
        latency_quantiles=plots.latency_quantiles(analysis.frame) if len(analysis.frame) else pd.DataFrame(
            columns=["experiment", "payload_file", "concurrency", "q", "latency_s"]),
        budgets=common, dataset_of_interest=doi, focus_payload=focus), results_dir / PLOTS_DIR, errors)) or []
    from pytest_fmbench.report import levels as load_levels

    curves = attempt("load levels", lambda: load_levels.rate_curves(metrics, analysis.levels))
    level_plots = attempt("level plots", lambda: load_levels.render_plots(
        curves, analysis.searches, results_dir / PLOTS_DIR)) if curves is not None else None
    sample = plots.request_sample(analysis.frame) if len(analysis.frame) else analysis.frame
    if len(analysis.frame):
        drawn += attempt("plots", lambda: timeline.render(analysis.frame, sample, analysis.telemetry,
                                                          results_dir / PLOTS_DIR, errors)) or []
    config_used = attempt("config", lambda: exports.config_used(config)) or {}
    attempt(PER_REQUEST_FILE, csv_done.result)
    per_request.shutdown()

    results = {
        "schema": "pytest-fmbench/results/1",
        "run": meta,
        "budgets": budgets.to_json(),
        "gate": verdict.to_json(),
        "metrics": exports.frame_records(exports.all_metrics_frame(metrics, verdict.meets)),
        "recommended": exports.frame_records(verdict.recommendation.per_payload),
        "costs": exports.frame_records(analysis.costs),
        "total_cost": analysis.total_cost,
        "prices": {e: dataclasses.asdict(p) if p is not None else None for e, p in prices.items()},
        "requests": analysis.requests,
        "levels": analysis.levels,
        "searches": analysis.searches,
        "metric_definitions": {m.name: {"unit": m.unit, "better": m.better, "definition": m.definition}
                               for m in METRICS.values()},
        "report_errors": errors,
    }
    attempt(RESULTS_FILE, lambda: exports.write_json(results_dir / RESULTS_FILE, results))
    attempt(history.BENCHMARK_FILE, lambda: history.write_benchmark_json(
        results_dir / history.BENCHMARK_FILE, analysis.frame, metrics, meta))

    report_path = results_dir / REPORT_FILE

    def write_markdown() -> Path:
        text = markdown.render(meta=meta, metrics=metrics, costs=analysis.costs, gate=verdict, budgets=budgets,
                               plots=[p.name for p in drawn], config_used=config_used, prices=prices,
                               glossary=glossary(), errors=errors,
                               compatibility=markdown.compatibility_notes(config),
                               workloads=workload_section(metrics, analysis.records),
                               telemetry=telemetry_section(metrics, analysis.telemetry, markdown.cell),
                               plot_titles={p.name: timeline.timeline_title(p.name) or p.name
                                            for p in drawn})
        if curves is not None:
            text += load_levels.markdown_section(curves, analysis.searches,
                                                 [p.name for p in level_plots or []])
        temporary = report_path.with_name(report_path.name + ".tmp")
        temporary.write_text(redaction.scrub(text, inline=False), encoding="utf-8")
        temporary.replace(report_path)
        return report_path

    written = attempt(REPORT_FILE, write_markdown)
    if written is not None and html.available():  # the html extra (plotly) is installed
        attempt(html.HTML_FILE, lambda: write_html(results_dir / html.HTML_FILE, config, meta,
                                                   analysis, common, focus, written))
    return ReportOutcome(analysis, written, files, errors)


def write_html(path: Path, config: Config, meta: Mapping[str, Any], analysis: Analysis,
               budgets: Mapping[str, float], focus: str | None, markdown_path: Path) -> Path:
    """``report.html`` from the report just written (its sections) and the metrics (plots)."""
    page = html.render(title=f"pytest-fmbench report: {meta.get('name') or config.general.name}",
                       markdown_text=markdown_path.read_text(encoding="utf-8"),
                       metrics=analysis.metrics, gate=analysis.gate, budgets=budgets,
                       focus_payload=focus, clean=lambda text: redaction.scrub(text, inline=False))
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(page, encoding="utf-8")
    temporary.replace(path)
    return path


def build_report(results_dir: Path, config: Config, prices: Mapping[str, Price | None], budgets: BudgetSet,
                 mode: GateMode = "best", meta: Mapping[str, Any] | None = None) -> ReportOutcome | None:
    """Analyze and write the report; None when no request ran (no report is written)."""
    analysis = analyze(results_dir, config, prices, budgets, mode)
    if analysis.requests == 0:
        return None
    return write_report(results_dir, config, prices, budgets, analysis, meta)
