"""The typed config: FMBench's sections as they are, plus ours under clear keys.

FMBench config files load unchanged. Every key FMBench knows (``fmbench_keys.py``) is
accepted; the ones we don't act on are kept (``Config.ignored_fmbench_keys``) and listed in the
report and the terminal summary. Any other unknown key is an error with a "did you mean".
What FMBench tolerates is tolerated with a warning (``Config.warnings``): FMBench 1.x's flat
``inference_parameters``, duplicate experiment names (suffixed ``-2``), payload files no filter
produces (their cases skip, as FMBench skips them).
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)

from pytest_fmbench.config.fmbench_keys import FMBENCH_KEYS, fmbench_knows
from pytest_fmbench.config.predictors import predictor_backend
from pytest_fmbench.config.read_data import S3ReadData

BUILTIN_BACKENDS = ("local", "openai", "sagemaker", "bedrock", "rest", "container")

# The set FMBench 1.x's flat ``inference_parameters`` mapping is kept under; experiments
# without ``inference_spec.parameter_set`` use it.
FLAT_PARAMETER_SET = "(flat)"

# FMBench 1.x's `truncate: at-prompt-token-length`: truncate the input at its own length,
# i.e. not at all. Sent as is, servers reject it (TGI's `truncate` takes a number), and a
# number from our token count could cut a prompt whose count differs by a special token.
TRUNCATE_AT_PROMPT_LENGTH = "at-prompt-token-length"


_SAFE_ID = re.compile(r"[^A-Za-z0-9_.\-]+")


def is_import_path(name: str) -> bool:
    """``package.module:Class`` names a backend directly (handy for one-off backends)."""
    module, sep, attr = name.partition(":")
    return bool(sep and module and attr.isidentifier())


class Section(BaseModel):
    """A config section: unknown keys are errors; FMBench's keys are accepted and kept.

    A key FMBench knows in this section (``fmbench_keys.FMBENCH_KEYS[fmbench_section]``) that
    is not one of our fields is not validated or acted on, but it is remembered
    (``unused_fmbench_keys``) so the report can say what changes against FMBench.
    """

    # Numbers where text is expected are text (`name: 2024`, a filled `{placeholder}`).
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=False,
                              coerce_numbers_to_str=True)

    # Where this section sits in an FMBench config (None: a section of ours only).
    fmbench_section: ClassVar[str | None] = None

    _unused: list[str] = PrivateAttr(default_factory=list)

    @model_validator(mode="wrap")
    @classmethod
    def _check_keys(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        if not isinstance(data, dict):
            return handler(data)
        known = set(cls.model_fields)
        known |= {f.alias for f in cls.model_fields.values() if f.alias}
        kept, unused = {}, []
        for key, value in data.items():
            if str(key) in known:
                kept[key] = value
            elif cls.fmbench_section is not None and fmbench_knows(cls.fmbench_section, str(key)):
                unused.append(str(key))
            else:
                fmbench = FMBENCH_KEYS.get(cls.fmbench_section or "", frozenset()) \
                    if cls.fmbench_section is not None else frozenset()
                raise ValueError(_unknown_key_message(str(key), sorted(known | fmbench)))
        section = handler(kept)
        section._unused = unused
        return section

    @property
    def unused_fmbench_keys(self) -> list[str]:
        """FMBench keys given in this section that pytest-fmbench does not act on."""
        return list(self._unused)


def _unknown_key_message(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(known)}"
    return f"unknown key '{key}' ({hint})"


def _bare_file_name(value: str) -> str:
    """Names joined to the results dir (payload files, the run name) cannot leave it (L8)."""
    if not value.strip() or value in (".", "..") or any(c in value for c in "/\\\0"):
        raise ValueError(f"'{value}' must be a bare file name (no '/', '\\' or '..'): it is "
                         "joined to the results directory")
    return value


BareFileName = Annotated[str, AfterValidator(_bare_file_name)]


class General(Section):
    fmbench_section = "general"

    name: BareFileName = "fmbench"
    model_name: str | None = None


class Aws(Section):
    fmbench_section = "aws"

    region: str | None = None
    sagemaker_execution_role: str | None = None
    bucket: str | None = None


class DatasetFilter(Section):
    fmbench_section = "datasets.filters"

    payload_file: BareFileName
    language: str | None = None
    min_length_in_tokens: int = Field(default=1, ge=0)
    max_length_in_tokens: int = Field(default=10**9, ge=1)

    @model_validator(mode="after")
    def _range(self) -> DatasetFilter:
        if self.min_length_in_tokens > self.max_length_in_tokens:
            raise ValueError(
                f"min_length_in_tokens {self.min_length_in_tokens} is above "
                f"max_length_in_tokens {self.max_length_in_tokens}"
            )
        return self


class SyntheticDataset(Section):
    records: int = Field(default=300, ge=1)
    seed: int = 0


class LengthDistribution(Section):
    """A token length drawn per request: normal ``mean``/``stddev`` (rounded, within
    ``min``/``max``) or a discrete distribution (``values`` with optional ``weights``)."""

    mean: float | None = Field(default=None, gt=0)
    stddev: float = Field(default=0.0, ge=0)
    min: int = Field(default=1, ge=1)
    max: int = Field(default=10**9, ge=1)
    values: list[int] = Field(default_factory=list)
    weights: list[float] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> LengthDistribution:
        if (self.mean is None) == (not self.values):
            raise ValueError("give either 'mean' (with 'stddev') or 'values' (with 'weights')")
        if self.weights is not None and len(self.weights) != len(self.values):
            raise ValueError(f"'weights' has {len(self.weights)} entries for "
                             f"{len(self.values)} 'values'")
        if any(v < 1 for v in self.values):
            raise ValueError("every length in 'values' must be 1 or more")
        return self


TokenLength = int | LengthDistribution

# What each workload kind needs (docs/workloads.md).
_WORKLOAD_NEEDS: dict[str, tuple[str, ...]] = {
    "synthetic": ("input_tokens", "output_tokens"),
    "sharegpt": ("path",),
    "shared_prefix": ("prefixes", "suffixes", "prefix_tokens", "suffix_tokens", "output_tokens"),
    "trace": ("path",),
    "sessions": (),
}


class Workload(Section):
    """Ours: a workload that produces the prompts of one payload file (data/workloads.py).

    Experiments name it in ``payload_files`` like a ``filters`` entry, so cases, ids and
    markers stay experiment × payload file × concurrency.
    """

    payload_file: BareFileName
    kind: Literal["synthetic", "sharegpt", "shared_prefix", "trace", "sessions"]
    # How many requests (sessions: conversations) to build; unset: the kind's natural count.
    requests: int | None = Field(default=None, ge=1)
    seed: int = 0
    input_tokens: TokenLength | None = None
    output_tokens: TokenLength | None = None
    # How the output length is forced where the server allows it; unset: ignore_eos for
    # OpenAI-compatible servers (vLLM, SGLang), nothing elsewhere.
    force_output: list[Literal["ignore_eos", "min_tokens"]] | None = None
    # sharegpt, trace, sessions: a local file (relative to the config file).
    path: str | None = None
    # shared_prefix: P prefixes x S suffixes.
    prefixes: int | None = Field(default=None, ge=1)
    suffixes: int | None = Field(default=None, ge=1)
    prefix_tokens: int | None = Field(default=None, ge=1)
    suffix_tokens: int | None = Field(default=None, ge=1)
    # trace: replay speed (2 = twice as fast) and the tokens of one hash block.
    speed: float = Field(default=1.0, gt=0)
    block_tokens: int = Field(default=512, ge=1)
    # sessions: turns per conversation (ShareGPT: at most), pause between turns.
    turns: int | None = Field(default=None, ge=1)
    think_time_s: float = Field(default=0.0, ge=0)

    @model_validator(mode="after")
    def _needs(self) -> Workload:
        missing = [key for key in _WORKLOAD_NEEDS[self.kind] if getattr(self, key) is None]
        if self.kind == "sessions" and self.path is None:
            missing += [k for k in ("turns", "input_tokens", "output_tokens")
                        if getattr(self, k) is None]
        if missing:
            raise ValueError(f"workload '{self.payload_file}' of kind '{self.kind}' needs "
                             + ", ".join(f"'{key}'" for key in missing))
        return self


class Datasets(Section):
    fmbench_section = "datasets"

    # FMBench's place for the wave bounds; a `load:` section (ours) overrides them.
    min_iters_per_combination: int | None = Field(default=None, ge=1)
    max_iters_per_combination: int | None = Field(default=None, ge=1)

    prompt_template_keys: list[str] = Field(default_factory=lambda: ["input", "context"])

    @field_validator("prompt_template_keys", mode="before")
    @classmethod
    def _template_keys(cls, value: Any) -> Any:
        # FMBench configs leave it empty (its default) or give a single key as text.
        if value is None:
            return ["input", "context"]
        return [value] if isinstance(value, str) else value
    # Ours: the prompt template inline, or a file (relative to the config file).
    prompt_template: str | None = None
    prompt_template_file: str | None = None
    # Ours: LongBench-format JSONL files; without them the built-in synthetic dataset is used.
    source_files: list[str] = Field(default_factory=list)
    synthetic: SyntheticDataset = Field(default_factory=SyntheticDataset)
    # Ours: tokenizer for counting prompt tokens: a local directory, a hub id, or
    # "local:<size>" for the embedded local model's tokenizer. Unset: 750 words = 1000 tokens.
    tokenizer: str | None = None
    max_prompts_per_file: int | None = Field(default=None, ge=1)
    filters: list[DatasetFilter] = Field(default_factory=list)
    # FMBench: the dataset columns holding the reference answers and the question, for
    # accuracy (pytest_fmbench.accuracy). Unset: LongBench's "answers" and "input".
    ground_truth_col_key: str | None = None
    question_col_key: str | None = None
    # Ours: workloads (synthetic lengths, ShareGPT, shared prefix, trace, sessions), each
    # producing one payload file experiments can name.
    workloads: list[Workload] = Field(default_factory=list)

    def workload(self, payload_file: str) -> Workload | None:
        for workload in self.workloads:
            if workload.payload_file == payload_file:
                return workload
        return None


class Metrics(Section):
    fmbench_section = "metrics"

    dataset_of_interest: str | None = None


class InferenceSpec(BaseModel):
    """FMBench's per-experiment inference settings; open-ended there, so open here.

    FMBench hands the whole mapping to the predictor (custom predictors read their own keys),
    so any key is accepted; the ones without a field here are not acted on and are listed
    in the report (``unused_fmbench_keys``).
    """

    model_config = ConfigDict(extra="allow", coerce_numbers_to_str=True)

    parameter_set: str | None = None
    stream: bool = True
    container_type: str | None = None
    # Inference parameters of this experiment on top of its parameter set (FMBench's
    # SageMaker and REST predictors merge them the same way).
    parameters: dict[str, Any] = Field(default_factory=dict)
    # FMBench's SageMaker predictor: the body is the bare prompt (JSON text) and the
    # parameters are invoke_endpoint arguments (ContentType, Accept), e.g. for BERT models.
    split_input_and_parameters: bool = False
    # FMBench's stream reader: a token with this text ends the reply and is not counted.
    # (FMBench also reads start_token but never uses it: it stays "not acted on".)
    stop_token: str | None = None
    # FMBench's REST predictors: request headers (under openai.headers, which win).
    headers: dict[str, str] = Field(default_factory=dict)
    # FMBench's custom REST predictor: the model id sent in the request body.
    model_id: str | None = None

    @property
    def unused_fmbench_keys(self) -> list[str]:
        return sorted(self.model_extra or {})


class RaySettings(Section):
    """``load.executor: ray``: where and how many load processes run as Ray actors."""

    # The cluster: "auto" (a node of a running cluster), "ray://head:10001", a GCS address;
    # unset: RAY_ADDRESS, else "auto".
    address: str | None = None
    # How many actors: one per alive node (offering ``resources``), one per CPU of those
    # nodes, or a number.
    actors: Literal["per_node", "per_cpu"] | int = "per_node"
    # Ray placement-group strategy: spread (best effort over nodes), strict_spread (each
    # actor on its own node), pack.
    placement: Literal["spread", "strict_spread", "pack"] = "spread"
    # Resources each actor needs besides one CPU, e.g. {fmbench_loadgen: 1} so load lands
    # only on nodes started with that resource (never on the serving nodes).
    resources: dict[str, float] = Field(default_factory=dict)
    # Ray runtime_env for the actors (env_vars, pip, working_dir ...).
    runtime_env: dict[str, Any] = Field(default_factory=dict)
    # Pings per actor at the start barrier; the one with the shortest round trip wins.
    clock_pings: int = Field(default=16, ge=1, le=1000)
    # Seconds to wait for the placement group and the actors to start.
    start_timeout_s: float = Field(default=120.0, gt=0)
class RateLevel(BaseModel):
    """One open-loop load level: ``8`` or ``{rate: 8, arrival: constant}`` (docs/load-levels.md)."""

    model_config = ConfigDict(extra="forbid")

    rate: float = Field(gt=0)
    arrival: Literal["poisson", "constant", "gamma"] | None = None
    burstiness: float | None = Field(default=None, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _bare_number(cls, value: Any) -> Any:
        return {"rate": value} if isinstance(value, (int, float)) and not isinstance(value, bool) \
            else value


class SweepSettings(BaseModel):
    """``load.sweep``: measure the endpoint's most throughput, then ``levels`` rates from a
    light load up to it, all on one deployment (one case per experiment × payload file)."""

    model_config = ConfigDict(extra="forbid")

    levels: int = Field(default=5, ge=2, le=50)
    # The closed-loop throughput probe: requests kept in flight and how many it sends.
    probe_concurrency: int = Field(default=32, ge=1)
    probe_requests: int = Field(default=200, ge=10)
    # The light end of the sweep: this rate, else ``light_fraction`` of the measured maximum.
    min_rate: float | None = Field(default=None, gt=0)
    light_fraction: float = Field(default=0.1, gt=0, lt=1)


class SloSearchSettings(SweepSettings):
    """``load.slo_search``: the highest rate at which every per-request SLO (the latency,
    TTFT, TPOT and response time budgets) holds for at least ``goodput_share`` of requests."""

    goodput_share: float = Field(default=0.95, gt=0, le=1)
    # Bisection stops when the bracket is this narrow (relative to its upper end) ...
    precision: float = Field(default=0.05, gt=0, lt=1)
    # ... or when the next level would take the search's requests past this many.
    max_requests: int = Field(default=5000, ge=10)


class LoadSettings(Section):
    """How requests are fired (ours). ``waves`` is FMBench's pattern (the default).

    In every pattern a case's concurrency level is the most requests in flight at once:
    ``waves`` fires c at a time, ``concurrency`` keeps c in flight (closed loop), ``rate``
    sends at ``rate`` requests/s (open loop) with at most c in flight; an arrival finding c in
    flight waits for a slot and its record says so (``queued``). See pytest_fmbench/load/.
    """

    pattern: Literal["waves", "concurrency", "rate"] = "waves"
    min_iters_per_combination: int | None = Field(default=None, ge=1)
    max_iters_per_combination: int | None = Field(default=None, ge=1)
    request_timeout_s: float | None = Field(default=None, gt=0)
    # Sent once per endpoint after deploy, never recorded.
    warmup_requests: int | None = Field(default=None, ge=0)
    # concurrency / rate: bounds (whichever comes first); neither: as many requests as waves.
    requests: int | None = Field(default=None, ge=1)
    duration_s: float | None = Field(default=None, gt=0)
    # concurrency / rate: seconds of load at the start of each case that are not recorded.
    warmup_s: float | None = Field(default=None, ge=0)
    # rate: requests per second, and how arrivals are spread.
    rate: float | None = Field(default=None, gt=0)
    arrival: Literal["poisson", "constant", "gamma"] | None = None
    # gamma arrivals: shape; < 1 burstier than Poisson, 1 = Poisson, > 1 more regular.
    burstiness: float | None = Field(default=None, gt=0)
    seed: int | None = None
    # concurrency / rate: spread one case's load over this many processes; "auto": as many
    # as a short probe shows the client needs (load/autoscale.py), up to the CPUs.
    processes: Annotated[int, Field(ge=1, le=256)] | Literal["auto"] | None = None
    # Where the load processes run: here ("local") or as Ray actors on a cluster ("ray",
    # the ``ray`` extra; ``load.ray`` says where and how many).
    executor: Literal["local", "ray"] | None = None
    ray: RaySettings | None = None
    # A request sent this late, or under this much event-loop lag, flags the client saturated.
    saturation_ms: float | None = Field(default=None, gt=0)
    # Wall-clock cap on one case (a hung server or load process cannot hang the run): at
    # the deadline the case stops, requests in flight are recorded as timeouts. Unset: none.
    max_case_s: float | None = Field(default=None, gt=0)
    # Load levels (docs/load-levels.md). Open-loop rates, one case each (``-r8``), on the
    # experiment's one endpoint; each level sends ``requests`` / ``duration_s`` of arrivals.
    rates: list[RateLevel] | None = None
    # Runs each level (every case) this many times; metrics pool the repeats, with CIs.
    repeats: int | None = Field(default=None, ge=1, le=100)
    # Requests in flight at most in a rate level, a sweep or a search (the client's cap).
    max_in_flight: int | None = Field(default=None, ge=1)
    sweep: SweepSettings | None = None
    slo_search: SloSearchSettings | None = None
    # A rate level whose queue keeps growing ends early and is marked saturated.
    saturation_stop: bool | None = None

    DEFAULTS: ClassVar[dict[str, Any]] = {
        "min_iters_per_combination": 5,
        "max_iters_per_combination": 105,
        "request_timeout_s": 120.0,
        "warmup_requests": 1,
        "warmup_s": 0.0,
        "arrival": "poisson",
        "burstiness": 1.0,
        "seed": 0,
        "processes": 1,
        "saturation_ms": 10.0,
        "repeats": 1,
        "max_in_flight": 1024,
        "saturation_stop": True,
    }

    def problems(self, levels: bool = False) -> list[tuple[str, str]]:
        """(key, message) for combinations that can't run; checked on merged settings.
        ``levels``: the experiment has load levels, which ``requests``, ``duration_s`` and
        ``warmup_s`` bound whatever the pattern of its concurrency levels."""
        found: list[tuple[str, str]] = []
        if self.pattern == "rate" and self.rate is None:
            found.append(("rate", "the rate pattern needs 'rate' (requests per second)"))
        if self.pattern == "waves" and not levels:
            for key in ("requests", "duration_s", "rate"):
                if getattr(self, key) is not None:
                    found.append((key, (f"'{key}' applies to the concurrency and rate "
                                        "patterns, not waves (waves use "
                                        "min/max_iters_per_combination)")))
            if (self.warmup_s or 0) > 0:
                found.append(("warmup_s", ("'warmup_s' applies to the concurrency and rate "
                                           "patterns (waves use warmup_requests)")))
            if self.processes == "auto" or (self.processes or 1) > 1:
                found.append(("processes", ("'processes' applies to the concurrency and rate "
                                            "patterns (a wave waits for its slowest request)")))
            if self.executor == "ray":
                found.append(("executor", ("'executor: ray' applies to the concurrency and "
                                           "rate patterns (waves stay in one process)")))
        if self.executor == "ray" and (self.processes == "auto" or (self.processes or 1) > 1):
            found.append(("processes", ("with 'executor: ray' the number of load processes is "
                                        "load.ray.actors (per_node, per_cpu or a number)")))
        return found

    def merged(self, override: LoadSettings | None) -> LoadSettings:
        """These settings with ``override``'s explicitly set keys on top, defaults filled."""
        values = dict(self.DEFAULTS)
        values.update(self.model_dump(exclude_none=True))
        if override is not None:
            values.update(override.model_dump(exclude_none=True, exclude_unset=True))
        return LoadSettings(**values)


