"""A SageMaker endpoint's CloudWatch metrics for one case's window (``get_metric_data``).

Two namespaces, both with dimensions ``EndpointName`` and ``VariantName``:
``/aws/sagemaker/Endpoints`` (instance utilisation: CPU, memory, GPU, GPU memory, disk, in
percent, 100 % per vCPU or GPU) and ``AWS/SageMaker`` (invocations, errors, model and
overhead latency in microseconds). CloudWatch keeps these at a **1-minute granularity**: the
window is the case's start and end widened to whole minutes, so a case shorter than a minute
shares its minutes with what ran just before or after it, and the last minute may still be
incomplete when it is read right after the case (CloudWatch publishes with a delay).
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterable
from typing import Any

PERIOD_S = 60
UTILIZATION_NAMESPACE = "/aws/sagemaker/Endpoints"
INVOCATION_NAMESPACE = "AWS/SageMaker"

# (namespace, CloudWatch metric, statistics read)
QUERIES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    (UTILIZATION_NAMESPACE, "CPUUtilization", ("Average", "Maximum")),
    (UTILIZATION_NAMESPACE, "MemoryUtilization", ("Average", "Maximum")),
    (UTILIZATION_NAMESPACE, "GPUUtilization", ("Average", "Maximum")),
    (UTILIZATION_NAMESPACE, "GPUMemoryUtilization", ("Average", "Maximum")),
    (UTILIZATION_NAMESPACE, "DiskUtilization", ("Average", "Maximum")),
    (INVOCATION_NAMESPACE, "Invocations", ("Sum",)),
    (INVOCATION_NAMESPACE, "Invocation4XXErrors", ("Sum",)),
    (INVOCATION_NAMESPACE, "Invocation5XXErrors", ("Sum",)),
    (INVOCATION_NAMESPACE, "ModelLatency", ("Average", "Maximum")),
    (INVOCATION_NAMESPACE, "OverheadLatency", ("Average", "Maximum")),
)


@dataclasses.dataclass(frozen=True)
class CloudWatchTarget:
    """Which endpoint variant, where (``endpoint_url``: a non-AWS CloudWatch, e.g. moto)."""

    endpoint_name: str
    variant_name: str = "AllTraffic"
    region: str | None = None


def window(start_ns: int, end_ns: int) -> tuple[datetime.datetime, datetime.datetime]:
    """The case's span widened to whole minutes (CloudWatch's period here)."""
    start_s = start_ns // 1_000_000_000 // PERIOD_S * PERIOD_S
    end_s = -(-end_ns // 1_000_000_000 // PERIOD_S) * PERIOD_S
    end_s = max(end_s, start_s + PERIOD_S)
    utc = datetime.UTC
    return (datetime.datetime.fromtimestamp(start_s, utc), datetime.datetime.fromtimestamp(end_s, utc))


def queries(target: CloudWatchTarget) -> list[dict[str, Any]]:
    dimensions = [{"Name": "EndpointName", "Value": target.endpoint_name},
                  {"Name": "VariantName", "Value": target.variant_name}]
    out = []
    for index, (namespace, metric, stats) in enumerate(QUERIES):
        for stat in stats:
            out.append({
                "Id": f"m{index}{stat.lower()}",
                "Label": f"{metric}:{stat}",
                "MetricStat": {"Metric": {"Namespace": namespace, "MetricName": metric,
                                          "Dimensions": dimensions},
                               "Period": PERIOD_S, "Stat": stat},
                "ReturnData": True,
            })
    return out


def fetch_case_metrics(client: Any, target: CloudWatchTarget, start_ns: int,
                       end_ns: int) -> list[dict[str, Any]]:
    """One telemetry sample per minute of the window: ``{"t_ns", "source": "cloudwatch",
    "values": {"CPUUtilization:Average": ..., ...}}``, oldest first."""
    start, end = window(start_ns, end_ns)
    by_time: dict[int, dict[str, float]] = {}
    request: dict[str, Any] = {"MetricDataQueries": queries(target), "StartTime": start,
                               "EndTime": end, "ScanBy": "TimestampAscending"}
    while True:
        response = client.get_metric_data(**request)
        for result in response.get("MetricDataResults") or []:
            label = _label(result)
            for stamp, value in zip(result.get("Timestamps") or [], result.get("Values") or []):
                t_ns = int(stamp.timestamp()) * 1_000_000_000
                by_time.setdefault(t_ns, {})[label] = float(value)
        token = response.get("NextToken")
        if not token:
            break
        request["NextToken"] = token
    return [{"t_ns": t, "source": "cloudwatch", "values": values} for t, values in sorted(by_time.items())]


def _label(result: dict[str, Any]) -> str:
    """Our ``Metric:Stat`` label, from the query id (labels may be rewritten by the service)."""
    query_id = str(result.get("Id") or "")
    for index, (_, metric, stats) in enumerate(QUERIES):
        for stat in stats:
            if query_id == f"m{index}{stat.lower()}":
                return f"{metric}:{stat}"
    return str(result.get("Label") or query_id)


def aggregates(samples: Iterable[dict[str, Any]]) -> dict[str, float]:
    """The ``sagemaker_*`` metrics of one case from its CloudWatch samples."""
    series: dict[str, list[float]] = {}
    for sample in samples:
        for label, value in (sample.get("values") or {}).items():
            series.setdefault(label, []).append(float(value))

    def mean(label: str) -> float | None:
        values = series.get(label)
        return sum(values) / len(values) if values else None

    def top(label: str) -> float | None:
        values = series.get(label)
        return max(values) if values else None

    def total(label: str) -> float | None:
        values = series.get(label)
        return sum(values) if values else None

    micro = 1e-6  # ModelLatency and OverheadLatency are in microseconds
    found = {
        "sagemaker_cpu_utilization_mean": mean("CPUUtilization:Average"),
        "sagemaker_cpu_utilization_max": top("CPUUtilization:Maximum"),
        "sagemaker_memory_utilization_max": top("MemoryUtilization:Maximum"),
        "sagemaker_gpu_utilization_mean": mean("GPUUtilization:Average"),
        "sagemaker_gpu_utilization_max": top("GPUUtilization:Maximum"),
        "sagemaker_gpu_memory_utilization_max": top("GPUMemoryUtilization:Maximum"),
        "sagemaker_disk_utilization_max": top("DiskUtilization:Maximum"),
        "sagemaker_invocations": total("Invocations:Sum"),
        "sagemaker_invocation_4xx_errors": total("Invocation4XXErrors:Sum"),
        "sagemaker_invocation_5xx_errors": total("Invocation5XXErrors:Sum"),
        "sagemaker_model_latency_mean": _scaled(mean("ModelLatency:Average"), micro),
        "sagemaker_model_latency_max": _scaled(top("ModelLatency:Maximum"), micro),
        "sagemaker_overhead_latency_mean": _scaled(mean("OverheadLatency:Average"), micro),
    }
    return {name: value for name, value in found.items() if value is not None}


def _scaled(value: float | None, factor: float) -> float | None:
    return None if value is None else value * factor
