"""The serving engine's Prometheus ``/metrics``: one scrape → our signals.

Each engine names the same facts differently; ``SIGNALS`` maps our signal names to the metric
names of vLLM (V0 and V1), SGLang and TGI, first match wins. Gauges are read as they are;
counters (``kind == "counter"``) are kept as their running totals and turned into per-case
deltas and rates by ``aggregate``. Metric names a user lists (``telemetry.server_metrics``)
are recorded under their own name. Parsing uses the Prometheus client library's text-format
parser; a metric with several label sets (one per model, per GPU) is summed.
"""

from __future__ import annotations

import dataclasses
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal


@dataclasses.dataclass(frozen=True)
class Signal:
    name: str
    kind: Literal["gauge", "counter"]
    meaning: str
    # Sample names (as exposed, ``_total`` included) in the order tried.
    sources: tuple[str, ...]


SIGNALS: tuple[Signal, ...] = (
    Signal("running", "gauge", "requests being processed (in the running batch)",
           ("vllm:num_requests_running", "sglang:num_running_reqs", "tgi_batch_current_size")),
    Signal("waiting", "gauge", "requests queued in the server, not yet running",
           ("vllm:num_requests_waiting", "sglang:num_queue_reqs", "tgi_queue_size")),
    Signal("kv_cache_usage", "gauge", "fraction of the KV cache in use (0..1)",
           ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc", "sglang:token_usage")),
    Signal("batch_size", "gauge", "requests in the batch being run",
           ("tgi_batch_current_size", "vllm:num_requests_running", "sglang:num_running_reqs")),
    Signal("prefix_cache_hit_rate", "gauge", "prefix-cache hit rate as the server reports it (0..1)",
           ("vllm:gpu_prefix_cache_hit_rate", "sglang:cache_hit_rate")),
    Signal("prefix_cache_hits", "counter", "prefix-cache hits (tokens), running total",
           ("vllm:prefix_cache_hits_total", "vllm:gpu_prefix_cache_hits_total")),
    Signal("prefix_cache_queries", "counter", "prefix-cache lookups (tokens), running total",
           ("vllm:prefix_cache_queries_total", "vllm:gpu_prefix_cache_queries_total")),
    Signal("preemptions", "counter", "requests preempted by the scheduler, running total",
           ("vllm:num_preemptions_total", "sglang:num_retracted_reqs_total")),
    Signal("generation_tokens", "counter", "tokens generated, running total",
           ("vllm:generation_tokens_total", "sglang:generation_tokens_total",
            "tgi_request_generated_tokens_sum")),
    Signal("prompt_tokens", "counter", "prompt tokens processed, running total",
           ("vllm:prompt_tokens_total", "sglang:prompt_tokens_total", "tgi_request_input_length_sum")),
)
SIGNAL_KINDS = {s.name: s.kind for s in SIGNALS}
# A user-listed metric is recorded under ``metric:<its name>``.
USER_PREFIX = "metric:"


def samples_of(text: str) -> dict[str, float]:
    """Every sample of an exposition, by sample name; label sets of one name are summed."""
    from prometheus_client.parser import text_string_to_metric_families

    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            totals[sample.name] = totals.get(sample.name, 0.0) + float(sample.value)
    return totals


def signals_from(values: Mapping[str, float], extra: Sequence[str] = ()) -> dict[str, float]:
    """Our signals (and the user's metrics) from one scrape's samples."""
    out: dict[str, float] = {}
    for signal in SIGNALS:
        for name in signal.sources:
            if name in values:
                out[signal.name] = values[name]
                break
    for name in extra:
        # The user may name a counter without its exposed suffix, or a histogram's family.
        for candidate in (name, f"{name}_total", f"{name}_sum"):
            if candidate in values:
                out[USER_PREFIX + name] = values[candidate]
                break
    return out


def engine_of(values: Iterable[str]) -> str:
    """Which engine an exposition comes from (for the report), by its metric prefixes."""
    names = list(values)
    for prefix, engine in (("vllm:", "vLLM"), ("sglang:", "SGLang"), ("tgi_", "TGI")):
        if any(name.startswith(prefix) for name in names):
            return engine
    return "unknown engine"


def fetch(url: str, timeout_s: float) -> str:
    """The exposition text; raises OSError (URLError, HTTPError, timeouts) when it fails."""
    request = urllib.request.Request(url, headers={"Accept": "text/plain;version=0.0.4"})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return str(response.read().decode("utf-8", "replace"))


def probe(url: str, timeout_s: float = 3.0) -> tuple[bool, str]:
    """(True, engine) when ``url`` answers with Prometheus metrics; else (False, why not)."""
    try:
        import prometheus_client  # noqa: F401 - the parser, imported before any request
    except ImportError:
        return False, "prometheus-client is not installed (pip install 'pytest-fmbench[telemetry]')"
    try:
        values = samples_of(fetch(url, timeout_s))
    except urllib.error.HTTPError as exc:
        return False, f"{url} answered HTTP {exc.code}"
    except (OSError, ValueError) as exc:
        return False, f"{url} did not answer ({type(exc).__name__}: {exc})"
    if not values:
        return False, f"{url} answered without metrics"
    return True, engine_of(values)
