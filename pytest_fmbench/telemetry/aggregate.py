"""One case's telemetry samples → its aggregates (the metrics of ``definitions``).

Gauges give a mean and a maximum over the case's samples; counters give what happened during
the case (last − first; a counter that went down, a server restart, counts from zero).
The report and gate mode ``every`` both use ``case_aggregates``, so they cannot disagree.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

from pytest_fmbench.telemetry import cloudwatch


def _series(samples: Iterable[dict[str, Any]], source: str, signal: str) -> list[tuple[int, float]]:
    out = []
    for sample in samples:
        if sample.get("source") != source:
            continue
        value = (sample.get("values") or {}).get(signal)
        if isinstance(value, (int, float)):
            out.append((int(sample["t_ns"]), float(value)))
    out.sort()
    return out


def _mean_max(points: list[tuple[int, float]]) -> tuple[float, float] | None:
    if not points:
        return None
    values = [v for _, v in points]
    return sum(values) / len(values), max(values)


def counter_delta(points: list[tuple[int, float]]) -> float | None:
    """Increase of a running total over the points; a drop (restart) counts from zero."""
    if len(points) < 2:
        return None
    total = 0.0
    for (_, before), (_, after) in itertools.pairwise(points):
        total += after - before if after >= before else after
    return total


def _gauges(out: dict[str, float], samples: list[dict[str, Any]], source: str,
            pairs: Iterable[tuple[str, str, bool]]) -> None:
    """``(signal, metric prefix, with mean)``: ``<prefix>_max`` and maybe ``<prefix>_mean``."""
    for signal, prefix, with_mean in pairs:
        found = _mean_max(_series(samples, source, signal))
        if found is None:
            continue
        if with_mean:
            out[f"{prefix}_mean"] = found[0]
        out[f"{prefix}_max"] = found[1]


def server_aggregates(samples: list[dict[str, Any]]) -> dict[str, float]:
    out: dict[str, float] = {}
    _gauges(out, samples, "prometheus", [("running", "server_running", True),
                                         ("waiting", "server_waiting", True),
                                         ("kv_cache_usage", "kv_cache_usage", True),
                                         ("batch_size", "server_batch_size", True)])
    hits = counter_delta(_series(samples, "prometheus", "prefix_cache_hits"))
    lookups = counter_delta(_series(samples, "prometheus", "prefix_cache_queries"))
    if hits is not None and lookups:
        out["prefix_cache_hit_rate"] = hits / lookups
    else:
        rate = _mean_max(_series(samples, "prometheus", "prefix_cache_hit_rate"))
        if rate is not None:
            out["prefix_cache_hit_rate"] = rate[0]
    preemptions = counter_delta(_series(samples, "prometheus", "preemptions"))
    if preemptions is not None:
        out["server_preemptions"] = preemptions
    for signal, metric in (("generation_tokens", "server_generation_throughput"),
                           ("prompt_tokens", "server_prompt_throughput")):
        points = _series(samples, "prometheus", signal)
        delta = counter_delta(points)
        if delta is not None and points[-1][0] > points[0][0]:
            out[metric] = delta / ((points[-1][0] - points[0][0]) / 1e9)
    return out


def host_aggregates(samples: list[dict[str, Any]]) -> dict[str, float]:
    out: dict[str, float] = {}
    _gauges(out, samples, "host", [("host_cpu_percent", "host_cpu_percent", True),
                                   ("host_memory_percent", "host_memory_percent", False)])
    _gauges(out, samples, "nvml", [("gpu_utilization", "gpu_utilization", True),
                                   ("gpu_memory_percent", "gpu_memory_percent", False)])
    _gauges(out, samples, "neuron", [("neuron_utilization", "neuron_utilization", True)])
    return out


def case_aggregates(samples: list[dict[str, Any]]) -> dict[str, float]:
    """Every aggregate the samples of one case support (absent when no sample backs it)."""
    cloud = [s for s in samples if s.get("source") == "cloudwatch"]
    return {**server_aggregates(samples), **host_aggregates(samples), **cloudwatch.aggregates(cloud)}


def user_metric_aggregates(samples: list[dict[str, Any]]) -> dict[str, tuple[float, float]]:
    """The user's listed /metrics names: (mean, max) of each over the case, for the report."""
    from pytest_fmbench.telemetry.prometheus import USER_PREFIX

    names = sorted({k for s in samples if s.get("source") == "prometheus"
                    for k in (s.get("values") or {}) if k.startswith(USER_PREFIX)})
    out = {}
    for name in names:
        found = _mean_max(_series(samples, "prometheus", name))
        if found is not None:
            out[name.removeprefix(USER_PREFIX)] = found
    return out
