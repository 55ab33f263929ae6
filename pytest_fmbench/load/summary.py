"""The one-line summary printed after each case (the full metrics come from ``metrics``)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from pytest_fmbench.load.records import RequestRecord


def case_summary(records: Sequence[RequestRecord]) -> dict[str, Any]:
    """Requests, errors, TPM, latency p50/p95 and TTFT p50 over all requests of a case."""
    ok = [r for r in records if r.ok]
    summary: dict[str, Any] = {
        "requests": len(records),
        "errors": len(records) - len(ok),
        "error_classes": dict(sorted(Counter(r.error for r in records if r.error).items())),
        "tpm": None, "latency_p50": None, "latency_p95": None, "ttft_p50": None,
    }
    if records:
        duration_s = (max(r.last_byte_ns for r in records) - min(r.sent_ns for r in records)) / 1e9
        if duration_s > 0:
            summary["tpm"] = len(ok) / duration_s * 60
    if ok:
        latencies = np.array([r.latency_s for r in ok])
        summary["latency_p50"] = float(np.percentile(latencies, 50))
        summary["latency_p95"] = float(np.percentile(latencies, 95))
        ttfts = [t for t in (r.ttft_s for r in ok) if t is not None]
        if ttfts:
            summary["ttft_p50"] = float(np.percentile(ttfts, 50))
    return summary


def format_summary(case_id: str, summary: dict[str, Any]) -> str:
    def seconds(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f} s"

    tpm = "n/a" if summary["tpm"] is None else f"{summary['tpm']:.1f}"
    errors = f"{summary['errors']} errors"
    if summary["error_classes"]:
        errors += " (" + ", ".join(f"{k} {v}" for k, v in summary["error_classes"].items()) + ")"
    return (
        f"[fmbench] {case_id}: {summary['requests']} requests, {errors}, TPM {tpm}, "
        f"latency p50 {seconds(summary['latency_p50'])} p95 {seconds(summary['latency_p95'])}, "
        f"TTFT p50 {seconds(summary['ttft_p50'])}"
    )


class LogHistogram:
    """A mergeable quantile sketch of positive values with relative error ``alpha``.

    Values fall in logarithmic buckets ``(γ^(i-1), γ^i]``, γ = (1+α)/(1-α); a bucket
    answers with the point within ``alpha`` (relative) of every value in it, so a quantile is
    within ``alpha`` of a value of the data at that rank. Memory is one counter per bucket
    in use (a few hundred from microseconds to hours), whatever the count. Zero and negative
    values are counted apart and answer 0.
    """

    def __init__(self, alpha: float = 0.01) -> None:
        self.alpha = alpha
        self._gamma = (1 + alpha) / (1 - alpha)
        self._log_gamma = math.log(self._gamma)
        self.buckets: Counter[int] = Counter()
        self.zeros = 0
        self.count = 0

    def add(self, value: float) -> None:
        self.count += 1
        if value <= 0:
            self.zeros += 1
        else:
            self.buckets[math.ceil(math.log(value) / self._log_gamma)] += 1

    def merge(self, other: LogHistogram) -> None:
        if other.alpha != self.alpha:
            raise ValueError("sketches with different relative errors do not merge")
        self.buckets.update(other.buckets)
        self.zeros += other.zeros
        self.count += other.count

    def quantile(self, q: float) -> float | None:
        """The value at rank ``q`` (0..1) in ``[0, count-1]``, nearest rank."""
        if not self.count:
            return None
        rank = round(q * (self.count - 1))
        if rank < self.zeros:
            return 0.0
        seen = self.zeros
        for index in sorted(self.buckets):
            seen += self.buckets[index]
            if seen > rank:
                return 2 * self._gamma ** index / (self._gamma + 1)
        return None  # unreachable: the counts add up to count


class CaseAggregate:
    """The case summary from the records as they complete, in bounded memory.

    Counts, error classes and the duration are exact; latency and TTFT percentiles come from
    ``LogHistogram`` sketches (within 1 %): the exact figures are in the report, computed
    from the records file.
    """

    def __init__(self) -> None:
        self.requests = 0
        self.errors: Counter[str] = Counter()
        self.first_sent_ns: int | None = None
        self.last_byte_ns: int | None = None
        self.latency = LogHistogram()
        self.ttft = LogHistogram()

    def add(self, record: RequestRecord) -> None:
        self.requests += 1
        if self.first_sent_ns is None or record.sent_ns < self.first_sent_ns:
            self.first_sent_ns = record.sent_ns
        if self.last_byte_ns is None or record.last_byte_ns > self.last_byte_ns:
            self.last_byte_ns = record.last_byte_ns
        if record.error:
            self.errors[record.error] += 1
            return
        self.latency.add(record.latency_s)
        ttft = record.ttft_s
        if ttft is not None:
            self.ttft.add(ttft)

    def summary(self) -> dict[str, Any]:
        """The same keys as ``case_summary``."""
        failed = sum(self.errors.values())
        tpm = None
        if self.first_sent_ns is not None and self.last_byte_ns is not None:
            duration_s = (self.last_byte_ns - self.first_sent_ns) / 1e9
            if duration_s > 0:
                tpm = (self.requests - failed) / duration_s * 60
        return {
            "requests": self.requests,
            "errors": failed,
            "error_classes": dict(sorted(self.errors.items())),
            "tpm": tpm,
            "latency_p50": self.latency.quantile(0.50),
            "latency_p95": self.latency.quantile(0.95),
            "ttft_p50": self.ttft.quantile(0.50),
        }