class LocalSettings(Section):
    """The embedded local backend: ``transformers serve`` on loopback."""

    # A preset of the built-in random-weight model ("tiny", "small"), a model directory, or
    # "hf:<org>/<name>" for a hub id (the server downloads it: needs network).
    model: str = "tiny"
    seed: int = 0
    continuous_batching: bool = False
    # Where the model runs: "cpu", "cuda", "cuda:1", "mps" or "auto" (transformers' --device).
    device: str = Field(default="cpu", pattern=r"^(cpu|auto|mps|cuda(:\d+)?|xpu(:\d+)?)$")
    server_args: list[str] = Field(default_factory=list)
    startup_timeout_s: float = Field(default=300.0, gt=0)
    api: Literal["completions", "chat"] = "completions"


class DeployCommand(Section):
    """A shell command that starts an OpenAI-compatible server, and how to tell it is up.

    The command runs in its own process group (``sh -c``) with ``FMBENCH_PORT`` in its
    environment; the whole group is stopped on teardown. Its output goes to
    ``<results>/logs/<experiment>-server.log``.
    """

    command: str
    # 0: pick a free port; exported as FMBENCH_PORT. base_url defaults to 127.0.0.1:<port>.
    port: int = Field(default=0, ge=0, le=65535)
    # Any 2xx answer means ready; default <base_url>/health (vLLM, SGLang, TGI, llama.cpp).
    health_url: str | None = None
    startup_timeout_s: float = Field(default=900.0, gt=0)
    stop_timeout_s: float = Field(default=30.0, gt=0)
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None


