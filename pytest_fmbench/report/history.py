"""Results over time: pytest-benchmark-compatible JSON, and regressions against a baseline.

Each run writes ``benchmark.json`` in pytest-benchmark's format (one benchmark per
combination, latency statistics over its successful requests, every metric in
``extra_info``), so ``pytest-benchmark compare`` reads it. ``--fmbench-compare`` names an
earlier run; ``--fmbench-compare-fail=latency_p95:+10%,tpm:-10%`` fails on regressions: a
``+`` threshold (on a lower-is-better metric) trips when the metric grows by more than the
amount, a ``-`` threshold (higher-is-better) when it shrinks by more; a sign pointing the
metric's better way is a usage error.

Noise is not a regression (docs/load-levels.md): a metric with a 95 % interval in both runs
(``metrics.CI_METRICS``) trips only when the whole interval of the change lies beyond the
threshold; one without trips on its point values only when both runs have at least
``MIN_REQUESTS`` requests (else it is listed as too few to judge). A metric that became
undefined (every request failed) and an error rate that rose beyond chance are regressions.
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
from typing import Any, TypeGuard

import numpy as np
import pandas as pd

from pytest_fmbench import __version__
from pytest_fmbench.cases import case_id
from pytest_fmbench.errors import ConfigError
from pytest_fmbench.metrics import KEYS, METRICS

CI_SUFFIXES = ("_ci_low", "_ci_high")

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
    latencies: dict[tuple[str, str, int, str], np.ndarray] = {}
    if len(frame):
        ok = frame[frame["ok"]]
        if "level" not in ok.columns:  # records from before load levels
            ok = ok.assign(level="")
        for key, group in ok.groupby(KEYS, observed=True, sort=False):
            latencies[(str(key[0]), str(key[1]), int(key[2]), str(key[3]))] = \
                group["latency_s"].to_numpy()
    benchmarks = []
    for row in metrics.reset_index().to_dict("records"):
        key = (str(row["experiment"]), str(row["payload_file"]), int(row["concurrency"]),
               str(row.get("level") or ""))
        name = case_id(*key)
        # Every metric, its 95 % interval (``*_ci_low``/``*_ci_high``) and the request count
        # the comparison's statistics need.
        extra = {k: _plain(v) for k, v in row.items()
                 if k in METRICS or k in ("instance_type", "repeats") or k.endswith(CI_SUFFIXES)}
        benchmarks.append({
            "group": key[1], "name": name, "fullname": f"fmbench::{name}", "param": name,
            "params": {"experiment": key[0], "payload_file": key[1], "concurrency": key[2],
                       "level": key[3]},
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
            better = METRICS[name].better
            if (better, match.group(2)) in (("lower", "-"), ("higher", "+")) or better == "none":
                wanted = {"lower": "+", "higher": "-"}.get(better)
                raise ConfigError(
                    f"'{part}': {name} is {'better ' + better if better != 'none' else 'neither better higher nor lower'}, "
                    f"so {'a ' + match.group(2) + ' change is an improvement, not a regression' if wanted else 'no change of it is a regression'}",
                    key="--fmbench-compare-fail",
                    fix=(f"write {match.group(1)}:{wanted}{match.group(3)}{match.group(4)}" if wanted
                         else "threshold a metric that has a better direction (see the glossary)"))
            out.append(Threshold(name, match.group(2), float(match.group(3)), bool(match.group(4))))
    return out


# Without intervals, a change is judged only when both runs have at least this many requests.
MIN_REQUESTS = 30


@dataclasses.dataclass(frozen=True)
class Change:
    case: str
    metric: str
    old: float
    new: float
    threshold: Threshold | None
    # The 95 % interval of new − old, when both runs carry one for the metric.
    interval: tuple[float, float] | None = None
    # Set when the verdict is not the threshold's on point values: "undefined" (the metric
    # became undefined), "error rate rose", "too few requests" (not judged).
    verdict: str = ""

    @property
    def relative(self) -> float:
        return (self.new - self.old) / abs(self.old) if self.old else float("inf")

    @property
    def regressed(self) -> bool:
        if self.verdict:
            return self.verdict in ("undefined", "error rate rose")
        if self.threshold is None:
            return False
        if self.interval is None:
            return self.threshold.tripped(self.old, self.new)
        # The whole interval of the change must lie beyond the threshold.
        low, high = self.interval
        worst_case_small = low if self.threshold.sign == "+" else -high
        limit = abs(self.old) * self.threshold.amount / 100 if self.threshold.relative \
            else self.threshold.amount
        return worst_case_small > limit

    def line(self) -> str:
        unit = METRICS[self.metric].unit
        if self.verdict == "undefined":
            return (f"{self.metric} {self.old:.4g} {unit} → undefined (every request failed): "
                    f"{self.case}")
        change = f"{self.relative:+.1%}" if math.isfinite(self.relative) else "new"
        limit = f" (limit {self.threshold.describe()})" if self.threshold else ""
        interval = ""
        if self.interval is not None:
            interval = f", 95% CI of the change {self.interval[0]:+.4g}..{self.interval[1]:+.4g}"
        note = f" [{self.verdict}]" if self.verdict else ""
        return (f"{self.metric} {self.old:.4g} → {self.new:.4g} {unit} ({change}{interval})"
                f"{limit}{note}: {self.case}")


def compare(current: Mapping[str, Mapping[str, Any]], baseline: Mapping[str, Mapping[str, Any]],
            thresholds: Sequence[Threshold]) -> tuple[list[Change], list[str]]:
    """Changes of every thresholded metric for cases in both runs (and of the error rate
    whenever a threshold is given), and cases only in one."""
    from pytest_fmbench.stats import difference_ci, proportion_rise

    changes = []
    for case in sorted(set(current) & set(baseline)):
        old_row, new_row = baseline[case], current[case]
        for threshold in thresholds:
            metric = threshold.metric
            old, new = old_row.get(metric), new_row.get(metric)
            if not _number(old):
                continue
            if not _number(new):
                if new_row.get("requests") and not new_row.get("successes") and metric != "error_rate":
                    changes.append(Change(case, metric, float(old), math.nan, threshold,
                                          verdict="undefined"))
                continue
            old_ci, new_ci = _interval(old_row, metric), _interval(new_row, metric)
            if old_ci is not None and new_ci is not None:
                interval = difference_ci(float(old), old_ci, float(new), new_ci)
                changes.append(Change(case, metric, float(old), float(new), threshold, interval))
                continue
            counts = [row.get("requests") for row in (old_row, new_row)]
            few = any(_number(c) and c < MIN_REQUESTS for c in counts)
            changes.append(Change(case, metric, float(old), float(new), threshold,
                                  verdict="too few requests" if few else ""))
        if thresholds and all(_number(row.get(k)) for row in (old_row, new_row)
                              for k in ("requests", "failures")) \
                and proportion_rise(int(old_row["failures"]), int(old_row["requests"]),
                                    int(new_row["failures"]), int(new_row["requests"])):
            changes.append(Change(case, "error_rate", float(old_row.get("error_rate") or 0),
                                  float(new_row.get("error_rate") or 0), None,
                                  verdict="error rate rose"))
    unmatched = sorted(set(current) ^ set(baseline))
    return changes, unmatched


def _interval(row: Mapping[str, Any], metric: str) -> tuple[float, float] | None:
    low, high = row.get(f"{metric}_ci_low"), row.get(f"{metric}_ci_high")
    return (float(low), float(high)) if _number(low) and _number(high) else None


def _number(value: Any) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
