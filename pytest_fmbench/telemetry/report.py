"""telemetry.jsonl → the report: per-case aggregates in the metrics table, sources, a section.

The aggregates come from the samples themselves (``aggregate.case_aggregates``), grouped by
combination (experiment × payload file × concurrency), so the report never depends on what
a worker computed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from pytest_fmbench.telemetry.aggregate import case_aggregates, user_metric_aggregates
from pytest_fmbench.telemetry.definitions import TELEMETRY_METRIC_NAMES

# The level too (load levels: every rate level of an experiment shares its in-flight cap).
CASE_KEYS = ("experiment", "payload_file", "concurrency", "level")
SOURCE_TITLES = {
    "prometheus": "server /metrics (Prometheus)",
    "host": "host CPU and memory (psutil)",
    "nvml": "NVIDIA GPUs (NVML)",
    "neuron": "Neuron devices (neuron-monitor)",
    "cloudwatch": "SageMaker CloudWatch",
    "sampler": "sampler process",
    "telemetry": "telemetry",
}
# The columns of the report's telemetry table (when any case has them), with their units.
TABLE_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("server_running_mean", "running mean", ""), ("server_running_max", "running max", ""),
    ("server_waiting_mean", "waiting mean", ""), ("server_waiting_max", "waiting max", ""),
    ("kv_cache_usage_max", "KV cache max", "fraction"),
    ("prefix_cache_hit_rate", "prefix hits", "fraction"),
    ("server_preemptions", "preemptions", ""),
    ("server_generation_throughput", "server tokens/s", ""),
    ("host_cpu_percent_mean", "host CPU % mean", ""), ("host_memory_percent_max", "host mem % max", ""),
    ("gpu_utilization_mean", "GPU % mean", ""), ("gpu_memory_percent_max", "GPU mem % max", ""),
    ("neuron_utilization_mean", "Neuron % mean", ""),
    ("sagemaker_cpu_utilization_mean", "SM CPU % mean", ""),
    ("sagemaker_memory_utilization_max", "SM mem % max", ""),
    ("sagemaker_gpu_utilization_mean", "SM GPU % mean", ""),
    ("sagemaker_gpu_memory_utilization_max", "SM GPU mem % max", ""),
    ("sagemaker_disk_utilization_max", "SM disk % max", ""),
    ("sagemaker_invocations", "SM invocations", ""),
    ("sagemaker_model_latency_mean", "SM model latency s", ""),
    ("sagemaker_overhead_latency_mean", "SM overhead s", ""),
    ("sagemaker_invocation_4xx_errors", "SM 4xx", ""), ("sagemaker_invocation_5xx_errors", "SM 5xx", ""),
)


CaseKey = tuple[str, str, int, str]


def _key(line: Mapping[str, Any]) -> CaseKey:
    return (str(line.get("experiment")), str(line.get("payload_file")),
            int(line.get("concurrency") or 0), str(line.get("level") or ""))


def aggregates_by_case(lines: Sequence[Mapping[str, Any]]) -> dict[CaseKey, dict[str, float]]:
    samples: dict[CaseKey, list[dict[str, Any]]] = {}
    for line in lines:
        if line.get("kind") == "sample":
            samples.setdefault(_key(line), []).append(dict(line))
    return {key: case_aggregates(found) for key, found in samples.items()}


def add_telemetry(metrics: pd.DataFrame, lines: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """The metrics table with every telemetry metric as a column (NaN where no sample backs it)."""
    out = metrics.copy()
    found = aggregates_by_case(lines)
    for name in TELEMETRY_METRIC_NAMES:
        out[name] = [found.get(_key(r), {}).get(name, math.nan)
                     for _, r in out.iterrows()] if len(out) else []
    return out


def sources(lines: Sequence[Mapping[str, Any]]) -> tuple[dict[str, set[str]], dict[str, set[str]], int]:
    """Per source: the details of cases it was sampled in / the reasons it was not; cases."""
    available: dict[str, set[str]] = {}
    unavailable: dict[str, set[str]] = {}
    cases = 0
    for line in lines:
        if line.get("kind") != "case":
            continue
        cases += 1
        for source, detail in (line.get("available") or {}).items():
            available.setdefault(source, set()).add(str(detail))
        for source, reason in (line.get("unavailable") or {}).items():
            unavailable.setdefault(source, set()).add(str(reason))
    return available, unavailable, cases


def unavailable_line(lines: Sequence[Mapping[str, Any]]) -> str | None:
    """For the terminal summary: the sources no case had."""
    available, unavailable, cases = sources(lines)
    missing = [s for s in unavailable if s not in available]
    if not cases or not missing:
        return None
    return "telemetry unavailable: " + "; ".join(
        f"{SOURCE_TITLES.get(s, s)} ({'; '.join(sorted(unavailable[s]))})" for s in missing)


def section(metrics: pd.DataFrame, lines: Sequence[Mapping[str, Any]], cell: Any) -> list[str]:
    """The report's "Server and hardware telemetry" section (markdown lines)."""
    from pytest_fmbench.report.markdown import table

    out = ["## Server and hardware telemetry\n"]
    available, unavailable, cases = sources(lines)
    if not cases:
        return [*out, "No telemetry was recorded (no case ran with telemetry).\n"]
    out.append("Sampled beside each case (`telemetry.jsonl`: every sample on the run's timeline). "
               "Sources:\n")
    for source in available:
        out.append(f"- **{SOURCE_TITLES.get(source, source)}**: " + "; ".join(sorted(available[source])))
    missing = [s for s in unavailable if s not in available]
    partly = [s for s in unavailable if s in available]
    for source in missing:
        out.append(f"- unavailable: **{SOURCE_TITLES.get(source, source)}**: "
                   + "; ".join(sorted(unavailable[source])))
    for source in partly:
        out.append(f"- unavailable in some cases: **{SOURCE_TITLES.get(source, source)}**: "
                   + "; ".join(sorted(unavailable[source])))
    out.append("")
    if "cloudwatch" in available:
        out.append("CloudWatch metrics have a 1-minute granularity: each case's window is widened to "
                   "whole minutes, so a case shorter than a minute shares them with its neighbours.\n")
    shown = [(c, h, u) for c, h, u in TABLE_COLUMNS if c in metrics and metrics[c].notna().any()]
    if shown:
        rows = [[cell(r["experiment"]), cell(r["payload_file"], "stem"), cell(r["concurrency"], "int"),
                 *(cell(r[c], u) for c, _, u in shown)] for _, r in metrics.iterrows()]
        out.append(table(["experiment", "payload file", "c", *(h for _, h, _ in shown)], rows,
                         "lll" + "r" * len(shown)))
        out.append("")
        out.append("Every aggregate is a metric (see the glossary) and takes a budget like any other, "
                   "e.g. `budgets: {server_waiting_max: 8, kv_cache_usage_max: 0.9}`.\n")
    extra = _user_metrics(lines)
    if extra:
        out.append("Metrics listed in `telemetry.server_metrics` (mean / max over each case):\n")
        out.append(table(["experiment", "payload file", "c", "metric", "mean", "max"], extra, "lllrrr"))
        out.append("")
    return out