class OpenAISettings(Section):
    """An OpenAI-compatible server (vLLM, TGI, SGLang, Ollama, llama.cpp, ...)."""

    base_url: str | None = None
    api: Literal["completions", "chat"] = "completions"
    model: str | None = None
    api_key_env: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    # Header name -> environment variable holding its value, so no secret sits in YAML.
    headers_env: dict[str, str] = Field(default_factory=dict)
    extra_body: dict[str, Any] = Field(default_factory=dict)
    # Start the server ourselves (vllm serve, sglang, llama-server, ...); stopped on teardown.
    deploy: DeployCommand | None = None


class ContainerSettings(Section):
    """Ours: a server container started with Podman or Docker for the run, removed after it
    (``endpoints/container.py``). FMBench's EC2 experiments (``deploy: yes``) get theirs from
    ``image_uri`` and ``inference_spec``; set ``image`` here for any other server image."""

    image: str | None = None
    # Arguments after the image (the image's entry point receives them).
    args: list[str] = Field(default_factory=list)
    # The port the server listens on inside the container (published on a free loopback port).
    port: int = Field(default=8000, ge=1, le=65535)
    # A path ("/v1/models") or URL whose 2xx answer means ready; its host and port are ours.
    health_url: str = "/v1/models"
    # "all", a GPU count or a list of GPU indices; unset: no GPU.
    gpus: str | int | list[int] | None = None
    shm_size: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    # Extra `run` options, verbatim (volumes, ulimits, --ipc=host, ...).
    run_args: list[str] = Field(default_factory=list)
    # OpenAI API the requests use.
    api: Literal["completions", "chat"] = "completions"
    model: str | None = None
    # podman, docker or a path; unset: FMBENCH_CONTAINER_RUNTIME, else docker if its daemon
    # answers, else podman.
    runtime: str | None = None
    startup_timeout_s: float | None = Field(default=None, gt=0)
    # SIGTERM, then SIGKILL after this long (0: at once).
    stop_timeout_s: float = Field(default=5.0, ge=0)
