"""The one small interface every backend implements.

The load engine, metrics and report only ever see ``Endpoint`` / ``EndpointClient`` and the
``InferenceResult`` they return, so they never know which backend they talk to.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol, runtime_checkable


@dataclasses.dataclass(frozen=True)
class InferenceRequest:
    """One prompt to send, with the inference parameters of the experiment."""

    prompt: str
    parameters: dict[str, Any] = dataclasses.field(default_factory=dict)
    prompt_tokens: int | None = None  # counted when the payload file was built
    payload_id: str = ""              # the payload's id (its dataset record), for accuracy
    # Workloads (data/workloads.py). A chat history to send instead of ``prompt`` (multi-turn
    # sessions, ShareGPT conversations); ``prompt`` is then its last user message.
    messages: tuple[dict[str, str], ...] | None = None
    # Trace replay: when the request is due, from the case start (speed factor applied).
    offset_ns: int | None = None
    # Multi-turn sessions: the session and the turn (0-based) this request is; -1: none.
    session: int = -1
    turn: int = -1
    # The later user turns of a session (sent by the sessions pattern after this one).
    followups: tuple[str, ...] = ()
    # The lengths the workload asked for (synthetic, shared prefix, trace), for the report's
    # requested-vs-actual figures; None when the workload sets none.
    target_prompt_tokens: int | None = None
    target_completion_tokens: int | None = None


@dataclasses.dataclass
class InferenceResult:
    """What the client observed for one request (timestamps from ``pytest_fmbench.clock``)."""

    sent_ns: int
    last_byte_ns: int
    first_token_ns: int | None = None
    first_reasoning_ns: int | None = None
    itl_us: list[int] = dataclasses.field(default_factory=list)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    token_source: str = ""
    error: str = ""
    error_detail: str = ""
    status: int | None = None
    retries: int = 0
    # A retried request: the time from its first attempt's send to ``sent`` (the final
    # attempt's), i.e. the earlier attempts plus back-off. The first send is
    # ``sent_ns - retry_wait_ns``; the client's own lateness is measured from it.
    retry_wait_ns: int = 0
    text: str = ""
    # The server's prefix-cache hits (usage.prompt_tokens_details.cached_tokens), if reported.
    cached_tokens: int | None = None
    # Our own tokenizer's counts when the server reported usage too (the mismatch metrics).
    client_prompt_tokens: int | None = None
    client_completion_tokens: int | None = None


@runtime_checkable
class EndpointClient(Protocol):
    """Sends requests; created inside the event loop that uses it."""

    async def invoke(self, request: InferenceRequest) -> InferenceResult: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class Endpoint(Protocol):
    """A deployable (or bring-your-own) endpoint of one experiment."""

    name: str

    @property
    def deployed_by_us(self) -> bool:
        """True once ``deploy`` created something that ``teardown`` must delete."""
        ...

    def deploy(self) -> None:
        """Create the endpoint (no-op for bring-your-own); blocks until it serves."""

    def teardown(self) -> None:
        """Delete exactly what ``deploy`` created; safe to call twice or after a failed deploy."""

    def client(self) -> EndpointClient:
        """A client for this endpoint, bound to the running event loop."""
        ...

    def describe(self) -> dict[str, Any]:
        """Facts for the report (url, instance type, ...), never secrets."""
        ...


# -- optional hooks a backend may implement ------------------------------------------------
# Checked with ``isinstance`` (runtime-checkable Protocols), so a third-party backend sees
# them here instead of behind ``getattr`` probes.

@runtime_checkable
class SupportsPreflight(Protocol):
    """A backend factory (class) that checks an experiment before anything is deployed:
    missing region or credentials, an unknown price, a missing role. Raises ``ConfigError``."""

    def preflight(self, config: Any, experiment: Any) -> None: ...


@runtime_checkable
class SupportsOrphanCleanup(Protocol):
    """A backend factory (class) that deletes what a dead process deployed, from the
    ``describe()`` its endpoint logged (the controller calls it when an xdist worker dies)."""

    def cleanup_orphan(self, config: Any, experiment: Any, context: Any,
                       description: dict[str, Any]) -> None: ...


@runtime_checkable
class EnforcesTimeout(Protocol):
    """A client that bounds each request by its own timeout (``enforces_timeout = True``),
    so the load engine needs no second timer per request. A client without the attribute,
    or with it False, gets the engine's guard."""

    enforces_timeout: bool


@runtime_checkable
class KeepsText(Protocol):
    """A client that may skip decoding the answer text during load (it costs per chunk);
    accuracy sets ``keep_text = True`` where the text is what it needs."""

    keep_text: bool


@runtime_checkable
class SupportsReaping(Protocol):
    """An endpoint that can say, before ``deploy``, what the reaper must delete if this
    process dies (``pytest_fmbench.safety``): a JSON-able plan, or None for nothing.

    Plans the reaper knows: ``{"kind": "process", "process": {cookie, pid, start_time}}``
    and ``{"kind": "sagemaker", "run_id", "region", "endpoint_url", "resources": [[kind,
    name], ...]}``. Asked again after ``deploy`` (pids are known then).
    """

    def reap_plan(self) -> dict[str, Any] | None: ...


# -- telemetry (pytest_fmbench.telemetry): what can be sampled beside a case -----------------

@runtime_checkable
class ExposesServerMetrics(Protocol):
    """An endpoint whose server may publish Prometheus metrics (vLLM, SGLang, TGI): the URL
    to try, or None. Scraped during each case when it answers."""

    def metrics_url(self) -> str | None: ...


@runtime_checkable
class RunsOnThisHost(Protocol):
    """An endpoint served by this machine (local, a deploy command, a container, a loopback
    URL): its CPU, memory, GPUs and Neuron devices are sampled during each case."""

    def runs_on_this_host(self) -> bool: ...


@runtime_checkable
class PublishesCloudWatchMetrics(Protocol):
    """An endpoint with CloudWatch metrics (SageMaker): ``(endpoint name, variant name)``,
    read for each case's window after it ran."""

    def cloudwatch_dimensions(self) -> tuple[str, str]: ...
