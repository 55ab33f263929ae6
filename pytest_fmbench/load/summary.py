"""The one-line summary printed after each case (the full metrics come from ``metrics``)."""

from __future__ import annotations

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
