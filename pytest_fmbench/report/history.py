"""Results over time: pytest-benchmark-compatible JSON, and regressions against a baseline.

Each run writes ``benchmark.json`` in pytest-benchmark's format (one benchmark per
combination, latency statistics over its successful requests, every metric in
``extra_info``), so ``pytest-benchmark compare`` reads it. ``--fmbench-compare`` names an
earlier run; ``--fmbench-compare-fail=latency_p95:+10%,tpm:-10%`` fails on regressions in
either direction: a ``+`` threshold trips when the metric grows by more than the amount, a
``-`` threshold when it shrinks by more.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import platform
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pytest_fmbench import __version__
from pytest_fmbench.cases import case_id
from pytest_fmbench.errors import ConfigError
from pytest_fmbench.metrics import KEYS, METRICS

BENCHMARK_FILE = "benchmark.json"
ALIASES = {"tpm": "transactions_per_minute", "cost": "cost_per_10k_txn",
           "throughput": "completion_token_throughput"}
_THRESHOLD = re.compile(r"^\s*([A-Za-z0-9_]+)\s*:\s*([+-])\s*([0-9]*\.?[0-9]+)\s*(%?)\s*$")


# -- writing ------------------------------------------------------------------------------------

def _stats(latencies: np.ndarray) -> dict[str, Any]:
    """pytest-benchmark's ``stats`` block over per-request latencies (seconds)."""
    if latencies.size == 0:
        nan = float("nan")
        return {k: nan for k in ("min", "max", "mean", "stddev", "median", "iqr", "q1", "q3",
                                 "ld15iqr", "hd15iqr", "ops", "total")} | {
            "rounds": 0, "iterations": 1, "outliers": "0;0", "iqr_outliers": 0, "stddev_outliers": 0}
    q1, median, q3 = (float(v) for v in np.percentile(latencies, [25, 50, 75]))
    iqr = q3 - q1
    mean = float(latencies.mean())
    stddev = float(latencies.std(ddof=1)) if latencies.size > 1 else 0.0
    low, high = q1 - 1.5 * iqr, q3 + 1.5 * iqr
    inside = latencies[(latencies >= low) & (latencies <= high)]
    iqr_outliers = int(latencies.size - inside.size)
    stddev_outliers = int(np.sum(np.abs(latencies - mean) > stddev)) if stddev else 0
    return {
        "min": float(latencies.min()), "max": float(latencies.max()), "mean": mean,
        "stddev": stddev, "median": median, "iqr": iqr, "q1": q1, "q3": q3,
        "ld15iqr": float(inside.min()) if inside.size else float(latencies.min()),
        "hd15iqr": float(inside.max()) if inside.size else float(latencies.max()),
        "ops": 1.0 / mean if mean > 0 else 0.0, "total": float(latencies.sum()),
        "rounds": int(latencies.size), "iterations": 1,
        "outliers": f"{stddev_outliers};{iqr_outliers}",
        "iqr_outliers": iqr_outliers, "stddev_outliers": stddev_outliers,
    }


