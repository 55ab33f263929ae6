"""How long one benchmark case may take, so a suite-wide test timeout never cuts it short.

pytest-timeout applies its ``timeout`` (ini, ``--timeout``, ``PYTEST_TIMEOUT``) to every test
item, setup and teardown included. A benchmark case's setup may deploy a SageMaker endpoint
(5-15 minutes) and its call may run a load of ``duration_s: 3600``, so a timeout sized for a
unit-test suite kills real runs. Each case therefore carries its own timeout, derived here from
the config as an upper bound of what the case can legitimately take:

    deploy (first case of an experiment) + warm-up + the load's bound + teardown, plus a margin

``None`` means no bound can be derived (or the user asked for none): the case then runs without
a timeout. pytest-free; the plugin turns the value into a ``timeout`` marker.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from pytest_fmbench.config.model import Config, Experiment, LoadSettings, RetrySettings
from pytest_fmbench.endpoints import container_spec

# Building payload files (tokenizing a dataset) and starting load processes happen inside the
# first case of an experiment; neither has a timeout of its own.
SETUP_MARGIN_S = 300.0
# Proportional headroom on top of the computed bound (slow machines, GC, scheduling).
MARGIN_FACTOR = 1.25
# Tearing down: a process group gets its stop timeout; a SageMaker delete may retry and wait.
SAGEMAKER_TEARDOWN_S = 900.0
LOCAL_TEARDOWN_S = 60.0
# A container's `run` beyond its server's start: pulling the image (several GB for vLLM).
CONTAINER_START_S = 900.0
# load.max_case_s: a load process still running this long after the deadline is killed.
PROCESS_KILL_GRACE_S = 10.0


_TIMESTAMP = re.compile(r'"timestamp"\s*:\s*(-?[0-9.eE+-]+)')


def parse_case_timeout(text: str | None) -> float | None | str:
    """``auto`` (or unset) → ``"auto"``; ``none``/``0`` → ``None``; a number of seconds → it."""
    value = (text or "auto").strip().lower()
    if value == "auto":
        return "auto"
    if value in ("none", "off", "0"):
        return None
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"expected seconds, 'auto' or 'none', got '{text}'") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"expected a positive number of seconds, got '{text}'")
    return seconds or None


def case_timeout_s(config: Config, experiment: Experiment) -> float | None:
    """An upper bound, in seconds, of one case of ``experiment`` (deploy and teardown included)."""
    load = config.load_for(experiment)
    request = request_bound_s(load, _retry(experiment), experiment.resolved_backend or "")
    warmup = (load.warmup_requests or 0) * request
    workloads = workload_bound_s(config, experiment, request)
    if workloads is None:
        return None  # a workload whose length cannot be known before it is read
    loading = max(load_bound_s(load, experiment, request), workloads)
    if load.max_case_s is not None:
        loading = min(loading, load.max_case_s + PROCESS_KILL_GRACE_S)
    body = deploy_bound_s(experiment) + warmup + loading + teardown_bound_s(experiment)
    return math.ceil(body * MARGIN_FACTOR + SETUP_MARGIN_S)


def request_bound_s(load: LoadSettings, retry: RetrySettings | None, backend: str = "") -> float:
    """One request, with every retry it may make and their back-off."""
    timeout = load.request_timeout_s or 120.0
    if retry is None:
        return timeout
    retries = retry.retries_for(backend)
    return timeout * (1 + retries) + retries * retry.max_backoff_s


def load_bound_s(load: LoadSettings, experiment: Experiment, request_s: float) -> float:
    """The longest the load of any case of the experiment can run."""
    unbounded = _load_bound_s(load, experiment, request_s) * _rounds(load)
    if load.max_case_s is not None:
        # The case's own deadline; its load processes get 10 s more before they are killed.
        return min(unbounded, load.max_case_s + PROCESS_KILL_GRACE_S)
    return unbounded


def _load_bound_s(load: LoadSettings, experiment: Experiment, request_s: float) -> float:
    # fewest in flight: the most rounds (load levels only: the slowest is one at a time)
    concurrency = min(experiment.concurrency_levels, default=1)
    max_iters = load.max_iters_per_combination or 105
    if load.pattern == "waves":
        return max_iters * request_s  # each wave ends when its slowest request does
    warmup = load.warmup_s or 0.0
    bounds: list[float] = []
    if load.duration_s is not None:
        # Sending stops at the duration; requests in flight then drain.
        bounds.append(warmup + load.duration_s + request_s)
    requests = load.requests if load.requests is not None else (
        None if load.duration_s is not None else max_iters * concurrency)
    if requests is not None:
        rounds = math.ceil(requests / concurrency) * request_s
        rates = [level.rate for level in (experiment.rates or load.rates or [])]
        if load.pattern == "rate" and load.rate:
            rates.append(load.rate)
        schedule = requests / min(rates) if rates else 0.0
        bounds.append(warmup + schedule + rounds)
    return min(bounds)


def workload_bound_s(config: Config, experiment: Experiment, request_s: float) -> float | None:
    """The longest a trace or sessions workload of the experiment runs (0: none; None: not
    known without reading a conversation file). A trace runs to its last offset plus one
    request; sessions in rounds of c conversations, each turn a request and a think time."""
    # Rate levels only (no concurrency levels): the workload's requests drain one at a time.
    concurrency = min(experiment.concurrency_levels, default=1)
    longest = 0.0
    for payload_file in experiment.payload_files:
        workload = config.datasets.workload(payload_file)
        if workload is None:
            continue
        if workload.kind == "trace" and workload.path is not None:
            base = config.source_path.parent if config.source_path else Path.cwd()
            span = _trace_span_s(base / workload.path, workload.requests)
            if span is None:
                return None
            # queued requests drain c at a time after the last offset, in the worst case
            longest = max(longest, span / workload.speed + request_s * concurrency)
        elif workload.kind == "sessions":
            if workload.requests is None or workload.turns is None:
                return None
            rounds = math.ceil(workload.requests / concurrency)
            longest = max(longest, rounds * workload.turns * (request_s + workload.think_time_s))
    return longest


def _trace_span_s(path: Path, lines: int | None) -> float | None:
    """Last minus first timestamp (ms in the file) of a trace's first ``lines`` lines."""
    first = last = None
    try:
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle):
                if lines is not None and number >= lines:
                    break
                match = _TIMESTAMP.search(line)
                if match:
                    stamp = float(match.group(1))
                    first = stamp if first is None else min(first, stamp)
                    last = stamp if last is None else max(last, stamp)
    except OSError:
        return None  # reported as a config error when the case reads the workload
    return None if first is None or last is None else (last - first) / 1000