class TelemetrySettings(Section):
    """Ours: what is sampled beside each case (pytest_fmbench/telemetry); unset keys take
    ``DEFAULTS``. An experiment's ``telemetry:`` keys win over the config's."""

    enabled: bool | None = None
    # Seconds between two samples of the server's /metrics, the host and its devices.
    interval_s: float | None = Field(default=None, gt=0, le=3600)
    # Scrape the server's Prometheus /metrics (OpenAI-compatible endpoints) when it answers.
    prometheus: bool | None = None
    # Unset: <base_url>/metrics of the endpoint.
    metrics_url: str | None = None
    # More Prometheus metric names to record, beside the vLLM / SGLang / TGI ones we know.
    server_metrics: list[str] = Field(default_factory=list)
    # CPU and memory (psutil), NVIDIA GPUs (NVML), Neuron devices (neuron-monitor) of the
    # machine serving a local, command or container endpoint.
    host: bool | None = None
    # SageMaker: the endpoint's CloudWatch metrics for each case's window.
    cloudwatch: bool | None = None

    DEFAULTS: ClassVar[dict[str, Any]] = {"enabled": True, "interval_s": 1.0, "prometheus": True,
                                          "host": True, "cloudwatch": True}

    def merged(self, override: TelemetrySettings | None) -> TelemetrySettings:
        """These settings with ``override``'s explicitly set keys on top, defaults filled."""
        values = dict(self.DEFAULTS)
        values.update(self.model_dump(exclude_none=True))
        if override is not None:
            values.update(override.model_dump(exclude_none=True, exclude_unset=True))
        return TelemetrySettings(**values)


