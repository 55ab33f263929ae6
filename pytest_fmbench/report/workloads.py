"""The report's workload section (docs/workloads.md): requested vs actual lengths, prefix
cache, reasoning (time to first answer token), token-count mismatch, and per-turn and
per-session figures of multi-turn sessions.

Only what a run has appears: a run without workloads, reasoning, cached tokens or a
tokenizer next to server usage gets no section at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pytest_fmbench.budgets import format_value
from pytest_fmbench.load.columnar import table_to_records
from pytest_fmbench.load.workload_summary import session_summary, turn_summary


def _cell(value: Any, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "—"
    if unit == "tokens":
        return f"{value:,.1f}"
    if unit == "int":
        return f"{int(value):,}"
    return format_value(value, unit)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |",
             "| " + " | ".join(["---"] * 3 + ["---:"] * (len(headers) - 3)) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return [*lines, ""]


def _has(metrics: pd.DataFrame, column: str) -> pd.DataFrame:
    return metrics[metrics[column].notna()] if column in metrics else metrics.iloc[0:0]


def _any(metrics: pd.DataFrame, *columns: str) -> pd.DataFrame:
    """The rows with a value in any of ``columns``."""
    present = [c for c in columns if c in metrics]
    return metrics[metrics[present].notna().any(axis=1)] if present else metrics.iloc[0:0]


def _keys(row: Any) -> list[str]:
    return [str(row["experiment"]), str(row["payload_file"]), str(int(row["concurrency"]))]


def workload_section(metrics: pd.DataFrame, records: pa.Table) -> list[str]:
    """Markdown lines of the workload section ([] when nothing in the run needs it)."""
    if metrics.empty:
        return []
    parts: list[str] = []
    lengths = _any(metrics, "target_prompt_tokens_mean", "target_completion_tokens_mean")
    if not lengths.empty:
        parts += ["### Requested vs actual lengths\n",
                  ("Prompt tokens as the server counted them (a BOS token or a chat template "
                   "adds a few); output tokens with the length forced where the server allows "
                   "it (`force_output`).\n")]
        parts += _table(["experiment", "payload file", "c", "prompt asked", "prompt actual",
                         "output asked", "output actual", "exact outputs"],
                        [[*_keys(r), _cell(r.get("target_prompt_tokens_mean"), "tokens"),
                          _cell(r.get("prompt_token_count_mean"), "tokens"),
                          _cell(r.get("target_completion_tokens_mean"), "tokens"),
                          _cell(r.get("completion_token_count_mean"), "tokens"),
                          _cell(r.get("completion_length_hit_rate"), "fraction")]
                         for _, r in lengths.iterrows()])
    cached = _has(metrics, "cache_hit_rate")
    if not cached.empty:
        parts += ["### Prefix cache\n",
                  "From the server's `usage.prompt_tokens_details.cached_tokens`.\n"]
        parts += _table(["experiment", "payload file", "c", "cached tokens (mean)", "cache hit rate"],
                        [[*_keys(r), _cell(r["cached_tokens_mean"], "tokens"),
                          _cell(r["cache_hit_rate"], "fraction")] for _, r in cached.iterrows()])
    # Only where an answer came later than the first token: a reasoning model.
    reasoning = metrics[metrics["ttfat_p50"] > metrics["ttft_p50"]] if "ttfat_p50" in metrics \
        else metrics.iloc[0:0]
    if not reasoning.empty:
        parts += ["### Reasoning: time to first answer token\n",
                  ("TTFT counts the first generated token of any kind; TTFAT the first token "
                   "of the answer after the reasoning.\n")]
        parts += _table(["experiment", "payload file", "c", "TTFT p50", "TTFAT p50", "TTFAT p95"],
                        [[*_keys(r), _cell(r["ttft_p50"], "s"), _cell(r["ttfat_p50"], "s"),
                          _cell(r["ttfat_p95"], "s")] for _, r in reasoning.iterrows()])
    mismatch = _any(metrics, "prompt_token_mismatch_mean", "completion_token_mismatch_mean")
    if not mismatch.empty:
        parts += ["### Token counts: server vs tokenizer\n",
                  "Mean of server-reported − tokenizer-counted tokens per request.\n"]
        parts += _table(["experiment", "payload file", "c", "prompt", "completion"],
                        [[*_keys(r), _cell(r["prompt_token_mismatch_mean"], "tokens"),
                          _cell(r["completion_token_mismatch_mean"], "tokens")]
                         for _, r in mismatch.iterrows()])
    parts += _sessions(records)
    return ["## Workloads\n", *parts] if parts else []


def _sessions(records: pa.Table) -> list[str]:
    if "turn" not in records.column_names:
        return []
    in_sessions = records.filter(pc.fill_null(pc.greater_equal(records["turn"], 0), False))
    if in_sessions.num_rows == 0:
        return []
    rows = table_to_records(in_sessions)
    out = ["### Multi-turn sessions\n"]
    out += _table(["experiment", "payload file", "c", "sessions", "completed", "turns (mean)",
                   "duration p50", "duration p95"],
                  [[*_keys(s), _cell(s["sessions"], "int"), _cell(s["completed"], "int"),
                    _cell(s["turns_mean"], "tokens"), _cell(s["duration_p50"], "s"),
                    _cell(s["duration_p95"], "s")] for s in session_summary(rows)])
    out += ["Per turn (the history grows each turn):\n"]
    out += _table(["experiment", "payload file", "c", "turn", "requests", "errors", "TTFT p50",
                   "TTFT p95", "latency p50", "latency p95", "prompt tokens", "cached tokens"],
                  [[*_keys(t), str(t["turn"]), _cell(t["requests"], "int"),
                    _cell(t["errors"], "int"), _cell(t["ttft_p50"], "s"), _cell(t["ttft_p95"], "s"),
                    _cell(t["latency_p50"], "s"), _cell(t["latency_p95"], "s"),
                    _cell(t["prompt_tokens_mean"], "tokens"), _cell(t["cached_tokens_mean"], "tokens")]
                   for t in turn_summary(rows)])
    return out
