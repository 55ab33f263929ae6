"""Machine-readable exports: FMBench's CSVs (plus our columns), results.json, the redacted config."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from pytest_fmbench import redaction
from pytest_fmbench.config.model import Config

# FMBench's all_metrics.csv columns (its 3_run_inference notebook), in its order, from ours.
FMBENCH_METRIC_COLUMNS = {
    "experiment_name": "experiment",
    "concurrency": "concurrency",
    "payload_file": "payload_file",
    "errors": "failures",
    "successes": "successes",
    "error_rate": "error_rate",
    "all_prompts_token_count": "all_prompts_token_count",
    "prompt_token_count_mean": "prompt_token_count_mean",
    "prompt_token_throughput": "prompt_token_throughput",
    "all_completions_token_count": "all_completions_token_count",
    "completion_token_count_mean": "completion_token_count_mean",
    "completion_token_throughput": "completion_token_throughput",
    "transactions": "requests",
    "transactions_per_second": None,  # TPM / 60
    "transactions_per_minute": "transactions_per_minute",
    "latency_p50": "latency_p50",
    "latency_p95": "latency_p95",
    "latency_p99": "latency_p99",
    "TTFT_p50": "ttft_p50",
    "TTFT_p99": "ttft_p99",
    "TPOT_p50": "tpot_p50",
    "TPOT_p99": "tpot_p99",
    "instance_type": "instance_type",
    "instance_count": "instance_count",
}


def all_metrics_frame(metrics: pd.DataFrame, meets: pd.Series | None = None) -> pd.DataFrame:
    """FMBench's all_metrics columns first (its names), then every metric of ours."""
    columns: dict[str, pd.Series] = {}
    for fmbench, ours in FMBENCH_METRIC_COLUMNS.items():
        columns[fmbench] = metrics["transactions_per_minute"] / 60 if ours is None else metrics[ours]
    rest = [c for c in metrics.columns if c not in set(FMBENCH_METRIC_COLUMNS.values())]
    for column in rest:
        columns[column] = metrics[column]
    if meets is not None:
        columns["meets_budgets"] = meets.reindex(metrics.index)
    # Built at once: a column at a time fragments the frame (pandas' PerformanceWarning).
    return pd.DataFrame(columns, index=metrics.index)


def write_all_metrics(path: Path, metrics: pd.DataFrame, meets: pd.Series | None = None) -> Path:
    all_metrics_frame(metrics, meets).to_csv(path, index=False, float_format="%.10g")
    return path