def _rounds(load: LoadSettings) -> int:
    """How many loads one case may run: its repeats, times the levels of a sweep or search
    (each level bounded like one case)."""
    levels = 1
    if load.sweep is not None:
        levels = max(levels, load.sweep.levels + 1)
    if load.slo_search is not None:
        per_level = load.requests or 100
        levels = max(levels, 2 + math.ceil(load.slo_search.max_requests / per_level))
    return (load.repeats or 1) * levels


def deploy_bound_s(experiment: Experiment) -> float:
    backend = experiment.resolved_backend
    if backend == "sagemaker" and experiment.deploy:
        settings = experiment.sagemaker
        return settings.deploy_timeout_s if settings is not None else 3600.0
    if backend == "local":
        return experiment.local.startup_timeout_s if experiment.local is not None else 300.0
    if backend == "openai" and experiment.openai is not None and experiment.openai.deploy:
        return experiment.openai.deploy.startup_timeout_s
    if backend == "container":
        return container_spec.startup_timeout_s(experiment) + CONTAINER_START_S
    return 0.0


def teardown_bound_s(experiment: Experiment) -> float:
    backend = experiment.resolved_backend
    if backend == "sagemaker" and experiment.deploy:
        return SAGEMAKER_TEARDOWN_S
    if backend == "openai" and experiment.openai is not None and experiment.openai.deploy:
        return experiment.openai.deploy.stop_timeout_s + LOCAL_TEARDOWN_S
    if backend == "container":
        return container_spec.stop_timeout_s(experiment) + LOCAL_TEARDOWN_S
    return LOCAL_TEARDOWN_S


def _retry(experiment: Experiment) -> RetrySettings | None:
    if experiment.resolved_backend == "sagemaker":
        return experiment.sagemaker.retry if experiment.sagemaker else RetrySettings()
    if experiment.resolved_backend == "bedrock":
        return experiment.bedrock.retry if experiment.bedrock else RetrySettings()
    return None