# Retries of a throttled request when ``retry.max_retries`` is unset; any other backend: 0.
DEFAULT_MAX_RETRIES = {"bedrock": 3, "sagemaker": 0}


class RetrySettings(Section):
    """Our bounded retry policy for throttled requests (never infinite, always counted).

    A retried request's record measures its final attempt; ``retries`` counts the attempts
    before it, and the time spent on them (with back-off) is its ``retry_wait_ns``
    (``sent - first sent``, the ``retry_wait_*`` metrics), never latency nor client queue.
    """

    # Unset: the backend's default (Bedrock 3, SageMaker 0).
    max_retries: int | None = Field(default=None, ge=0, le=20)
    backoff_s: float = Field(default=0.5, ge=0)
    max_backoff_s: float = Field(default=8.0, ge=0)
    # Error classes that are retried (see METRICS.md).
    retry_on: list[str] = Field(default_factory=lambda: ["throttled"])

    def retries_for(self, backend: str) -> int:
        """The most retries of one request: ours if set, else the backend's default."""
        return self.max_retries if self.max_retries is not None else DEFAULT_MAX_RETRIES.get(backend, 0)


class SageMakerSettings(Section):
    """Ours: a SageMaker real-time endpoint (deployed for the run, or bring your own)."""

    # Request/response format: tgi, lmi, messages (or one registered by a plugin). Unset:
    # from inference_spec.container_type, else guessed from the image URI, else tgi.
    payload_format: str | None = None
    # Execution role for create_model; unset: aws.sagemaker_execution_role.
    role_arn: str | None = None
    # S3 URI of model artifacts (ModelDataUrl); unset: the container loads env HF_MODEL_ID.
    model_data: str | None = None
    variant_name: str = "AllTraffic"
    # Bring your own: the production variant / inference component to call.
    target_variant: str | None = None
    inference_component: str | None = None
    deploy_timeout_s: float = Field(default=3600.0, gt=0)
    poll_interval_s: float = Field(default=30.0, gt=0)
    model_data_download_timeout_s: int | None = Field(default=None, ge=60, le=3600)
    container_startup_health_check_timeout_s: int | None = Field(default=None, ge=60, le=3600)
    volume_size_gb: int | None = Field(default=None, ge=1, le=512)
    tags: dict[str, str] = Field(default_factory=dict)
    retry: RetrySettings = Field(default_factory=RetrySettings)


