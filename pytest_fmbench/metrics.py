"""Records → per-combination metrics and cost, exactly as METRICS.md defines them.

One definition per name (``METRICS``), used by tables, plots, budgets and exports alike.
Every figure is computed over all requests of a combination (experiment × payload file ×
concurrency), never averaged over waves. Money follows METRICS.md "Money": a price that
cannot be defined (no successful request, TPM 0, no price known) is NaN, never a
placeholder number. The recommendation rule lives here too (``recommend``), so the report
and the terminal summary cannot disagree.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pytest_fmbench.cases import payload_stem
from pytest_fmbench.config.pricing import Price
from pytest_fmbench.load.columnar import RECORD_SCHEMA, records_to_table
from pytest_fmbench.load.records import RequestRecord
from pytest_fmbench.load.stored import StoredRecords
from pytest_fmbench.telemetry.definitions import TELEMETRY_METRICS

# A combination: experiment × payload file × load level (a concurrency level has level "";
# an open-loop level is ``r8``, a sweep's or a search's ``sweep-r12.5``, ``slo-r9``).
KEYS = ["experiment", "payload_file", "concurrency", "level"]
# Up to p99.9 (``*_p99_9``): read it with the request count (a p99.9 needs thousands).
PERCENTILES: tuple[float, ...] = (50, 90, 95, 99, 99.9)


def percentile_name(p: float) -> str:
    """``p95``, ``p99_9`` (a dot would not survive budget and threshold specs)."""
    return "p" + f"{p:g}".replace(".", "_")


@dataclasses.dataclass(frozen=True)
class Metric:
    """A per-combination metric: its unit, which way is better, and its definition."""

    name: str
    unit: str
    better: Literal["lower", "higher", "none"]
    definition: str

    @property
    def budgetable(self) -> bool:
        return self.better != "none"


def _family(prefix: str, label: str, unit: str, definition: str) -> list[Metric]:
    out = [Metric(f"{prefix}_mean", unit, "lower", f"mean {label} ({definition})")]
    out += [Metric(f"{prefix}_{percentile_name(p)}", unit, "lower",
                   f"{p:g}th percentile of {label} ({definition})") for p in PERCENTILES]
    out.append(Metric(f"{prefix}_count", "requests", "none", f"how many values back the {label} figures"))
    return out


_LIST: list[Metric] = [
    Metric("requests", "requests", "none", "requests sent in the combination (all, failed included)"),
    Metric("successes", "requests", "none", "requests that completed without error"),
    Metric("failures", "requests", "none", "requests that ended with an error class"),
    Metric("duration_s", "s", "none", "last `last_byte` − first `sent` over all requests"),
    Metric("error_rate", "fraction", "lower", "failed / total"),
    *_family("latency", "latency", "s", "end to end: `last_byte − sent`, successful requests"),
    *_family("response_time", "response time", "s",
             "`last_byte − scheduled`: latency plus the wait before sending, so open-loop "
             "queueing shows (= latency in closed loops), successful requests"),
    *_family("ttft", "time to first token", "s", "`first_token − sent`, successful streamed requests"),
    *_family("ttfat", "time to first answer token", "s",
             "`first answer token − sent`: a reasoning model's answer after its reasoning "
             "(`reasoning_content` deltas or `<think>` text); equal to TTFT otherwise"),
    *_family("tpot", "time per output token", "s",
             "`(last_byte − first_token) / (completion_tokens − 1)`, completion_tokens ≥ 2"),
    *_family("itl", "inter-token latency", "s",
             "each gap between consecutive content chunks, pooled over successful requests"),
    Metric("client_queue_mean", "s", "lower",
           "mean client queue: `first sent − scheduled` (`sent − scheduled` unless retried; should be ~0)"),
    Metric("client_queue_p95", "s", "lower", "95th percentile of client queue `first sent − scheduled`"),
    Metric("client_queue_max", "s", "lower", "largest client queue `first sent − scheduled`"),
    Metric("client_saturated", "requests", "lower",
           "requests the client itself was late for (first sent over `load.saturation_ms` after due, "
           "or its event loop lagged more while they were in flight): their timings include client "
           "overhead; a throttled request's retries never count"),
    Metric("retry_wait_mean", "s", "lower",
           "mean retry wait: `sent − first sent`, the earlier attempts and back-off of requests "
           "retried after throttling (0 when not retried), over all requests"),
    Metric("retry_wait_p95", "s", "lower", "95th percentile of retry wait `sent − first sent`"),
    Metric("retry_wait_max", "s", "lower", "largest retry wait `sent − first sent`"),
    Metric("client_loop_lag_max", "s", "lower",
           "worst event-loop lag of the client while a request was in flight"),
    Metric("transactions_per_minute", "txn/min", "higher", "TPM: successful requests / duration × 60"),
    Metric("prompt_token_throughput", "tokens/s", "higher", "Σ prompt tokens of successful requests / duration"),
    Metric("completion_token_throughput", "tokens/s", "higher",
           "Σ completion tokens of successful requests / duration"),
    Metric("prompt_token_count_mean", "tokens", "none", "mean prompt tokens of successful requests"),
    Metric("completion_token_count_mean", "tokens", "none", "mean completion tokens of successful requests"),
    Metric("goodput", "req/s", "higher",
           "successful requests meeting every configured per-request SLO / duration"),
    # Workloads (docs/workloads.md): prefix cache, token-count mismatch, requested lengths.
    Metric("cached_tokens_mean", "tokens", "none",
           "mean prompt tokens the server served from its prefix cache "
           "(`usage.prompt_tokens_details.cached_tokens`), successful requests that report it"),
    Metric("cache_hit_rate", "fraction", "higher",
           "Σ cached tokens / Σ prompt tokens over successful requests that report cached tokens"),
    Metric("prompt_token_mismatch_mean", "tokens", "none",
           "mean of server-reported − tokenizer-counted prompt tokens (chat templates and BOS "
           "show here), successful requests with both counts"),
    Metric("completion_token_mismatch_mean", "tokens", "none",
           "mean of server-reported − tokenizer-counted completion tokens, successful requests "
           "with both counts"),
    Metric("target_prompt_tokens_mean", "tokens", "none",
           "mean prompt length the workload asked for (synthetic, shared prefix, trace)"),
    Metric("target_completion_tokens_mean", "tokens", "none",
           "mean output length the workload asked for (`max_tokens`, forced where the server allows)"),
    Metric("completion_length_hit_rate", "fraction", "higher",
           "share of successful requests with an asked output length whose completion_tokens "
           "equal it"),
    Metric("offered_rate", "req/s", "none",
           "the open-loop level's arrival rate (requests/s); undefined for concurrency levels"),
    Metric("max_sustainable_rate", "req/s", "higher",
           "`slo_search`: the highest offered rate at which every per-request SLO held for at "
           "least the configured share of requests (budgeted per search, not per row)"),
    Metric("price_per_hour", "USD/h", "lower", "instance-priced: hourly price × instance count"),
    Metric("price_per_txn", "USD", "lower",
           "instance-priced: price_per_hour / (TPM × 60), undefined when TPM is 0; token-priced: "
           "prompt_mean/1000 × input_per_1k + completion_mean/1000 × output_per_1k"),
    Metric("price_per_token", "USD", "lower", "price_per_txn / (prompt_mean + completion_mean)"),
    Metric("cost_per_10k_txn", "USD", "lower", "price_per_txn × 10,000"),
]
METRICS: dict[str, Metric] = {m.name: m for m in _LIST}
# Per-case telemetry aggregates (server /metrics, host, CloudWatch): metrics like the others.
METRICS.update({name: Metric(name, unit, better, definition)  # type: ignore[arg-type]
                for name, unit, better, definition in TELEMETRY_METRICS})

# Per-request SLOs behind goodput: a budget on any of these families is also a per-request
# threshold (a request meets it when its own value is at or under the threshold).
SLO_FAMILIES = ("latency", "response_time", "ttft", "ttfat", "tpot")


def slo_thresholds(budgets: Mapping[str, float]) -> dict[str, float]:
    """Per-request thresholds from budgets: the loosest budget of each family (seconds)."""
    out: dict[str, float] = {}
    for name, value in budgets.items():
        family = next((f for f in SLO_FAMILIES if name.startswith(f + "_")), "")
        if family and METRICS.get(name, None) is not None and name != f"{family}_count":
            out[family] = max(out.get(family, 0.0), float(value))
    return out


# -- per request ------------------------------------------------------------------------------

def as_table(records: pa.Table | Sequence[RequestRecord]) -> pa.Table:
    if isinstance(records, pa.Table):
        return records
    if isinstance(records, StoredRecords):  # read column-wise from disk, not record by record
        return records.table()
    return records_to_table(list(records))


def _seconds(end: pa.ChunkedArray, start: pa.ChunkedArray) -> np.ndarray:
    return np.asarray(pc.divide(pc.cast(pc.subtract(end, start), pa.float64()), 1e9)
                      .to_numpy(zero_copy_only=False), dtype=float)


def _float(column: pa.ChunkedArray) -> np.ndarray:
    return np.asarray(pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False), dtype=float)


def _category(column: pa.ChunkedArray) -> pd.Categorical:
    encoded = pc.dictionary_encode(column).combine_chunks()
    return pd.Categorical.from_codes(encoded.indices.to_numpy(zero_copy_only=False),
                                     categories=encoded.dictionary.to_pylist())


def request_frame(table: pa.Table) -> pd.DataFrame:
    """One row per request with the derived per-request figures of METRICS.md (seconds)."""
    completion = _float(table["completion_tokens"])
    # Older records have no retry_wait_ns: 0 (their sent is the first send too).
    retry_wait = np.nan_to_num(_float(table["retry_wait_ns"])) if "retry_wait_ns" in table.column_names \
        else np.zeros(table.num_rows)
    # TTFT and TPOT start at the first generated token of any kind (a reasoning model's
    # reasoning included); TTFAT at the first answer token (``first_token_ns``).
    first_any = _first_generated(table)
    tpot_span = _seconds(table["last_byte_ns"], first_any)
    with np.errstate(divide="ignore", invalid="ignore"):
        tpot = np.where(completion >= 2, tpot_span / (completion - 1), np.nan)
    names = table.column_names
    level = (pc.fill_null(table["level"], "") if "level" in names
             else pa.chunked_array([pa.array([""] * table.num_rows, pa.string())]))
    frame = pd.DataFrame({
        "experiment": _category(table["experiment"]),
        "payload_file": _category(table["payload_file"]),
        "concurrency": table["concurrency"].to_numpy(),
        "level": _category(level),
        "rate": _float(table["rate"]) if "rate" in names else np.full(table.num_rows, np.nan),
        "repeat": (np.nan_to_num(_float(table["repeat"])).astype(np.int64) if "repeat" in names
                   else np.zeros(table.num_rows, np.int64)),
        "ok": np.asarray(pc.equal(pc.fill_null(table["error"], ""), "").to_numpy(zero_copy_only=False), dtype=bool),
        "latency_s": _seconds(table["last_byte_ns"], table["sent_ns"]),
        "response_time_s": _seconds(table["last_byte_ns"], table["scheduled_ns"]),
        "ttft_s": _seconds(first_any, table["sent_ns"]),
        "ttfat_s": _seconds(table["first_token_ns"], table["sent_ns"]),
        "tpot_s": tpot,
        "client_queue_s": _seconds(table["sent_ns"], table["scheduled_ns"]) - retry_wait / 1e9,
        "retry_wait_s": retry_wait / 1e9,
        "saturated": np.asarray(pc.fill_null(table["saturated"], False).to_numpy(zero_copy_only=False),
                                dtype=bool),
        "loop_lag_s": _float(table["loop_lag_us"]) / 1e6,
        "prompt_tokens": _float(table["prompt_tokens"]),
        "completion_tokens": completion,
        "sent_ns": table["sent_ns"].to_numpy(),
        "last_byte_ns": table["last_byte_ns"].to_numpy(),
    })
    for column in WORKLOAD_COLUMNS:
        frame[column] = _float(table[column]) if column in table.column_names \
            else np.full(table.num_rows, np.nan)
    return frame


# Record fields of workloads (data/workloads.py) the per-combination metrics read.
WORKLOAD_COLUMNS = ("cached_tokens", "client_prompt_tokens", "client_completion_tokens",
                    "target_prompt_tokens", "target_completion_tokens")


def _first_generated(table: pa.Table) -> pa.ChunkedArray | pa.Array:
    if "first_reasoning_ns" not in table.column_names:
        return table["first_token_ns"]
    return pc.min_element_wise(table["first_token_ns"], table["first_reasoning_ns"],
                               skip_nulls=True)


def _workload_metrics(out: pd.DataFrame, ok: pd.DataFrame) -> None:
    """Prefix cache, token-count mismatch and requested-vs-actual lengths (NaN when no
    request of the combination has the figure)."""
    groups = ok.groupby(KEYS, observed=True, sort=True)
    out["cached_tokens_mean"] = groups["cached_tokens"].mean().reindex(out.index)
    reported = ok[ok["cached_tokens"].notna()]
    by = reported.groupby(KEYS, observed=True, sort=True)
    prompts = by["prompt_tokens"].sum(min_count=1).reindex(out.index)
    out["cache_hit_rate"] = by["cached_tokens"].sum(min_count=1).reindex(out.index) / prompts
    for kind in ("prompt", "completion"):
        diff = ok[f"{kind}_tokens"] - ok[f"client_{kind}_tokens"]
        out[f"{kind}_token_mismatch_mean"] = diff.groupby(
            [ok[k] for k in KEYS], observed=True, sort=True).mean().reindex(out.index)
        out[f"target_{kind}_tokens_mean"] = groups[f"target_{kind}_tokens"].mean().reindex(out.index)
    asked = ok[ok["target_completion_tokens"].notna()]
    hit = (asked["completion_tokens"] == asked["target_completion_tokens"]).astype(float)
    out["completion_length_hit_rate"] = hit.groupby(
        [asked[k] for k in KEYS], observed=True, sort=True).mean().reindex(out.index)


# -- per combination ----------------------------------------------------------------------------

@dataclasses.dataclass
class ExperimentInfo:
    """Facts about an experiment the metrics table carries along (from the config)."""

    instance_type: str | None = None
    instance_count: int = 1
    backend: str | None = None
    model_id: str | None = None
    endpoint_name: str | None = None
    order: int = 0


def compute_metrics(
    records: pa.Table | Sequence[RequestRecord],
    *,
    prices: Mapping[str, Price | None] | None = None,
    info: Mapping[str, ExperimentInfo] | None = None,
    slos: Mapping[str, Mapping[str, float]] | None = None,
    frame: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """The per-combination metrics table: one row per experiment × payload file × concurrency.

    ``slos`` maps an experiment to its per-request thresholds (``slo_thresholds``) for goodput;
    ``frame``: the table's ``request_frame`` when the caller already has it.
    """
    table = as_table(records)
    prices = prices or {}
    info = info or {}
    slos = slos or {}
    if table.num_rows == 0:
        return pd.DataFrame(columns=[*KEYS, *METRICS, "repeats", "instance_type", "instance_count", "backend",
                                     "model_id", "pricing", "error_classes"])
    frame = request_frame(table) if frame is None else frame
    groups = frame.groupby(KEYS, observed=True, sort=True)
    out = pd.DataFrame({
        "requests": groups.size(),
        "successes": groups["ok"].sum().astype(int),
        "first_sent_ns": groups["sent_ns"].min(),
        "last_byte_ns": groups["last_byte_ns"].max(),
    })
    out["failures"] = out["requests"] - out["successes"]
    out["duration_s"] = (out["last_byte_ns"] - out["first_sent_ns"]) / 1e9
    out["error_rate"] = out["failures"] / out["requests"]

    ok = frame[frame["ok"]]
    ok_groups = ok.groupby(KEYS, observed=True, sort=True)
    for prefix, column in (("latency", "latency_s"), ("response_time", "response_time_s"),
                           ("ttft", "ttft_s"), ("ttfat", "ttfat_s"), ("tpot", "tpot_s")):
        _percentiles(out, ok_groups[column], prefix)
    _workload_metrics(out, ok)
    _confidence(out, ok_groups)
    out["offered_rate"] = groups["rate"].max()
    out["repeats"] = groups["repeat"].nunique()
    _itl(out, table, frame)
    queue = groups["client_queue_s"]
    out["client_queue_mean"] = queue.mean()
    out["client_queue_p95"] = queue.quantile(0.95)
    out["client_queue_max"] = queue.max()
    retry = groups["retry_wait_s"]
    out["retry_wait_mean"] = retry.mean()
    out["retry_wait_p95"] = retry.quantile(0.95)
    out["retry_wait_max"] = retry.max()
    out["client_saturated"] = groups["saturated"].sum().astype(int)
    out["client_loop_lag_max"] = groups["loop_lag_s"].max()

    duration = out["duration_s"].where(out["duration_s"] > 0)
    out["transactions_per_minute"] = out["successes"] / duration * 60
    prompt_sum = ok_groups["prompt_tokens"].sum(min_count=1).reindex(out.index)
    completion_sum = ok_groups["completion_tokens"].sum(min_count=1).reindex(out.index)
    out["prompt_token_throughput"] = prompt_sum.fillna(0) / duration
    out["completion_token_throughput"] = completion_sum.fillna(0) / duration
    out["prompt_token_count_mean"] = ok_groups["prompt_tokens"].mean().reindex(out.index)
    out["completion_token_count_mean"] = ok_groups["completion_tokens"].mean().reindex(out.index)
    out["all_prompts_token_count"] = prompt_sum.fillna(0).astype("int64")
    out["all_completions_token_count"] = completion_sum.fillna(0).astype("int64")
    out["goodput"] = _goodput(frame, out.index, slos) / duration
    out = out.reset_index()
    out["experiment"] = out["experiment"].astype(str)
    out["payload_file"] = out["payload_file"].astype(str)
    out["level"] = out["level"].astype(str)
    out["error_classes"] = _error_classes(table, out)

    _attach_info(out, info)
    _attach_money(out, prices)
    out = out.copy()  # one block again after many column inserts (pandas' PerformanceWarning)
    order = {name: i for name, i in ((n, e.order) for n, e in info.items())}
    out["_order"] = out["experiment"].map(lambda n: order.get(n, len(order)))
    out["_rate"] = out["offered_rate"].fillna(-1.0)
    out = out.sort_values(["_order", "experiment", "payload_file", "_rate", "concurrency", "level"],
                          kind="stable").drop(columns=["_rate"])
    return out.drop(columns=["_order", "first_sent_ns", "last_byte_ns"]).reset_index(drop=True)


def _percentiles(out: pd.DataFrame, series: Any, prefix: str) -> None:
    """Mean and percentiles (linear interpolation, numpy's default) per combination."""
    counts = series.count()
    out[f"{prefix}_count"] = counts.reindex(out.index).fillna(0).astype(int)
    if not counts.sum():
        for name in ("mean", *(percentile_name(p) for p in PERCENTILES)):
            out[f"{prefix}_{name}"] = math.nan
        return
    out[f"{prefix}_mean"] = series.mean().reindex(out.index)
    quantiles = series.quantile([p / 100 for p in PERCENTILES]).unstack()
    for p in PERCENTILES:
        out[f"{prefix}_{percentile_name(p)}"] = quantiles[p / 100].reindex(out.index)


# Metrics that carry a 95 % interval (``<name>_ci_low``, ``<name>_ci_high``): the ones a
# regression gate compares. Percentiles by the seeded bootstrap (stats.percentile_ci).
CI_METRICS = {"latency_mean": ("latency_s", None), "latency_p50": ("latency_s", 50),
              "latency_p95": ("latency_s", 95), "latency_p99": ("latency_s", 99),
              "response_time_p95": ("response_time_s", 95), "response_time_p99": ("response_time_s", 99),
              "ttft_p50": ("ttft_s", 50), "ttft_p95": ("ttft_s", 95), "tpot_p95": ("tpot_s", 95)}


def _confidence(out: pd.DataFrame, ok_groups: Any) -> None:
    """95 % intervals of ``CI_METRICS`` per combination, from each one's values."""
    from pytest_fmbench.stats import mean_ci, percentile_ci

    for name, (column, q) in CI_METRICS.items():
        lows, highs = [], []
        values = {key: group.to_numpy(dtype=float) for key, group in ok_groups[column]}
        for key in out.index:
            data = values.get(key)
            if data is None:
                low, high = math.nan, math.nan
            else:
                low, high = mean_ci(data) if q is None else percentile_ci(data, q)
            lows.append(low)
            highs.append(high)
        out[f"{name}_ci_low"] = lows
        out[f"{name}_ci_high"] = highs


def _itl(out: pd.DataFrame, table: pa.Table, frame: pd.DataFrame) -> None:
    """ITL pooled over the successful requests of each combination (microseconds → s).

    Exact percentiles over every gap; combinations are computed on a few threads (numpy's
    partition releases the GIL), integers all the way (no float copy of the pooled gaps).
    """
    itl = table["itl_us"].combine_chunks()  # one copy, then takes are cheap
    ok = frame["ok"].to_numpy()
    indices = frame.groupby(KEYS, observed=True, sort=True).indices

    def one(key: Any) -> list[float]:
        rows = indices.get(key)
        if rows is None:
            return [0.0] + [math.nan] * (1 + len(PERCENTILES))
        rows = rows[ok[rows]]
        contiguous = len(rows) and rows[-1] - rows[0] + 1 == len(rows)
        part = itl.slice(int(rows[0]), len(rows)) if contiguous else itl.take(pa.array(rows))
        values = (pc.list_flatten(part).to_numpy() if len(rows) else np.empty(0, np.int64))
        if not len(values):
            return [0.0] + [math.nan] * (1 + len(PERCENTILES))
        quantiles = np.percentile(values, PERCENTILES) / 1e6
        return [float(len(values)), float(values.mean()) / 1e6, *(float(q) for q in quantiles)]

    keys = list(out.index)
    workers = min(4, os.cpu_count() or 1, max(1, len(keys)))
    if workers > 1 and frame["completion_tokens"].sum() > 1_000_000:
        with ThreadPoolExecutor(workers) as pool:
            results = list(pool.map(one, keys))
    else:
        results = [one(key) for key in keys]
    columns = ["itl_count", "itl_mean", *(f"itl_{percentile_name(p)}" for p in PERCENTILES)]
    for position, name in enumerate(columns):
        out[name] = [r[position] for r in results]
    out["itl_count"] = out["itl_count"].astype(int)


def _goodput(frame: pd.DataFrame, index: pd.Index, slos: Mapping[str, Mapping[str, float]]) -> pd.Series:
    good = frame["ok"].to_numpy().copy()
    if slos:
        experiments = frame["experiment"].astype(str).to_numpy()
        for experiment, thresholds in slos.items():
            rows = experiments == experiment
            if not rows.any():
                continue
            for family, threshold in thresholds.items():
                values = frame[f"{family}_s"].to_numpy()[rows]
                if family == "tpot":  # a one-token answer has no TPOT: nothing to miss
                    meets = np.isnan(values) | (values <= threshold)
                else:
                    meets = ~np.isnan(values) & (values <= threshold)
                good[rows] &= meets
    counts = pd.Series(good, index=frame.index).groupby(
        [frame[k] for k in KEYS], observed=True, sort=True).sum()
    return counts.reindex(index).fillna(0)


def _error_classes(table: pa.Table, out: pd.DataFrame) -> list[str]:
    errors = pc.fill_null(table["error"], "")
    if not pc.any(pc.not_equal(errors, "")).as_py():
        return [""] * len(out)
    level = (pc.fill_null(table["level"], "") if "level" in table.column_names
             else pa.array([""] * table.num_rows, pa.string()))
    failed = pa.table({"experiment": table["experiment"], "payload_file": table["payload_file"],
                       "concurrency": table["concurrency"], "level": level,
                       "error": errors}).filter(pc.not_equal(errors, ""))
    counted = failed.group_by(["experiment", "payload_file", "concurrency", "level", "error"]
                              ).aggregate([([], "count_all")])
    text: dict[tuple[str, str, int, str], list[str]] = {}
    for row in sorted(counted.to_pylist(), key=lambda r: (r["experiment"], r["payload_file"],
                                                          r["concurrency"], r["level"], r["error"])):
        key = (row["experiment"], row["payload_file"], row["concurrency"], row["level"])
        text.setdefault(key, []).append(f"{row['error']} {row['count_all']}")
    return [", ".join(text.get((e, p, int(c), str(lv)), [])) for e, p, c, lv in
            zip(out["experiment"], out["payload_file"], out["concurrency"], out["level"])]


def _attach_info(out: pd.DataFrame, info: Mapping[str, ExperimentInfo]) -> None:
    default = ExperimentInfo()
    facts = [info.get(name, default) for name in out["experiment"]]
    out["instance_type"] = [f.instance_type for f in facts]
    out["instance_count"] = [f.instance_count for f in facts]
    out["backend"] = [f.backend for f in facts]
    out["model_id"] = [f.model_id for f in facts]


def _attach_money(out: pd.DataFrame, prices: Mapping[str, Price | None]) -> None:
    kind: list[str | None] = []
    per_hour: list[float] = []
    per_txn: list[float] = []
    for row in out.itertuples(index=False):
        price = prices.get(row.experiment)
        if price is None:
            kind.append(None)
            per_hour.append(math.nan)
            per_txn.append(math.nan)
        elif price.kind == "instance":
            kind.append("instance")
            per_hour.append(price.price_per_hour)
            tpm = row.transactions_per_minute
            per_txn.append(price.price_per_hour / (tpm * 60) if tpm and tpm > 0 else math.nan)
        else:
            kind.append("token")
            per_hour.append(math.nan)
            per_txn.append(price.token_cost(row.prompt_token_count_mean,
                                            row.completion_token_count_mean))
    out["pricing"] = kind
    out["price_per_hour"] = per_hour
    out["price_per_txn"] = pd.Series(per_txn, index=out.index, dtype=float)
    tokens = out["prompt_token_count_mean"] + out["completion_token_count_mean"]
    out["price_per_token"] = out["price_per_txn"] / tokens.where(tokens > 0)
    out["cost_per_10k_txn"] = out["price_per_txn"] * 10_000


# -- cost per experiment ------------------------------------------------------------------------

def experiment_costs(
    records: pa.Table | Sequence[RequestRecord],
    events: Iterable[Mapping[str, Any]],
    prices: Mapping[str, Price | None],
    info: Mapping[str, ExperimentInfo] | None = None,
) -> pd.DataFrame:
    """Cost of each experiment (METRICS.md "Money"), one row per experiment.

    Instance-priced: price_per_hour × hours the endpoint existed (deploy start to teardown
    end of what the plugin deployed; the benchmarking span for bring-your-own endpoints).
    Token-priced: Σ tokens of successful requests × rates.
    """
    table = as_table(records)
    info = info or {}
    by_experiment: dict[str, list[Mapping[str, Any]]] = {}
    for event in events:
        by_experiment.setdefault(str(event.get("experiment")), []).append(event)
    spans = _record_spans(table)
    names = list(dict.fromkeys([*sorted(info, key=lambda n: info[n].order), *spans]))
    rows = []
    for name in names:
        if name not in spans and name not in by_experiment:
            continue
        price = prices.get(name)
        first, last, ok, prompt, completion = spans.get(name, (None, None, 0, 0.0, 0.0))
        seconds, basis = _lifetime(by_experiment.get(name, []), first, last)
        row: dict[str, Any] = {
            "experiment": name,
            "instance_type": info[name].instance_type if name in info else None,
            "instance_count": info[name].instance_count if name in info else 1,
            "pricing": price.kind if price else None,
            "price_per_hour": price.price_per_hour if price else math.nan,
            "hours": seconds / 3600,
            "basis": basis,
            "successes": ok,
            "prompt_tokens": prompt,
            "completion_tokens": completion,
        }
        if price is None:
            row["cost"] = math.nan
        elif price.kind == "instance":
            row["cost"] = price.price_per_hour * seconds / 3600
        else:
            row["cost"] = price.token_cost(prompt, completion)
            row["basis"] = "tokens of successful requests"
        rows.append(row)
    columns = ["experiment", "instance_type", "instance_count", "pricing", "price_per_hour", "hours",
               "basis", "successes", "prompt_tokens", "completion_tokens", "cost"]
    return pd.DataFrame(rows, columns=columns)


def _record_spans(table: pa.Table) -> dict[str, tuple[int, int, int, float, float]]:
    if table.num_rows == 0:
        return {}
    ok = pc.equal(pc.fill_null(table["error"], ""), "")
    work = pa.table({
        "experiment": table["experiment"],
        "sent": table["sent_ns"],
        "last": table["last_byte_ns"],
        "ok": pc.cast(ok, pa.int64()),
        "prompt": pc.if_else(ok, pc.fill_null(table["prompt_tokens"], 0), 0),
        "completion": pc.if_else(ok, pc.fill_null(table["completion_tokens"], 0), 0),
    })
    grouped = work.group_by("experiment").aggregate([
        ("sent", "min"), ("last", "max"), ("ok", "sum"), ("prompt", "sum"), ("completion", "sum")])
    return {row["experiment"]: (row["sent_min"], row["last_max"], row["ok_sum"],
                                float(row["prompt_sum"]), float(row["completion_sum"]))
            for row in grouped.to_pylist()}


def _lifetime(events: list[Mapping[str, Any]], first: int | None, last: int | None) -> tuple[float, str]:
    deployed = [e for e in events if e.get("event") == "deploy" and e.get("deployed_by_us")]
    if not deployed:
        if first is None or last is None:
            return 0.0, "no requests"
        return (last - first) / 1e9, "benchmarking span (bring your own endpoint)"
    total = 0
    open_at: int | None = None
    open_end = 0
    for event in sorted(events, key=lambda e: (int(e.get("start_ns", 0)), e.get("event") != "deploy")):
        if event.get("event") == "deploy" and event.get("deployed_by_us"):
            if open_at is None:
                open_at = int(event["start_ns"])
            open_end = max(open_end, int(event.get("end_ns", event["start_ns"])))
        elif event.get("event") == "teardown" and open_at is not None:
            total += int(event.get("end_ns", event["start_ns"])) - open_at
            open_at = None
    basis = "endpoint lifetime (deploy start to teardown end)"
    if open_at is not None:  # no teardown recorded (crash): count to the last response
        total += max(open_end, last or 0) - open_at
        basis += "; no teardown recorded, counted to the last response"
    return total / 1e9, basis


# -- budgets verdicts and the recommendation --------------------------------------------------

def dataset_of_interest_mask(metrics: pd.DataFrame, dataset_of_interest: str | None) -> pd.Series:
    """Rows of the dataset of interest (FMBench: ``en_1000-2000`` ↔ ``payload_en_1000-2000``)."""
    if not dataset_of_interest or metrics.empty:
        return pd.Series(True, index=metrics.index)
    wanted = payload_stem(dataset_of_interest)
    stems = metrics["payload_file"].map(payload_stem)
    mask = (stems == wanted) | (stems == f"payload_{wanted}") | stems.str.endswith(f"_{wanted}")
    return mask


@dataclasses.dataclass
class Recommendation:
    """The outcome of METRICS.md's recommendation rule over a metrics table."""

    per_payload: pd.DataFrame             # one row per experiment × payload file (recommended combo or none)
    best: dict[str, Any] | None           # the best option for the dataset of interest
    candidates: int                       # combinations of the dataset of interest considered
    dataset_of_interest: str | None
    dataset_matched: bool                 # False: no payload file matched; all were considered
    nearest_misses: list[dict[str, Any]]  # when nothing meets budgets: the closest per budget


def recommend(metrics: pd.DataFrame, meets: pd.Series, dataset_of_interest: str | None,
              budget_columns: Sequence[tuple[str, str, float]] = ()) -> Recommendation:
    """METRICS.md's rule. ``meets``: per row, whether the combination meets its budgets.

    Per experiment and payload file: among combinations meeting budgets, highest TPM (ties:
    lower cost). Best overall for the dataset of interest: among those meeting budgets,
    lowest price_per_txn (ties: higher TPM). ``budget_columns``: (metric, direction,
    threshold) for the nearest-miss listing when nothing meets budgets.
    """
    frame = metrics.assign(_meets=meets.reindex(metrics.index).fillna(False).astype(bool))
    rows = []
    for (experiment, payload_file), group in frame.groupby(["experiment", "payload_file"], sort=False):
        passing = group[group["_meets"]]
        choice: dict[str, Any] = {"experiment": experiment, "payload_file": payload_file,
                                  "instance_type": group["instance_type"].iloc[0],
                                  "recommended_concurrency": None, "transactions_per_minute": math.nan,
                                  "cost_per_10k_txn": math.nan, "latency_p95": math.nan,
                                  "error_rate": math.nan, "combinations": len(group),
                                  "meeting_budgets": len(passing)}
        if len(passing):
            ranked = passing.assign(_tpm=passing["transactions_per_minute"].fillna(-math.inf),
                                    _cost=passing["cost_per_10k_txn"].fillna(math.inf))
            top = ranked.sort_values(["_tpm", "_cost", "concurrency"], ascending=[False, True, True]).iloc[0]
            choice.update(recommended_concurrency=int(top["concurrency"]),
                          transactions_per_minute=top["transactions_per_minute"],
                          cost_per_10k_txn=top["cost_per_10k_txn"], latency_p95=top["latency_p95"],
                          error_rate=top["error_rate"])
        rows.append(choice)
    per_payload = pd.DataFrame(rows)
    if len(per_payload):
        per_payload["recommended_concurrency"] = per_payload["recommended_concurrency"].astype("Int64")

    mask = dataset_of_interest_mask(frame, dataset_of_interest)
    matched = bool(mask.any()) or not dataset_of_interest
    pool = frame[mask] if mask.any() else frame
    passing = pool[pool["_meets"]]
    best = None
    if len(passing):
        ranked = passing.assign(_price=passing["price_per_txn"].fillna(math.inf),
                                _tpm=passing["transactions_per_minute"].fillna(-math.inf))
        top = ranked.sort_values(["_price", "_tpm", "concurrency"], ascending=[True, False, True]).iloc[0]
        best = {k: _plain(v) for k, v in top.items() if not str(k).startswith("_")}
    misses = []
    if best is None and len(pool):
        for metric, direction, threshold in budget_columns:
            if metric not in pool.columns:
                continue
            values = pool[metric]
            if values.notna().any():
                index = values.idxmin() if direction == "max" else values.idxmax()
                row = pool.loc[index]
                misses.append({"metric": metric, "direction": direction, "threshold": threshold,
                               "value": _plain(row[metric]), "experiment": row["experiment"],
                               "payload_file": row["payload_file"], "concurrency": int(row["concurrency"]),
                               "meets": bool(values[index] <= threshold if direction == "max"
                                             else values[index] >= threshold)})
            else:
                misses.append({"metric": metric, "direction": direction, "threshold": threshold,
                               "value": None, "experiment": None, "payload_file": None,
                               "concurrency": None, "meets": False})
    return Recommendation(per_payload, best, len(pool), dataset_of_interest, matched, misses)


def _plain(value: Any) -> Any:
    """numpy scalars → Python; NaN → None (JSON has no NaN)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def empty_records() -> pa.Table:
    return RECORD_SCHEMA.empty_table()
