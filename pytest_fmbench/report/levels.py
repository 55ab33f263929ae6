"""The report's load levels: throughput and latency against offered rate, SLO searches.

Figure data first, as plain DataFrames / dicts (``rate_curves``, ``search_results``), so any
report format (markdown here, an HTML report) draws from the same numbers; then the markdown
section and the two plots.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from pytest_fmbench.load.levels import knee, read_levels

LEVELS_GLOB = "levels*.jsonl"


def read_level_lines(results_dir: Path, run_id: str | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(level outcomes, search results) of the run in ``results_dir`` (``levels*.jsonl``)."""
    lines: list[dict[str, Any]] = []
    for path in sorted(results_dir.glob(LEVELS_GLOB)):
        try:
            for text in path.read_text(encoding="utf-8").splitlines():
                if text.strip():
                    line = json.loads(text)
                    if run_id is None or line.get("run_id") in (None, run_id):
                        lines.append(line)
        except (OSError, ValueError):
            continue
    return read_levels(lines)


def _row(metrics: pd.DataFrame, experiment: str, payload_file: str, level: str) -> dict[str, Any] | None:
    if metrics.empty or "level" not in metrics.columns:
        return None
    match = metrics[(metrics["experiment"] == experiment) & (metrics["payload_file"] == payload_file)
                    & (metrics["level"] == level)]
    return match.iloc[0].to_dict() if len(match) else None


def search_results(searches: Sequence[Mapping[str, Any]], metrics: pd.DataFrame) -> list[dict[str, Any]]:
    """Each SLO search with TPM, tokens/s and cost per 10k transactions of the level at its
    max sustainable rate (undefined when no rate was sustainable)."""
    out = []
    for search in searches:
        row = _row(metrics, str(search["experiment"]), str(search["payload_file"]),
                   str(search.get("level") or "")) if search.get("level") else None
        result = {key: search.get(key) for key in (
            "case_id", "experiment", "payload_file", "max_sustainable_rate", "max_throughput",
            "goodput_share", "slos", "stopped", "requests", "path")}
        for name in ("transactions_per_minute", "completion_token_throughput",
                     "prompt_token_throughput", "cost_per_10k_txn", "latency_p95"):
            value = row.get(name) if row else None
            result[name] = None if value is None or (isinstance(value, float) and math.isnan(value)) \
                else float(value)
        out.append(result)
    return out


