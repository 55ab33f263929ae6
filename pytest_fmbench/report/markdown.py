"""report.md: the human-readable price/performance report."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import yaml

from pytest_fmbench.budgets import BudgetSet, GateResult, format_value
from pytest_fmbench.cases import payload_stem
from pytest_fmbench.config.model import Config
from pytest_fmbench.metrics import METRICS
from pytest_fmbench.report.plots import PLOTS

# The results table of FMBench's report, in its order: (header, our column, unit).
RESULTS_COLUMNS: list[tuple[str, str, str]] = [
    ("experiment_name", "experiment", ""),
    ("payload_file", "payload_file", "stem"),
    ("instance_type", "instance_type", ""),
    ("concurrency", "concurrency", "int"),
    ("requests", "requests", "int"),
    ("error_rate", "error_rate", "fraction"),
    ("prompt_token_count_mean", "prompt_token_count_mean", "tokens"),
    ("completion_token_count_mean", "completion_token_count_mean", "tokens"),
    ("prompt_token_throughput", "prompt_token_throughput", "tokens/s"),
    ("completion_token_throughput", "completion_token_throughput", "tokens/s"),
    ("latency_mean", "latency_mean", "s"),
    ("latency_p50", "latency_p50", "s"),
    ("latency_p95", "latency_p95", "s"),
    ("latency_p99", "latency_p99", "s"),
    ("TTFT_p50", "ttft_p50", "s"),
    ("TTFT_p95", "ttft_p95", "s"),
    ("transactions_per_minute", "transactions_per_minute", "txn/min"),
    ("price_per_hour", "price_per_hour", "USD/h"),
    ("price_per_txn", "price_per_txn", "USD"),
    ("price_per_token", "price_per_token", "USD"),
]


def cell(value: Any, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if unit == "stem":
        return payload_stem(str(value))
    if unit == "int":
        return f"{int(value)}"
    if unit == "fraction":
        return f"{float(value) * 100:.1f} %"
    if isinstance(value, float):
        magnitude = abs(value)
        if magnitude == 0:
            return "0"
        if magnitude >= 100:
            return f"{value:,.1f}"
        if magnitude >= 1:
            return f"{value:.3f}"
        return f"{value:.3g}"
    return str(value).replace("|", "\\|")


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], align: str | None = None) -> str:
    align = align or "l" * len(headers)
    marks = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(marks) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def render(
    *,
    meta: Mapping[str, Any],
    metrics: pd.DataFrame,
    costs: pd.DataFrame,
    gate: GateResult,
    budgets: BudgetSet,
    plots: Sequence[str],
    config_used: Mapping[str, Any],
    prices: Mapping[str, Any],
    glossary: str,
    errors: Sequence[str] = (),
    compatibility: Sequence[str] = (),
    workloads: Sequence[str] = (),
    telemetry: Sequence[str] = (),
    plot_titles: Mapping[str, str] | None = None,
) -> str:
    out: list[str] = []
    name = meta.get("name") or "benchmark"
    out.append(f"# pytest-fmbench report: {name}\n")
    out.append(table(["run", "value"], [[k, cell(v)] for k, v in [
        ("run id", meta.get("run_id")), ("config", meta.get("config")),
        ("config hash", meta.get("config_hash")), ("started", meta.get("started")),
        ("finished", meta.get("finished")), ("host", meta.get("host")),
        ("versions", ", ".join(f"{k} {v}" for k, v in (meta.get("versions") or {}).items())),
        ("requests", f"{int(metrics['requests'].sum()) if len(metrics) else 0:,} in {len(metrics)} combinations"),
    ]]))
    out.append("")
    if errors:
        out.append("> **Parts of this report could not be built** (records are intact):\n")
        out += [f"> - {e}" for e in errors]
        out.append("")

    out += _best_option(gate, budgets)
    out += _budgets_section(gate, budgets)
    out += _results_table(metrics, gate)
    out += _recommended(gate)
    out += _costs(costs)
    out += _client(metrics)
    out += workloads  # report/workloads.py: lengths, prefix cache, reasoning, sessions
    out += list(telemetry)
    out.append("## Plots\n")
    titles = {**(plot_titles or {}), **dict(PLOTS)}
    for plot in plots:
        out.append(f"### {titles.get(plot, plot)}\n\n![{titles.get(plot, plot)}](plots/{plot})\n")
    out.append("## Prices used\n")
    out.append(table(["experiment", "price"], [[e, p.describe() if p is not None else
                                                "none (no instance type or price_per_hour): costs undefined"]
                                               for e, p in prices.items()]))
    out.append("")
    if compatibility:
        out.append("## FMBench compatibility\n")
        out += [*compatibility, ""]
    out.append("## Glossary\n")
    out.append(glossary.strip() + "\n")
    out.append("## Config used (secrets redacted)\n")
    out.append("```yaml\n" + yaml.safe_dump(dict(config_used), sort_keys=False, allow_unicode=True).rstrip() + "\n```\n")
    out.append("## Files\n")
    out.append("- `all_metrics.csv`: one row per combination, FMBench's columns then ours\n"
               "- `per_inference_request_results.csv`: one row per request, FMBench's columns then ours\n"
               "- `results.json`: every metric, budgets, verdicts and run metadata\n"
               "- `records*.jsonl`: the raw request records (one file per process)\n")
    return "\n".join(out)


def _best_option(gate: GateResult, budgets: BudgetSet) -> list[str]:
    rec = gate.recommendation
    out = ["## Best option\n"]
    doi = rec.dataset_of_interest
    scope = f"dataset of interest `{doi}`" if doi and rec.dataset_matched else "all payload files"
    if doi and not rec.dataset_matched:
        out.append(f"The dataset of interest `{doi}` matched no payload file of this run; "
                   "every payload file was considered.\n")
    verdict = "PASSED" if gate.passed else "FAILED"
    out.append(f"**Budget gate ({gate.mode}): {verdict}** — {gate.summary}.\n")
    best = rec.best
    if best is not None:
        out.append(f"For the {scope}, the lowest price per transaction among the {rec.candidates} "
                   "combinations that meet every budget:\n")
        out.append(table(["", ""], [
            ["experiment", cell(best.get("experiment"))],
            ["instance type", cell(best.get("instance_type"))],
            ["payload file", cell(best.get("payload_file"), "stem")],
            ["concurrency", cell(best.get("concurrency"), "int")],
            ["transactions per minute", cell(best.get("transactions_per_minute"))],
            ["latency p95", format_value(best.get("latency_p95"), "s")],
            ["error rate", format_value(best.get("error_rate"), "fraction")],
            ["price per transaction", format_value(best.get("price_per_txn"), "USD")],
            ["cost per 10k transactions", format_value(best.get("cost_per_10k_txn"), "USD")],
            ["requests behind these figures", cell(best.get("requests"), "int")],
        ]))
        out.append("")
    else:
        out.append(f"**No combination meets every budget** ({scope}, {rec.candidates} combinations). "
                   "The nearest miss per budget:\n")
        if rec.nearest_misses:
            out.append(table(["budget", "best value", "combination", "meets this budget"], [
                [(f"{m['metric']} {'≤' if m['direction'] == 'max' else '≥'} "
                 f"{format_value(m['threshold'], METRICS[m['metric']].unit)}"),
                 format_value(m["value"], METRICS[m["metric"]].unit),
                 f"{m['experiment']} {payload_stem(str(m['payload_file']))} c={m['concurrency']}"
                 if m["experiment"] else "—",
                 "yes" if m["meets"] else "no"]
                for m in rec.nearest_misses]))
            out.append("")
    return out


def _budgets_section(gate: GateResult, budgets: BudgetSet) -> list[str]:
    out = ["## Budgets\n"]
    rows = [[b.metric, f"{'≤' if b.direction == 'max' else '≥'} {format_value(b.threshold, b.unit)}",
             "all experiments", b.source] for b in budgets.common.values()]
    for experiment, own in budgets.per_experiment.items():
        rows += [[b.metric, f"{'≤' if b.direction == 'max' else '≥'} {format_value(b.threshold, b.unit)}",
                  experiment, b.source] for b in own.values()]
    if rows:
        out.append(table(["metric", "budget", "applies to", "set by"], rows))
    else:
        out.append("No budgets configured (FMBench's `report.latency_budget`, `cost_per_10k_txn_budget`, "
                   "`error_rate_budget`, our `budgets:` or `--fmbench-budget`).")
    out.append("")
    if gate.violations:
        out.append(f"### Violations ({len(gate.violations)})\n")
        out += [f"- `{v.line()}`" for v in gate.violations]
        out.append("")
    return out


def _results_table(metrics: pd.DataFrame, gate: GateResult) -> list[str]:
    out = ["## Results\n",
           ("One row per combination (experiment × payload file × concurrency), computed over all of "
           "its requests (never averaged over waves). Latency and TTFT figures are over successful "
           "requests; `requests` is how many requests back each row (read a p99 of few requests for "
           "what it is). ✓: meets every budget.\n")]
    headers = [h for h, _, _ in RESULTS_COLUMNS] + ["budgets"]
    rows = []
    for index, row in metrics.iterrows():
        cells = [cell(row.get(column), unit if unit in ("stem", "int", "fraction") else "")
                 for _, column, unit in RESULTS_COLUMNS]
        cells.append("✓" if bool(gate.meets.get(index, False)) else "✗")
        rows.append(cells)
    out.append(table(headers, rows, "lllrrr" + "r" * (len(headers) - 6)))
    out.append("")
    out.append("### How many requests back each figure\n")
    out.append(table(["experiment", "payload file", "c", "requests", "successes", "latency values",
                      "TTFT values", "TPOT values", "ITL values", "errors"],
                     [[cell(r["experiment"]), cell(r["payload_file"], "stem"), cell(r["concurrency"], "int"),
                       cell(r["requests"], "int"), cell(r["successes"], "int"), cell(r["latency_count"], "int"),
                       cell(r["ttft_count"], "int"), cell(r["tpot_count"], "int"), cell(r["itl_count"], "int"),
                       cell(r.get("error_classes") or "—")] for _, r in metrics.iterrows()],
                     "lllrrrrrrl"))
    out.append("")
    return out


def _recommended(gate: GateResult) -> list[str]:
    per = gate.recommendation.per_payload
    out = ["## Recommended concurrency per instance type and payload file\n",
           ("Among the combinations that meet every budget, the highest transactions per minute "
           "(ties: lower cost).\n")]
    if per.empty:
        return [*out, "No combination ran.\n"]
    rows = []
    for _, r in per.iterrows():
        chosen = r["recommended_concurrency"]
        rows.append([cell(r["experiment"]), cell(r["instance_type"]), cell(r["payload_file"], "stem"),
                     "none within budget" if pd.isna(chosen) else str(int(chosen)),
                     cell(r["transactions_per_minute"]), format_value(r["latency_p95"], "s"),
                     format_value(r["cost_per_10k_txn"], "USD"),
                     f"{int(r['meeting_budgets'])} of {int(r['combinations'])}"])
    out.append(table(["experiment", "instance type", "payload file", "recommended concurrency", "TPM",
                      "latency p95", "cost per 10k txn", "combinations within budget"], rows, "llllrrrr"))
    out.append("")
    return out


def _costs(costs: pd.DataFrame) -> list[str]:
    out = ["## Cost per experiment\n",
           ("Instance-priced: price per hour × hours the endpoint existed (deploy start to teardown "
           "end; the benchmarking span for bring-your-own endpoints). Token-priced: tokens × rates.\n")]
    if costs.empty:
        return [*out, "No experiment ran.\n"]
    rows = [[cell(r["experiment"]), cell(r["instance_type"]), cell(r["pricing"]),
             format_value(r["price_per_hour"], "USD/h"), f"{r['hours'] * 60:.2f} min", cell(r["basis"]),
             format_value(r["cost"], "USD")] for _, r in costs.iterrows()]
    total = costs["cost"].sum(min_count=1)
    undefined = costs["cost"].isna().sum()
    rows.append(["**total**", "", "", "", f"{costs['hours'].sum() * 60:.2f} min", "",
                 f"**{format_value(total, 'USD')}**" + (f" ({undefined} undefined)" if undefined else "")])
    out.append(table(["experiment", "instance type", "pricing", "price per hour", "time", "basis", "cost"],
                     rows, "lllrrlr"))
    out.append("")
    return out


def _client(metrics: pd.DataFrame) -> list[str]:
    if metrics.empty:
        return []
    worst = metrics["client_queue_max"].max()
    p95 = metrics["client_queue_p95"].max()
    out = ["## Client overhead\n",
           (f"Client queue (`first sent − scheduled`, coordinated omission made visible): worst p95 "
           f"{format_value(p95, 's')}, worst single request {format_value(worst, 's')}.")]
    typical = metrics["latency_p50"].median()
    if isinstance(p95, float) and p95 > max(0.01, 0.05 * (typical if pd.notna(typical) else 0.0)):
        out.append(" **The client may have been a bottleneck**: requests waited in the client "
                   "before being sent; read latency and throughput with care.")
    lag = metrics["client_loop_lag_max"].max()
    if pd.notna(lag):
        out.append(f" Worst event-loop lag of the client while a request was in flight: "
                   f"{format_value(lag, 's')}.")
    retry = metrics["retry_wait_max"].max() if "retry_wait_max" in metrics else float("nan")
    if pd.notna(retry) and retry > 0:
        # Throttling is the server's doing: shown here so it is not mistaken for the client's.
        out.append(f" Requests retried after throttling waited up to {format_value(retry, 's')} "
                   "(`retry_wait_*`: the endpoint throttled; not client overhead).")
    out.append("\n")
    saturated = metrics[metrics["client_saturated"] > 0]
    if not saturated.empty:
        out.append("**Client saturated** in these cases: their timings include the client's own "
                   "overhead. Spread the load (`load.processes`) or send less.\n")
        rows = [[str(r.experiment), str(r.payload_file), str(r.concurrency),
                 f"{int(r.client_saturated)} of {int(r.requests)}",
                 format_value(r.client_loop_lag_max, "s")] for r in saturated.itertuples()]
        out.append(table(["experiment", "payload file", "concurrency", "saturated requests",
                          "worst loop lag"], rows, "lllrr"))
        out.append("")
    return out


def compatibility_notes(config: Config) -> list[str]:
    """What differs from FMBench for this config: warnings, and FMBench keys not acted on.

    Shared by report.md and the terminal summary, so a user sees in both what changes in
    behaviour against FMBench (nothing given in the config is silently dropped).
    """
    lines = [f"- warning: {warning}" for warning in config.warnings]
    ignored = config.ignored_fmbench_keys()
    if ignored:
        lines.append("- FMBench keys pytest-fmbench does not act on (accepted, not used):")
        lines += [f"  - {where}: {', '.join(keys)}" for where, keys in ignored.items()]
    return lines
