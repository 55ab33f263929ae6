"""The per-case telemetry aggregates: names, units, direction, definitions.

Plain tuples (no import from ``metrics``), so ``metrics.METRICS`` can take them in without an
import cycle: every name here is a metric like any other (budgets, exports, glossary).
``(name, unit, better, definition)``.
"""

from __future__ import annotations

TELEMETRY_METRICS: tuple[tuple[str, str, str, str], ...] = (
    # The serving engine's /metrics (vLLM, SGLang, TGI names; see telemetry/prometheus.py).
    ("server_running_mean", "requests", "higher",
     "mean of the server's running requests over the case's scrapes (/metrics)"),
    ("server_running_max", "requests", "higher", "most running requests in one scrape (/metrics)"),
    ("server_waiting_mean", "requests", "lower",
     "mean of the server's waiting (queued) requests over the case's scrapes (/metrics)"),
    ("server_waiting_max", "requests", "lower", "most waiting requests in one scrape (/metrics)"),
    ("kv_cache_usage_mean", "fraction", "lower", "mean KV-cache usage over the case's scrapes (/metrics)"),
    ("kv_cache_usage_max", "fraction", "lower", "highest KV-cache usage in one scrape (/metrics)"),
    ("server_batch_size_mean", "requests", "higher", "mean batch size over the case's scrapes (/metrics)"),
    ("server_batch_size_max", "requests", "higher", "largest batch size in one scrape (/metrics)"),
    ("prefix_cache_hit_rate", "fraction", "higher",
     "prefix-cache hits / lookups during the case (counters), else the mean of the server's hit-rate gauge"),
    ("server_preemptions", "requests", "lower", "requests the server preempted during the case (counter delta)"),
    ("server_generation_throughput", "tokens/s", "higher",
     "tokens the server generated during the case / the time between the first and last scrape"),
    ("server_prompt_throughput", "tokens/s", "higher",
     "prompt tokens the server processed during the case / the time between the first and last scrape"),
    # The machine serving a local, command or container endpoint.
    ("host_cpu_percent_mean", "%", "lower", "mean CPU use of the serving machine, all cores (psutil)"),
    ("host_cpu_percent_max", "%", "lower", "highest CPU use of the serving machine in one sample (psutil)"),
    ("host_memory_percent_max", "%", "lower", "highest memory use of the serving machine (psutil)"),
    ("gpu_utilization_mean", "%", "higher", "mean GPU utilisation, averaged over the GPUs (NVML)"),
    ("gpu_utilization_max", "%", "higher", "highest GPU utilisation (mean over GPUs) in one sample (NVML)"),
    ("gpu_memory_percent_max", "%", "lower", "highest GPU memory in use, mean over the GPUs (NVML)"),
    ("neuron_utilization_mean", "%", "higher", "mean NeuronCore utilisation (neuron-monitor)"),
    ("neuron_utilization_max", "%", "higher", "highest NeuronCore utilisation in one report (neuron-monitor)"),
    # SageMaker's CloudWatch metrics for the case's window, at 1-minute granularity.
    ("sagemaker_cpu_utilization_mean", "%", "lower",
     "CloudWatch CPUUtilization, mean of the 1-minute averages (100 % per vCPU)"),
    ("sagemaker_cpu_utilization_max", "%", "lower", "CloudWatch CPUUtilization, highest 1-minute maximum"),
    ("sagemaker_memory_utilization_max", "%", "lower", "CloudWatch MemoryUtilization, highest 1-minute maximum"),
    ("sagemaker_gpu_utilization_mean", "%", "higher",
     "CloudWatch GPUUtilization, mean of the 1-minute averages (100 % per GPU)"),
    ("sagemaker_gpu_utilization_max", "%", "higher", "CloudWatch GPUUtilization, highest 1-minute maximum"),
    ("sagemaker_gpu_memory_utilization_max", "%", "lower",
     "CloudWatch GPUMemoryUtilization, highest 1-minute maximum (100 % per GPU)"),
    ("sagemaker_disk_utilization_max", "%", "lower", "CloudWatch DiskUtilization, highest 1-minute maximum"),
    ("sagemaker_invocations", "requests", "none", "CloudWatch Invocations summed over the case's minutes"),
    ("sagemaker_invocation_4xx_errors", "requests", "lower", "CloudWatch Invocation4XXErrors, summed"),
    ("sagemaker_invocation_5xx_errors", "requests", "lower", "CloudWatch Invocation5XXErrors, summed"),
    ("sagemaker_model_latency_mean", "s", "lower",
     "CloudWatch ModelLatency (the container's time), mean of the 1-minute averages"),
    ("sagemaker_model_latency_max", "s", "lower", "CloudWatch ModelLatency, highest 1-minute maximum"),
    ("sagemaker_overhead_latency_mean", "s", "lower",
     "CloudWatch OverheadLatency (SageMaker's own time), mean of the 1-minute averages"),
)
TELEMETRY_METRIC_NAMES = tuple(name for name, *_ in TELEMETRY_METRICS)