def rate_curves(metrics: pd.DataFrame, levels: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per open-loop level (rate levels, sweep, search): offered and achieved rate,
    latency p50/p95 with the p95's 95 % interval, saturated, and the knee of its curve (the
    last level whose throughput keeps up with what it was offered)."""
    columns = ["experiment", "payload_file", "case_id", "kind", "level", "offered_rate",
               "throughput", "latency_p50", "latency_p95", "latency_p95_ci_low",
               "latency_p95_ci_high", "response_time_p95", "saturated", "knee"]
    if metrics.empty or "offered_rate" not in metrics.columns:
        return pd.DataFrame(columns=columns)
    rated = metrics[metrics["offered_rate"].notna()]
    saturated = {(str(l["experiment"]), str(l["payload_file"]), str(l["level"]))
                 for l in levels if l.get("saturated")}
    kinds = {(str(l["experiment"]), str(l["payload_file"]), str(l["level"])): (str(l["kind"]), str(l["case_id"]))
             for l in levels}
    rows = []
    for row in rated.to_dict("records"):
        key = (str(row["experiment"]), str(row["payload_file"]), str(row["level"]))
        kind, case = kinds.get(key, ("rate", ""))
        duration = row.get("duration_s") or math.nan
        rows.append({
            "experiment": key[0], "payload_file": key[1], "case_id": case, "kind": kind,
            "level": key[2], "offered_rate": float(row["offered_rate"]),
            "throughput": float(row["successes"]) / duration if duration and duration > 0 else math.nan,
            **{name: row.get(name, math.nan) for name in columns[7:12]},
            "saturated": key in saturated, "knee": False})
    curves = pd.DataFrame(rows, columns=columns)
    for _, group in curves.groupby(["experiment", "payload_file", "kind"], sort=False):
        ordered = group.sort_values("offered_rate")
        found = knee(list(ordered["offered_rate"]), list(ordered["throughput"]))
        if found is not None:
            curves.loc[ordered.index[found], "knee"] = True
    return curves.sort_values(["experiment", "payload_file", "kind", "offered_rate"]).reset_index(drop=True)


def markdown_section(curves: pd.DataFrame, searches: Sequence[Mapping[str, Any]],
                     plots: Sequence[str] = ()) -> str:
    if curves.empty and not searches:
        return ""
    out = ["", "## Load levels", "",
           ("Open-loop levels (rates, sweeps, SLO searches): achieved throughput and latency "
            "against the offered rate; p95 with its 95 % interval (bootstrap); the knee is the "
            "last level whose throughput kept up with what it was offered (≥ 90 %). A saturated "
            "level was stopped early because its queue kept growing: its figures are not a "
            "steady state."), ""]
    if searches:
        out += ["### Max sustainable rate", "",
                ("| case | max sustainable rate (req/s) | TPM | output tokens/s | USD per 10k txn "
                 "| max throughput (req/s) | goodput ≥ | stopped | search path (req/s: met?) |"),
                "|---|---|---|---|---|---|---|---|---|"]
        for s in searches:
            path = ", ".join(f"{p['rate']:g}{'✓' if p['meets'] else '✗'}" for p in s.get("path") or [])
            out.append(f"| {s['case_id']} | {_n(s.get('max_sustainable_rate'))} | "
                       f"{_n(s.get('transactions_per_minute'))} | {_n(s.get('completion_token_throughput'))} | "
                       f"{_n(s.get('cost_per_10k_txn'), 4)} | {_n(s.get('max_throughput'))} | "
                       f"{(s.get('goodput_share') or 0):.0%} | {s.get('stopped')} | {path} |")
        out.append("")
    if not curves.empty:
        out += ["### Levels", "",
                ("| experiment | payload file | level | offered req/s | achieved req/s | latency p50 s "
                 "| latency p95 s (95 % CI) | response time p95 s | |"),
                "|---|---|---|---|---|---|---|---|---|"]
        for r in curves.to_dict("records"):
            mark = "SATURATED" if r["saturated"] else ("knee" if r["knee"] else "")
            out.append(f"| {r['experiment']} | {r['payload_file']} | {r['level']} | {_n(r['offered_rate'])} "
                       f"| {_n(r['throughput'])} | {_n(r['latency_p50'], 3)} | {_n(r['latency_p95'], 3)} "
                       f"({_n(r['latency_p95_ci_low'], 3)}–{_n(r['latency_p95_ci_high'], 3)}) "
                       f"| {_n(r['response_time_p95'], 3)} | {mark} |")
        out.append("")
    out += [f"![{name}](plots/{name})" for name in plots]
    return "\n".join(out) + "\n"


def _n(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{float(value):.{digits}f}"


def render_plots(curves: pd.DataFrame, searches: Sequence[Mapping[str, Any]], out_dir: Path) -> list[Path]:
    """``rate_curves.png`` (throughput and latency vs offered rate, CIs as error bars, knee
    and saturated levels marked) and ``slo_search.png`` (each search's path)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    if not curves.empty:
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
        for (experiment, payload, kind), group in curves.groupby(["experiment", "payload_file", "kind"]):
            group = group.sort_values("offered_rate")
            label = f"{experiment} {payload.removesuffix('.jsonl')} {kind}"
            top.plot(group["offered_rate"], group["throughput"], "-o", label=label)
            low = (group["latency_p95"] - group["latency_p95_ci_low"]).clip(lower=0)
            high = (group["latency_p95_ci_high"] - group["latency_p95"]).clip(lower=0)
            bottom.errorbar(group["offered_rate"], group["latency_p95"], yerr=[low.fillna(0), high.fillna(0)],
                            fmt="-o", capsize=3, label=label)
            for frame, axis, column in ((group[group["knee"]], top, "throughput"),
                                        (group[group["saturated"]], bottom, "latency_p95")):
                axis.scatter(frame["offered_rate"], frame[column], s=160, facecolors="none",
                             edgecolors="red" if axis is bottom else "black")
        most = curves["offered_rate"].max()
        top.plot([0, most], [0, most], ":", color="grey", label="achieved = offered")
        top.set_ylabel("achieved (successful req/s)")
        top.set_title("Throughput and latency vs offered rate (circled: knee ○, saturated ○ red)")
        top.legend(fontsize=7)
        bottom.set_ylabel("latency p95 (s), 95 % CI")
        bottom.set_xlabel("offered rate (requests/s)")
        path = out_dir / "rate_curves.png"
        fig.tight_layout()
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    if searches:
        fig, axis = plt.subplots(figsize=(8, 3.5))
        for search in searches:
            steps = search.get("path") or []
            axis.plot(range(1, len(steps) + 1), [p["rate"] for p in steps], "-", color="grey")
            for index, p in enumerate(steps, start=1):
                axis.scatter(index, p["rate"], marker="o" if p["meets"] else "x",
                             color="green" if p["meets"] else "red")
            if search.get("max_sustainable_rate") is not None:
                axis.axhline(search["max_sustainable_rate"], linestyle="--",
                             label=f"{search['case_id']}: {search['max_sustainable_rate']:g} req/s")
        axis.set_xlabel("search step")
        axis.set_ylabel("offered rate (req/s)")
        axis.set_title("SLO search path (o met the SLOs, x missed)")
        axis.legend(fontsize=7)
        path = out_dir / "slo_search.png"
        fig.tight_layout()
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written