def _user_metrics(lines: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    samples: dict[CaseKey, list[dict[str, Any]]] = {}
    for line in lines:
        if line.get("kind") == "sample" and line.get("source") == "prometheus":
            samples.setdefault(_key(line), []).append(dict(line))
    rows = []
    for (experiment, payload, concurrency, level), found in samples.items():
        for name, (mean, top) in user_metric_aggregates(found).items():
            rows.append([experiment, payload.removesuffix(".jsonl"), level or str(concurrency),
                         f"`{name}`",
                         f"{mean:.4g}", f"{top:.4g}"])
    return rows


def server_series(lines: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Scraped running and waiting per sample: experiment, t_ns, running, waiting."""
    rows = [{"experiment": str(line.get("experiment")), "t_ns": int(line["t_ns"]),
             "running": (line.get("values") or {}).get("running", math.nan),
             "waiting": (line.get("values") or {}).get("waiting", math.nan)}
            for line in lines if line.get("kind") == "sample" and line.get("source") == "prometheus"]
    return pd.DataFrame(rows, columns=["experiment", "t_ns", "running", "waiting"])


def case_windows(lines: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    rows = [{"experiment": str(line.get("experiment")), "concurrency": int(line.get("concurrency") or 0),
             "payload_file": str(line.get("payload_file")), "start_ns": int(line["start_ns"]),
             "end_ns": int(line["end_ns"])} for line in lines if line.get("kind") == "case"]
    return pd.DataFrame(rows, columns=["experiment", "concurrency", "payload_file", "start_ns", "end_ns"])