def _plain(value: Any) -> Any:
    if isinstance(value, (np.generic,)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def benchmark_document(frame: pd.DataFrame, metrics: pd.DataFrame,
                       meta: Mapping[str, Any]) -> dict[str, Any]:
    """The pytest-benchmark JSON document of one run."""
    latencies: dict[tuple[str, str, int], np.ndarray] = {}
    if len(frame):
        ok = frame[frame["ok"]]
        for key, group in ok.groupby(KEYS, observed=True, sort=False):
            latencies[(str(key[0]), str(key[1]), int(key[2]))] = group["latency_s"].to_numpy()
    benchmarks = []
    for row in metrics.reset_index().to_dict("records"):
        key = (str(row["experiment"]), str(row["payload_file"]), int(row["concurrency"]))
        name = case_id(*key)
        extra = {k: _plain(v) for k, v in row.items() if k in METRICS or k in ("instance_type",)}
        benchmarks.append({
            "group": key[1], "name": name, "fullname": f"fmbench::{name}", "param": name,
            "params": {"experiment": key[0], "payload_file": key[1], "concurrency": key[2]},
            "extra_info": extra, "options": {"timer": "fmbench", "disable_gc": False,
                                             "min_rounds": 0, "max_time": 0, "warmup": False},
            "stats": _stats(latencies.get(key, np.array([]))),
        })
    return {
        "machine_info": {"node": platform.node(), "machine": platform.machine(),
                         "python_version": platform.python_version(),
                         "python_implementation": platform.python_implementation(),
                         "system": platform.system()},
        "commit_info": dict(meta.get("commit_info") or {}),
        "benchmarks": benchmarks,
        "datetime": dt.datetime.now(dt.UTC).isoformat(),
        "version": "5.0.0",
        "fmbench": {"version": __version__, "run_id": meta.get("run_id"),
                    "name": meta.get("name")},
    }


def write_benchmark_json(path: Path, frame: pd.DataFrame, metrics: pd.DataFrame,
                         meta: Mapping[str, Any]) -> Path:
    path.write_text(json.dumps(benchmark_document(frame, metrics, meta), indent=2) + "\n")
    return path


# -- reading a baseline ---------------------------------------------------------------------

def resolve_baseline(reference: str, *, invocation_dir: Path, results_root: Path,
                     current_run: Path | None = None, results_dir: Path | None = None) -> Path:
    """A file, a results dir, a run id under ``results_root``, or ``latest`` (previous run).

    ``results_dir``: a fixed ``--fmbench-results-dir`` that every run writes into; ``latest``
    is then the run it still holds, else the newest run set aside in its ``previous/``
    (``pytest_fmbench.results_dir``), else the newest under ``results_root``.
    """
    candidates: list[Path] = []
    if reference == "latest":
        if results_dir is not None:
            from pytest_fmbench.results_dir import previous_runs

            candidates.append(results_dir / BENCHMARK_FILE)
            candidates += [run / BENCHMARK_FILE for run in reversed(previous_runs(results_dir))]
        runs = sorted(p for p in results_root.glob("*/" + BENCHMARK_FILE)
                      if current_run is None or p.parent != current_run)
        candidates += runs[-1:]
    else:
        path = invocation_dir / reference
        candidates += [path, path / BENCHMARK_FILE, results_root / reference / BENCHMARK_FILE]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ConfigError(
        f"no earlier run found for --fmbench-compare={reference}",
        key="--fmbench-compare",
        fix=f"give a {BENCHMARK_FILE} path, a results directory, a run id under "
        f"{results_root}, or 'latest'",
    )


def load_baseline(path: Path) -> dict[str, dict[str, Any]]:
    """Case id → metrics of an earlier run's ``benchmark.json``."""
    try:
        document = json.loads(path.read_text())
        return {b["name"]: dict(b.get("extra_info") or {}) for b in document["benchmarks"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"cannot read the baseline: {exc}", file=str(path),
                          fix=f"point --fmbench-compare at a {BENCHMARK_FILE} written by "
                          "pytest-fmbench") from None


# -- thresholds and regressions ---------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Threshold:
    metric: str
    sign: str  # "+": fail when it grows by more than amount; "-": when it shrinks by more
    amount: float
    relative: bool

    def describe(self) -> str:
        return f"{self.metric}:{self.sign}{self.amount:g}{'%' if self.relative else ''}"

    def tripped(self, old: float, new: float) -> bool:
        delta = (new - old) if self.sign == "+" else (old - new)
        limit = abs(old) * self.amount / 100 if self.relative else self.amount
        return delta > limit


def parse_thresholds(specs: Sequence[str]) -> list[Threshold]:
    """``latency_p95:+10%,tpm:-10%`` (repeatable, comma-separated)."""
    out = []
    for spec in specs:
        for part in filter(None, (p.strip() for p in spec.split(","))):
            match = _THRESHOLD.match(part)
            if not match:
                raise ConfigError(
                    f"cannot read the threshold '{part}'", key="--fmbench-compare-fail",
                    fix="write METRIC:+N% (fail when it grows by more than N %) or METRIC:-N% "
                    "(when it shrinks), e.g. latency_p95:+10%,tpm:-10%")
            name = ALIASES.get(match.group(1), match.group(1))
            if name not in METRICS:
                raise ConfigError(
                    f"unknown metric '{match.group(1)}'", key="--fmbench-compare-fail",
                    fix=f"use one of: {', '.join(sorted([*METRICS, *ALIASES]))}")
            out.append(Threshold(name, match.group(2), float(match.group(3)), bool(match.group(4))))
    return out


@dataclasses.dataclass(frozen=True)
class Change:
    case: str
    metric: str
    old: float
    new: float
    threshold: Threshold | None

    @property
    def relative(self) -> float:
        return (self.new - self.old) / abs(self.old) if self.old else float("inf")

    @property
    def regressed(self) -> bool:
        return self.threshold is not None and self.threshold.tripped(self.old, self.new)

    def line(self) -> str:
        unit = METRICS[self.metric].unit
        change = f"{self.relative:+.1%}" if math.isfinite(self.relative) else "new"
        limit = f" (limit {self.threshold.describe()})" if self.threshold else ""
        return (f"{self.metric} {self.old:.4g} → {self.new:.4g} {unit} ({change}){limit}: "
                f"{self.case}")


def compare(current: Mapping[str, Mapping[str, Any]], baseline: Mapping[str, Mapping[str, Any]],
            thresholds: Sequence[Threshold]) -> tuple[list[Change], list[str]]:
    """Changes of every thresholded metric for cases in both runs, and cases only in one."""
    changes = []
    for case in sorted(set(current) & set(baseline)):
        for threshold in thresholds:
            old, new = baseline[case].get(threshold.metric), current[case].get(threshold.metric)
            if isinstance(old, (int, float)) and isinstance(new, (int, float)) and _number(old) \
                    and _number(new):
                changes.append(Change(case, threshold.metric, float(old), float(new), threshold))
    unmatched = sorted(set(current) ^ set(baseline))
    return changes, unmatched


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
