"""What the endpoint was doing beside each case: server, host and cloud telemetry.

- ``prometheus``: the serving engine's /metrics (vLLM, SGLang, TGI names → our signals);
- ``host``: CPU and memory (psutil), NVIDIA GPUs (NVML), Neuron devices (neuron-monitor);
- ``cloudwatch``: a SageMaker endpoint's CloudWatch metrics for the case's window;
- ``child``: the sampler process (off the load's event loop and process);
- ``sampler``: which sources apply to a case, telemetry.jsonl, the case's aggregates;
- ``aggregate`` / ``definitions``: samples → per-case metrics (budgetable like any metric);
- ``report``: the report's telemetry section and the timeline plot.
"""