def per_request_table(table: pa.Table, info: Mapping[str, Any], first_sent: int | None = None) -> pa.Table:
    """FMBench's per_inference_request_results columns (plus ours), one row per request.

    ``first_sent``: the run's first send (ns) when ``table`` is a slice of the records.

    FMBench leaves latency / token columns empty for failed requests; so do we, and keep the
    time to failure in our ``elapsed_s``.
    """
    ok = pc.equal(pc.fill_null(table["error"], ""), "")

    def seconds(end: Any, start: Any) -> Any:  # to the microsecond: short CSV cells
        return pc.round(pc.divide(pc.cast(pc.subtract(end, start), pa.float64()), 1e9), 6)

    elapsed = seconds(table["last_byte_ns"], table["sent_ns"])
    # TTFT and TPOT from the first generated token of any kind (METRICS: reasoning counts).
    first_any = (pc.min_element_wise(table["first_token_ns"], table["first_reasoning_ns"], skip_nulls=True)
                 if "first_reasoning_ns" in table.column_names else table["first_token_ns"])
    ttft = seconds(first_any, table["sent_ns"])
    ttfat = seconds(table["first_token_ns"], table["sent_ns"])
    span = pc.divide(pc.cast(pc.subtract(table["last_byte_ns"], first_any), pa.float64()), 1e9)
    completion = pc.cast(table["completion_tokens"], pa.float64())
    tpot = pc.if_else(pc.greater_equal(completion, 2), pc.round(pc.divide(span, pc.subtract(completion, 1)), 7),
                      pa.scalar(None, pa.float64()))
    if first_sent is None:
        first_sent = pc.min(table["sent_ns"]).as_py() if table.num_rows else 0
    retry_wait = (pc.fill_null(table["retry_wait_ns"], 0) if "retry_wait_ns" in table.column_names
                  else pa.array([0] * table.num_rows, pa.int64()))
    null_f = pa.nulls(table.num_rows, pa.float64())
    encoded = pc.dictionary_encode(table["experiment"]).combine_chunks()
    names = encoded.dictionary.to_pylist()

    def fact(attribute: str, kind: pa.DataType) -> pa.Array:
        """A per-experiment fact for every row (looked up once per experiment, then taken)."""
        values = [getattr(info.get(name), attribute, None) for name in names]
        if attribute == "endpoint_name":
            values = [value or name for value, name in zip(values, names)]
        return pa.array(values, kind).take(encoded.indices)

    uuid = pc.binary_join_element_wise(table["case_id"], pc.cast(table["request_id"], pa.string()), ":")
    columns = {
        "endpoint_name": fact("endpoint_name", pa.string()),
        "experiment_name": table["experiment"],
        "concurrency": table["concurrency"],
        "payload_file": table["payload_file"],
        "instance_type": fact("instance_type", pa.string()),
        "instance_count": fact("instance_count", pa.int64()),
        "prompt_tokens": pc.if_else(ok, table["prompt_tokens"], pa.scalar(None, pa.int64())),
        "completion_tokens": pc.if_else(ok, table["completion_tokens"], pa.scalar(None, pa.int64())),
        "latency": pc.if_else(ok, elapsed, null_f),
        "time_to_first_token": pc.if_else(ok, ttft, null_f),
        "time_per_output_token": pc.if_else(ok, tpot, null_f),
        "time_to_last_token": pc.if_else(ok, elapsed, null_f),
        "uuid": uuid,
        # ours
        "case_id": table["case_id"],
        "request_id": table["request_id"],
        "wave": table["wave"],
        "worker": table["worker"],
        "error": table["error"],
        "error_detail": table["error_detail"],
        "status": table["status"],
        "retries": table["retries"],
        "token_source": table["token_source"],
        "elapsed_s": elapsed,
        # from the first send: a retried request's back-off is in retry_wait_s, not here
        "client_queue_s": seconds(pc.subtract(table["sent_ns"], retry_wait), table["scheduled_ns"]),
        "retry_wait_s": seconds(retry_wait, pa.scalar(0, pa.int64())),
        # when it was sent, seconds after the first request of the run (timestamps: records*.jsonl)
        "sent_s": seconds(table["sent_ns"], pa.scalar(first_sent, pa.int64())),
        "time_to_first_answer_token": pc.if_else(ok, ttfat, null_f),
    }
    # Workloads (docs/workloads.md): sessions, asked lengths, prefix cache, our own counts.
    for name in ("session", "turn", "target_prompt_tokens", "target_completion_tokens",
                 "cached_tokens", "client_prompt_tokens", "client_completion_tokens"):
        if name in table.column_names:
            columns[name] = table[name]
    return pa.table(columns)


# Rows converted and written at a time: the CSV's memory stays bounded at any record count.
PER_REQUEST_SLICE = 262_144


def write_per_request(path: Path, table: pa.Table, info: Mapping[str, Any]) -> Path:
    if table.num_rows <= PER_REQUEST_SLICE:
        pa_csv.write_csv(per_request_table(table, info), path)
        return path
    first_sent = pc.min(table["sent_ns"]).as_py()
    writer: pa_csv.CSVWriter | None = None
    try:
        for start in range(0, table.num_rows, PER_REQUEST_SLICE):
            part = per_request_table(table.slice(start, PER_REQUEST_SLICE), info, first_sent)
            if writer is None:
                writer = pa_csv.CSVWriter(str(path), part.schema)
            writer.write_table(part)
    finally:
        if writer is not None:
            writer.close()
    return path


# -- the config used, secrets redacted -----------------------------------------------------------

REDACTED = redaction.REDACTED


def redact(data: Any, environ: Mapping[str, str] | None = None) -> Any:
    """A copy with secrets redacted by place (allow-list, see ``pytest_fmbench.redaction``)."""
    return redaction.redact(data, redaction.secret_values(data, environ))


def config_used(config: Config, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The validated config as it ran (placeholders filled, defaults shown), secrets redacted."""
    return redact(config.model_dump(mode="json", exclude_none=True, by_alias=True), environ)


# -- results.json ---------------------------------------------------------------------------------

def json_safe(value: Any) -> Any:
    """NaN/inf → None, numpy → Python, recursively (JSON has no NaN)."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is pd.NA or value is pd.NaT:
        return None
    return value


def frame_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [json_safe(row) for row in frame.to_dict("records")]


def write_json(path: Path, data: Any) -> Path:
    temporary = path.with_name(path.name + ".tmp")
    text = json.dumps(json_safe(data), indent=2, allow_nan=False) + "\n"
    # Last line of defence: no known secret value (or URL credential) in any JSON written.
    temporary.write_text(redaction.scrub(text, inline=False), encoding="utf-8")
    temporary.replace(path)
    return path
