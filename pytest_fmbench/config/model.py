"""The typed config: FMBench's sections as they are, plus ours under clear keys.

FMBench config files load unchanged. Keys that only matter to FMBench's S3/notebook
machinery are accepted and ignored; any other unknown key is an error with a "did you mean".
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

BUILTIN_BACKENDS = ("local", "openai", "sagemaker", "bedrock")

_SAFE_ID = re.compile(r"[^A-Za-z0-9_.\-]+")


def is_import_path(name: str) -> bool:
    """``package.module:Class`` names a backend directly (handy for one-off backends)."""
    module, sep, attr = name.partition(":")
    return bool(sep and module and attr.isidentifier())


class Section(BaseModel):
    """A config section: unknown keys are errors, FMBench-only keys are accepted and ignored."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=False)

    # FMBench keys that mean nothing to us; accepted so FMBench configs load unchanged.
    fmbench_ignored: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="before")
    @classmethod
    def _check_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        known = set(cls.model_fields)
        known |= {f.alias for f in cls.model_fields.values() if f.alias}
        kept = {}
        for key, value in data.items():
            if key in cls.fmbench_ignored:
                continue
            if str(key) not in known:
                raise ValueError(_unknown_key_message(str(key), sorted(known)))
            kept[key] = value
        return kept


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
    name: BareFileName = "fmbench"
    model_name: str | None = None


class Aws(Section):
    region: str | None = None
    sagemaker_execution_role: str | None = None
    bucket: str | None = None


class DatasetFilter(Section):
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


class Datasets(Section):
    fmbench_ignored = frozenset(
        {"ground_truth_col_key", "question_col_key", "source_data_prefix", "prompt_template_dir"}
    )

    # FMBench's place for the wave bounds; a `load:` section (ours) overrides them.
    min_iters_per_combination: int | None = Field(default=None, ge=1)
    max_iters_per_combination: int | None = Field(default=None, ge=1)

    prompt_template_keys: list[str] = Field(default_factory=lambda: ["input", "context"])
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


class Metrics(Section):
    dataset_of_interest: str | None = None


class InferenceSpec(BaseModel):
    """FMBench's per-experiment inference settings; open-ended there, so open here."""

    model_config = ConfigDict(extra="allow")

    parameter_set: str | None = None
    stream: bool = True
    container_type: str | None = None


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
    # concurrency / rate: spread one case's load over this many processes.
    processes: int | None = Field(default=None, ge=1, le=256)
    # A request sent this late, or under this much event-loop lag, flags the client saturated.
    saturation_ms: float | None = Field(default=None, gt=0)
    # Wall-clock cap on one case (a hung server or load process cannot hang the run): at
    # the deadline the case stops, requests in flight are recorded as timeouts. Unset: none.
    max_case_s: float | None = Field(default=None, gt=0)

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
    }

    def problems(self) -> list[tuple[str, str]]:
        """(key, message) for combinations that can't run; checked on merged settings."""
        found: list[tuple[str, str]] = []
        if self.pattern == "rate" and self.rate is None:
            found.append(("rate", "the rate pattern needs 'rate' (requests per second)"))
        if self.pattern == "waves":
            for key in ("requests", "duration_s", "rate"):
                if getattr(self, key) is not None:
                    found.append((key, (f"'{key}' applies to the concurrency and rate "
                                        "patterns, not waves (waves use "
                                        "min/max_iters_per_combination)")))
            if (self.warmup_s or 0) > 0:
                found.append(("warmup_s", ("'warmup_s' applies to the concurrency and rate "
                                           "patterns (waves use warmup_requests)")))
            if (self.processes or 1) > 1:
                found.append(("processes", ("'processes' applies to the concurrency and rate "
                                            "patterns (a wave waits for its slowest request)")))
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
    fmbench_ignored = frozenset(
        {
            "model_s3_path", "bucket", "hf_tokenizer_model_id",
            "serving.properties", "model_copies", "sagemaker_role",
            "deploy_docker", "download_model", "tokenizer_dir", "model_loading_timeout",
            "ecr_repo", "region", "agent", "additional_instance_types", "instance_name",
            "additional_metadata",
        }
    )

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
    inference_script: str | None = None
    inference_spec: InferenceSpec = Field(default_factory=InferenceSpec)
    payload_files: list[BareFileName] = Field(min_length=1)
    concurrency_levels: list[int] = Field(min_length=1)
    env: dict[str, Any] | None = None
    # Ours.
    price_per_hour: float | None = Field(default=None, ge=0)
    # Ours: budgets on any metric by name (METRICS.md), overriding the config-wide ones.
    budgets: dict[str, Any] = Field(default_factory=dict)
    local: LocalSettings | None = None
    openai: OpenAISettings | None = None
    sagemaker: SageMakerSettings | None = None
    bedrock: BedrockSettings | None = None
    load: LoadSettings | None = None
    markers: list[str] = Field(default_factory=list)

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
        script = (self.inference_script or "").lower()
        if "bedrock" in script:
            return "bedrock"
        if "sagemaker" in script:
            return "sagemaker"
        if (self.ep_name or "").startswith(("http://", "https://")) or "ec2" in script:
            return "openai"
        if self.local is not None:
            return "local"
        if self.openai is not None:
            return "openai"
        return None

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
    fmbench_ignored = frozenset(
        {
            "per_inference_request_file", "all_metrics_file", "txn_count_for_showing_cost",
            "v_shift_w_single_instance", "v_shift_w_gt_one_instance", "latency_vs_token_len_chart",
            "accuracy_budget", "accuracy_error_rate_budget", "cosine_similarity_budget",
        }
    )

    latency_budget: float | None = Field(default=None, gt=0)
    cost_per_10k_txn_budget: float | None = Field(default=None, ge=0)
    error_rate_budget: float | None = Field(default=None, ge=0, le=1)