class BedrockSettings(Section):
    """Ours: Amazon Bedrock on demand, by inference profile, or provisioned throughput."""

    # converse: the Converse API (server usage, any model); invoke: InvokeModel with a
    # model-specific body (see body_format).
    api: Literal["converse", "invoke"] = "converse"
    # Model id, inference profile id/ARN or provisioned-throughput ARN; unset: ep_name, else model_id.
    model_id: str | None = None
    # invoke only: anthropic, meta, mistral, titan, nova, cohere (or registered); unset: from the model id.
    body_format: str | None = None
    additional_model_request_fields: dict[str, Any] = Field(default_factory=dict)
    retry: RetrySettings = Field(default_factory=RetrySettings)


class Experiment(Section):
    fmbench_section = "experiments"

    name: str
    backend: str | None = None
    model_id: str | None = None
    model_name: str | None = None
    ep_name: str | None = None
    instance_type: str | None = None
    instance_count: int | None = Field(default=1, ge=1)
    image_uri: str | None = None
    deploy: bool = True
    # FMBench: "jumpstart.py" makes model_id a JumpStart id (resolved with the SageMaker SDK).
    deployment_script: str | None = None
    model_version: str | None = None
    accept_eula: bool | None = None
    # FMBench: the tokenizer of this model counts tokens (used when datasets.tokenizer is
    # unset and the local Hugging Face cache has it).
    hf_tokenizer_model_id: str | None = None
    inference_script: str | None = None
    inference_spec: InferenceSpec = Field(default_factory=InferenceSpec)
    payload_files: list[BareFileName] = Field(min_length=1)
    # Required unless the experiment has load levels (rates, a sweep or an SLO search).
    concurrency_levels: list[int] = Field(default_factory=list)
    # Ours: open-loop load levels (requests/s), cases besides the concurrency levels.
    rates: list[RateLevel] | None = None
    env: dict[str, Any] | None = None
    # FMBench deploy-script keys (endpoints/fmbench_scripts.py): DJL's properties, write bucket.
    serving_properties: str | None = Field(default=None, alias="serving.properties")
    bucket: str | None = None
    # Ours.
    price_per_hour: float | None = Field(default=None, ge=0)
    # Ours: budgets on any metric by name (METRICS.md), overriding the config-wide ones.
    budgets: dict[str, Any] = Field(default_factory=dict)
    local: LocalSettings | None = None
    openai: OpenAISettings | None = None
    sagemaker: SageMakerSettings | None = None
    bedrock: BedrockSettings | None = None
    container: ContainerSettings | None = None
    # FMBench's EC2 settings (model_loading_timeout, privileged_mode, gpu_or_neuron_setting).
    ec2: dict[str, Any] | None = None
    load: LoadSettings | None = None
    markers: list[str] = Field(default_factory=list)
    telemetry: TelemetrySettings | None = None

    @property
    def unused_fmbench_keys(self) -> list[str]:
        """FMBench's deploy-script keys count as acted on only where a deploy uses them."""
        unused = list(self._unused)
        if self.ec2 is not None and self.resolved_backend != "container":
            unused.append("ec2")  # read only where the container backend deploys
        sagemaker_deploy = self.resolved_backend == "sagemaker" and self.deploy
        # DJL containers (endpoints/container_spec.py) mount serving.properties too.
        djl_container = self.resolved_backend == "container" and self.container is None
        if not (sagemaker_deploy or djl_container):
            unused += [key for key in ("serving.properties",) if self.serving_properties is not None]
        if not sagemaker_deploy and self.bucket is not None:
            unused.append("bucket")
        return unused

    @field_validator("model_version", mode="before")
    @classmethod
    def _version_text(cls, value: Any) -> Any:
        return None if value is None else str(value)

    @field_validator("concurrency_levels")
    @classmethod
    def _positive_concurrency(cls, levels: list[int]) -> list[int]:
        for level in levels:
            if level < 1:
                raise ValueError(f"concurrency level {level} must be 1 or more")
        if len(set(levels)) != len(levels):
            raise ValueError("concurrency levels repeat")
        return levels

    @field_validator("instance_count", mode="before")
    @classmethod
    def _blank_count(cls, value: Any) -> Any:
        return 1 if value is None else value

    @property
    def safe_name(self) -> str:
        return _SAFE_ID.sub("-", self.name).strip("-") or "experiment"

    @property
    def resolved_backend(self) -> str | None:
        """The backend named, or the one FMBench's scripts and endpoint name imply."""
        if self.backend:
            return self.backend
        if self.container is not None:
            return "container"
        if self.deploys_ec2_container:
            return "container"
        if predictor_backend(self.inference_script):  # FMBench's own predictors (predictors.py)
            return predictor_backend(self.inference_script)
        script = (self.inference_script or "").lower()
        if "bedrock" in script:
            return "bedrock"
        if "sagemaker" in script:
            return "sagemaker"
        # FMBench's EC2, EKS (Ray Serve) and REST predictors all POST to a URL.
        if (self.ep_name or "").startswith(("http://", "https://")) or any(
                kind in script for kind in ("ec2", "eks", "rest")):
            return "openai"
        if self.local is not None:
            return "local"
        if self.openai is not None:
            return "openai"
        return None

    @property
    def deploys_ec2_container(self) -> bool:
        """FMBench's EC2 deployment (``deployment_script: ec2_deploy.py``, ``deploy: yes``):
        the serving container runs on this machine (``endpoints/container.py``), unless
        ``openai.deploy`` starts the server another way."""
        script = (self.deployment_script or "").strip().replace("\\", "/").rsplit("/", 1)[-1]
        return (self.deploy and script.lower() == "ec2_deploy.py"
                and predictor_backend(self.inference_script) in (None, "openai")
                and not (self.openai is not None and self.openai.deploy is not None))

    @property
    def instance_family(self) -> str | None:
        """``ml.g5.12xlarge`` and ``g5.2xlarge`` → ``g5``."""
        if not self.instance_type:
            return None
        parts = self.instance_type.split(".")
        if parts[0] == "ml" and len(parts) > 1:
            parts = parts[1:]
        family = parts[0] if len(parts) > 1 else None
        return family if family and re.fullmatch(r"[a-z][a-z0-9\-]*", family) else None