class Config(Section):
    fmbench_ignored = frozenset({"dir_paths", "s3_read_data", "run_steps", "model_evaluations"})

    general: General = Field(default_factory=General)
    aws: Aws = Field(default_factory=Aws)
    datasets: Datasets = Field(default_factory=Datasets)
    metrics: Metrics = Field(default_factory=Metrics)
    pricing: str | dict[str, Any] | None = None
    inference_parameters: dict[str, dict[str, Any]] = Field(default_factory=dict)
    experiments: list[Experiment] = Field(min_length=1)
    report: Report = Field(default_factory=Report)
    # Ours.
    load: LoadSettings = Field(default_factory=LoadSettings)
    markers: list[str] = Field(default_factory=list)
    # Budgets on any metric by name (METRICS.md), e.g. {ttft_p95: 0.5}; see budgets.py.
    budgets: dict[str, Any] = Field(default_factory=dict)

    # Set by the loader, not read from YAML.
    source_path: Path | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        names = [e.name for e in self.experiments]
        for index, name in enumerate(names):
            if name in names[:index]:
                raise ValueError(f"experiments[{index}] ({name}).name: experiment name '{name}' "
                                 "is used twice; names must be unique")
        filters = [f.payload_file for f in self.datasets.filters]
        for index, experiment in enumerate(self.experiments):
            for payload_file in experiment.payload_files:
                if payload_file not in filters:
                    raise ValueError(
                        f"experiments[{index}] ({experiment.name}).payload_files: "
                        f"'{payload_file}' is not produced by any datasets.filters entry "
                        f"({_did_you_mean(payload_file, filters)})"
                    )
            parameter_set = experiment.inference_spec.parameter_set
            if parameter_set and parameter_set not in self.inference_parameters:
                raise ValueError(
                    f"experiments[{index}] ({experiment.name}).inference_spec.parameter_set: "
                    f"'{parameter_set}' is not a section of inference_parameters "
                    f"({_did_you_mean(parameter_set, sorted(self.inference_parameters))})"
                )
            for key, problem in self.load_for(experiment).problems():
                raise ValueError(f"experiments[{index}] ({experiment.name}).load.{key}: {problem}")
        return self

    def parameters_for(self, experiment: Experiment) -> dict[str, Any]:
        name = experiment.inference_spec.parameter_set
        return dict(self.inference_parameters.get(name, {})) if name else {}

    def load_for(self, experiment: Experiment) -> LoadSettings:
        fmbench = {
            key: value for key in ("min_iters_per_combination", "max_iters_per_combination")
            if (value := getattr(self.datasets, key)) is not None and getattr(self.load, key) is None
        }
        base = self.load.model_copy(update=fmbench) if fmbench else self.load
        return base.merged(experiment.load)

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