class Report(Section):
    fmbench_section = "report"

    latency_budget: float | None = Field(default=None, gt=0)
    cost_per_10k_txn_budget: float | None = Field(default=None, ge=0)
    error_rate_budget: float | None = Field(default=None, ge=0, le=1)
    # FMBench's accuracy budgets (documented there, read by no FMBench code); enforced by
    # pytest_fmbench.accuracy.gate. accuracy_budget > 1 is read as a percentage.
    accuracy_budget: float | None = Field(default=None, ge=0, le=100)
    accuracy_error_rate_budget: float | None = Field(default=None, ge=0, le=1)
    cosine_similarity_budget: float | None = Field(default=None, ge=-1, le=1)


class Config(Section):
    fmbench_section = ""

    general: General = Field(default_factory=General)
    aws: Aws = Field(default_factory=Aws)
    datasets: Datasets = Field(default_factory=Datasets)
    metrics: Metrics = Field(default_factory=Metrics)
    pricing: str | dict[str, Any] | None = None
    inference_parameters: dict[str, dict[str, Any]] = Field(default_factory=dict)
    experiments: list[Experiment] = Field(min_length=1)
    report: Report = Field(default_factory=Report)
    # FMBench's read bucket / local read dir (data/fmbench_read.py resolves it).
    s3_read_data: S3ReadData | None = None
    # Ours.
    load: LoadSettings = Field(default_factory=LoadSettings)
    markers: list[str] = Field(default_factory=list)
    # Budgets on any metric by name (METRICS.md), e.g. {ttft_p95: 0.5}; see budgets.py.
    budgets: dict[str, Any] = Field(default_factory=dict)
    # FMBench: which notebooks run (``4_get_evaluations.ipynb: yes`` turns judging on) and
    # the judge panel's settings file (a name in FMBench's configs dir, or inline: ours).
    run_steps: dict[str, Any] | None = None
    model_evaluations: str | dict[str, Any] | None = None
    # Ours: accuracy settings (pytest_fmbench.accuracy.settings validates them).
    accuracy: dict[str, Any] | None = None
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)

    # Set by the loader, not read from YAML.
    source_path: Path | None = Field(default=None, exclude=True)

    _warnings: list[str] = PrivateAttr(default_factory=list)
    _missing_pricing: tuple[str, str] | None = PrivateAttr(default=None)
    # experiment name → payload files no datasets.filters entry produces (their cases skip).
    _unproduced: dict[str, list[str]] = PrivateAttr(default_factory=dict)

    @field_validator("inference_parameters", mode="before")
    @classmethod
    def _flat_parameters(cls, value: Any) -> Any:
        """FMBench 1.x: one flat mapping of parameters, no named sets."""
        if not isinstance(value, dict):
            return value
        flat = {k: v for k, v in value.items() if not isinstance(v, dict)}
        if not flat:
            return value
        named = {k: v for k, v in value.items() if isinstance(v, dict)}
        return {**named, FLAT_PARAMETER_SET: flat}

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        self._rename_duplicates()
        filters = [f.payload_file for f in self.datasets.filters]
        for workload in self.datasets.workloads:
            if workload.payload_file in filters:
                raise ValueError(f"datasets.workloads: payload_file '{workload.payload_file}' "
                                 "is also produced by another filter or workload; give each "
                                 "its own name")
            filters.append(workload.payload_file)
        for index, experiment in enumerate(self.experiments):
            unproduced = [p for p in experiment.payload_files if p not in filters]
            if unproduced:
                # FMBench logs an error and skips the combination; so do we (cases skip).
                self._unproduced[experiment.name] = unproduced
                self._warnings.append(
                    f"experiments[{index}] ({experiment.name}).payload_files: "
                    + ", ".join(f"'{p}' ({_did_you_mean(p, filters)})" for p in unproduced)
                    + " not produced by any datasets.filters entry: those cases are skipped, "
                    "as FMBench skips them")
            parameter_set = experiment.inference_spec.parameter_set
            if parameter_set and parameter_set not in self.inference_parameters:
                raise ValueError(
                    f"experiments[{index}] ({experiment.name}).inference_spec.parameter_set: "
                    f"'{parameter_set}' is not a section of inference_parameters "
                    f"({_did_you_mean(parameter_set, sorted(self.inference_parameters))})"
                )
            settings = self.load_for(experiment)
            has_levels = bool(self.rate_levels(experiment)) or settings.sweep is not None \
                or settings.slo_search is not None
            for key, problem in settings.problems(has_levels):
                raise ValueError(f"experiments[{index}] ({experiment.name}).load.{key}: {problem}")
            if not experiment.concurrency_levels and not self.rate_levels(experiment) \
                    and settings.sweep is None and settings.slo_search is None:
                raise ValueError(f"experiments[{index}] ({experiment.name}).concurrency_levels: "
                                 "missing (give concurrency_levels, or load levels: rates, "
                                 "load.sweep or load.slo_search)")
            rates = [level.rate for level in self.rate_levels(experiment)]
            if len(set(rates)) != len(rates):
                raise ValueError(f"experiments[{index}] ({experiment.name}).rates: rates repeat")
        return self

    def _rename_duplicates(self) -> None:
        """FMBench runs experiments that share a name; case ids and results need unique ones."""
        taken = {e.name for e in self.experiments}
        seen: set[str] = set()
        for index, experiment in enumerate(self.experiments):
            name = experiment.name
            if name not in seen:
                seen.add(name)
                continue
            number = 2
            while f"{name}-{number}" in taken:
                number += 1
            experiment.name = f"{name}-{number}"
            taken.add(experiment.name)
            seen.add(experiment.name)
            self._warnings.append(
                f"experiments[{index}] ({name}).name: the name '{name}' is used twice; this "
                f"experiment runs as '{experiment.name}' (give each experiment a unique name)")

    @property
    def warnings(self) -> list[str]:
        """Things FMBench tolerates that the loader accepted (shown as warnings)."""
        return list(self._warnings)

    def add_warning(self, message: str) -> None:
        self._warnings.append(message)

    def fall_back_from_pricing(self, missing: str, warning: str) -> None:
        """A custom pricing file that is not next to the config: the packaged table is used
        (with ``warning``) unless FMBench's read dir has it (``use_pricing_file``)."""
        self.pricing = None
        self._missing_pricing = (missing, warning)
        self._warnings.append(warning)

    @property
    def missing_pricing_file(self) -> str | None:
        return self._missing_pricing[0] if self._missing_pricing else None

    @property
    def pricing_fallback_warning(self) -> str | None:
        return self._missing_pricing[1] if self._missing_pricing else None

    def use_pricing_file(self, path: str) -> None:
        """The pricing file was found elsewhere (FMBench's read dir): no fallback, no warning."""
        self.pricing = path
        if self._missing_pricing:
            self._warnings.remove(self._missing_pricing[1])
            self._missing_pricing = None

    def unproduced_payload_files(self, experiment: str) -> list[str]:
        """Payload files of ``experiment`` no filter produces (FMBench skips them)."""
        return list(self._unproduced.get(experiment, []))

    def ignored_fmbench_keys(self) -> dict[str, list[str]]:
        """FMBench keys given in the config that pytest-fmbench does not act on.

        Keyed by section (``datasets``, ``datasets.filters[0]``, ``(top level)``) or by
        experiment (``experiments[2] (name)``); only places with such keys appear.
        """
        found: dict[str, list[str]] = {}

        def add(where: str, keys: list[str]) -> None:
            if keys:
                found.setdefault(where, []).extend(keys)

        add("(top level)", self.unused_fmbench_keys)
        for name in ("general", "aws", "datasets", "metrics", "report"):
            add(name, getattr(self, name).unused_fmbench_keys)
        for index, dataset_filter in enumerate(self.datasets.filters):
            add(f"datasets.filters[{index}]", dataset_filter.unused_fmbench_keys)
        for index, experiment in enumerate(self.experiments):
            add(f"experiments[{index}] ({experiment.name})",
                [*experiment.unused_fmbench_keys,
                 *(f"inference_spec.{k}" for k in experiment.inference_spec.unused_fmbench_keys)])
        return found

    def tokenizer_model_ids(self) -> list[str]:
        """Hub ids FMBench would count tokens with (hf_tokenizer_model_id, else an
        'org/name' model_id), in experiment order, each once."""
        found: dict[str, None] = {}
        for experiment in self.experiments:
            candidate = experiment.hf_tokenizer_model_id or experiment.model_id or ""
            if re.fullmatch(r"[\w.\-]+/[\w.\-]+", candidate):
                found.setdefault(candidate, None)
        return list(found)

    def parameters_for(self, experiment: Experiment) -> dict[str, Any]:
        """The experiment's parameter set (FMBench 1.x: the flat one), then inference_spec's."""
        name = experiment.inference_spec.parameter_set
        if name is None and FLAT_PARAMETER_SET in self.inference_parameters:
            name = FLAT_PARAMETER_SET
        parameters = dict(self.inference_parameters.get(name, {})) if name else {}
        parameters.update(experiment.inference_spec.parameters)
        if parameters.get("truncate") == TRUNCATE_AT_PROMPT_LENGTH:
            del parameters["truncate"]  # the whole prompt is sent: what the policy means
        return parameters

    def load_for(self, experiment: Experiment) -> LoadSettings:
        fmbench = {
            key: value for key in ("min_iters_per_combination", "max_iters_per_combination")
            if (value := getattr(self.datasets, key)) is not None and getattr(self.load, key) is None
        }
        base = self.load.model_copy(update=fmbench) if fmbench else self.load
        return base.merged(experiment.load)

    def rate_levels(self, experiment: Experiment) -> list[RateLevel]:
        """The experiment's open-loop levels: its own ``rates``, else ``load.rates``."""
        if experiment.rates is not None:
            return experiment.rates
        return self.load_for(experiment).rates or []
    def telemetry_for(self, experiment: Experiment) -> TelemetrySettings:
        return self.telemetry.merged(experiment.telemetry)

    def experiment(self, name: str) -> Experiment:
        for experiment in self.experiments:
            if experiment.name == name:
                return experiment
        raise KeyError(name)


def _did_you_mean(value: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(value, choices, n=1, cutoff=0.5)
    if close:
        return f"did you mean '{close[0]}'?"
    return f"known: {', '.join(choices) or 'none'}"
