"""The ``container`` backend: a serving container started with Podman or Docker for the run.

Two ways in:

- FMBench's EC2 experiments (``deployment_script: ec2_deploy.py``, ``deploy: yes``): the
  container ``ec2_deploy.py`` would start for ``inference_spec.container_type``
  (``container_spec.fmbench_specs``), then the requests ``ec2_predictor.py`` sends: OpenAI
  completions or chat for vllm, vllm_gpu, sglang, llama_server and ollama (its
  OpenAI-compatible API), DJL Serving's ``/invocations`` (``rest.py``, style ``djl``);
- ``backend: container`` with ``container.image``, ``args``, ``port``, ``health_url``, ``gpus``.

Deploy: ``<runtime> run -d`` with the run's labels (``fmbench.run-id``, ``fmbench.created-by``,
``fmbench.experiment``), the container's port published on a free loopback port; ready when
the health route answers 2xx, bounded by ``ec2.model_loading_timeout`` (FMBench) or
``container.startup_timeout_s`` (default 1800 s); a container that exits first fails the
deploy with its log's tail. The container's name is in the journal before it is created, so
the reaper removes it if pytest is killed at any moment (``safety/reap.py``, kind
``container``; only when its ``fmbench.run-id`` label matches). Teardown stops and removes it
after the experiment's last case and publishes its log to ``logs/<experiment>-container.log``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pytest_fmbench.config.model import Config, ContainerSettings, Experiment
from pytest_fmbench.endpoints import container_spec as specs
from pytest_fmbench.endpoints.base import EndpointClient
from pytest_fmbench.endpoints.container_runtime import (
    Runtime,
    default_run_args,
    find_runtime,
    remove_if_ours,
)
from pytest_fmbench.endpoints.openai import split_endpoint_url
from pytest_fmbench.endpoints.openai_http import OpenAIClient
from pytest_fmbench.endpoints.process import free_port, url_ok
from pytest_fmbench.endpoints.registry import EndpointContext
from pytest_fmbench.errors import ConfigError, EndpointError
from pytest_fmbench.runlog import LOGS_DIR, private_log_path, publish_log

_POLL_S = 0.5
_ALTERNATIVES = ("install Podman or Docker (or set FMBENCH_CONTAINER_RUNTIME to its path), or "
                 "start the server yourself and set 'deploy: no' with ep_name pointing at it, or "
                 "set openai.deploy.command to a command that starts it")


def _key(experiment: Experiment, leaf: str) -> str:
    return f"experiments ({experiment.name}).{leaf}"


def host_facts() -> specs.HostFacts:
    """GPUs (``nvidia-smi -L``), Neuron devices (``/dev/neuron*``), the home directory, and
    ``HF_TOKEN`` from the environment (FMBench reads it from hf_token.txt)."""
    gpus = 0
    if shutil.which("nvidia-smi"):
        try:
            listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True,
                                    timeout=30, check=False).stdout
            gpus = sum(1 for line in listed.splitlines() if line.startswith("GPU "))
        except (OSError, subprocess.TimeoutExpired):
            gpus = 0
    neuron = len(list(Path("/dev").glob("neuron[0-9]*")))
    home = Path.home()
    return specs.HostFacts(gpu_count=gpus, neuron_device_count=neuron, home=str(home),
                           hf_cache_exists=(home / ".cache" / "huggingface").is_dir(),
                           hf_token=os.environ.get("HF_TOKEN") or None)


def settings_spec(settings: ContainerSettings) -> specs.ContainerSpec:
    """``backend: container``: the container the ``container:`` section describes."""
    gpus: str | list[int] | None
    if settings.gpus is None or settings.gpus == 0:
        gpus = None
    elif isinstance(settings.gpus, int):
        gpus = list(range(settings.gpus))
    elif isinstance(settings.gpus, list):
        gpus = [int(g) for g in settings.gpus]
    else:
        gpus = str(settings.gpus)
    health = settings.health_url
    path = urlsplit(health).path if health.startswith(("http://", "https://")) else health
    request = "/v1/chat/completions" if settings.api == "chat" else "/v1/completions"
    return specs.ContainerSpec(str(settings.image), list(settings.args), settings.port,
                               env=dict(settings.env), gpus=gpus, shm_size=settings.shm_size,
                               run_args=list(settings.run_args),
                               health_path="/" + path.lstrip("/"), request_path=request)


class ContainerEndpoint:
    def __init__(self, config: Config, experiment: Experiment, context: EndpointContext) -> None:
        self.preflight(config, experiment)
        self.name = experiment.name
        self.config = config
        self.experiment = experiment
        self.context = context
        self.settings = experiment.container
        runtime = find_runtime(self.settings.runtime if self.settings else None)
        assert runtime is not None, "preflight checks there is a runtime"
        self.runtime: Runtime = runtime
        self.kind = "custom" if self.settings is not None else specs.container_type_of(experiment)
        self.timeout_s = config.load_for(experiment).request_timeout_s or 120.0
        self.startup_timeout_s = specs.startup_timeout_s(experiment)
        self.stop_timeout_s = specs.stop_timeout_s(experiment)
        # Known before deploy, so the journal names the container before it exists.
        self.container_name = (f"fmbench-{experiment.safe_name[:40]}-{context.run_id[:12]}-"
                               f"{secrets.token_hex(3)}").lower()
        self.host_port = 0
        self.spec: specs.ContainerSpec | None = None
        self._started = False
        self._files_dir: Path | None = None
        self._rest: Any = None

    # -- checks before anything runs -------------------------------------------------------
    @classmethod
    def preflight(cls, config: Config, experiment: Experiment) -> None:
        settings = experiment.container
        if settings is not None:
            if not settings.image:
                raise ConfigError("backend: container needs an image", key=_key(experiment, "container.image"),
                                  fix="set container.image to the server's image, e.g. vllm/vllm-openai:v0.8.3")
        else:
            reason = specs.unsupported_reason(experiment)
            if reason:
                raise ConfigError(
                    f"cannot start this FMBench EC2 experiment's container (deploy: yes): {reason}",
                    key=_key(experiment, "inference_spec.container_type"),
                    fix="start the server yourself and set 'deploy: no' with ep_name pointing at "
                        "it, or set openai.deploy.command to a command that starts it")
        if find_runtime(settings.runtime if settings else None) is None:
            wanted = (settings.runtime if settings and settings.runtime else None) \
                or os.environ.get("FMBENCH_CONTAINER_RUNTIME")
            what = f"'{wanted}' is not installed" if wanted else \
                "neither Podman nor Docker (with a running daemon) is available on this machine"
            raise ConfigError(
                f"experiment '{experiment.name}' starts its server in a container "
                f"({'backend: container' if settings else 'deploy: yes, ec2_deploy.py'}), but {what}",
                key=_key(experiment, "container.runtime" if settings else "deploy"),
                fix=_ALTERNATIVES)

    # -- the Endpoint interface --------------------------------------------------------------
    @property
    def deployed_by_us(self) -> bool:
        return self._started

    def _spec(self) -> specs.ContainerSpec:
        if self.settings is not None:
            return settings_spec(self.settings)
        try:
            copies = specs.fmbench_specs(self.experiment, host_facts())
        except specs.UnsupportedContainer as exc:
            raise EndpointError(str(exc), key=_key(self.experiment, "inference_spec")) from None
        if len(copies) > 1:
            raise EndpointError(
                f"inference_spec.model_copies gives {len(copies)} copies on this machine; FMBench "
                "puts them behind an nginx load balancer, pytest-fmbench runs one container",
                key=_key(self.experiment, "inference_spec.model_copies"),
                fix="set inference_spec.model_copies: 1 (or auto: one copy on every device)")
        return copies[0]

    def deploy(self) -> None:
        spec = self.spec = self._spec()
        self.host_port = free_port("127.0.0.1")
        mounts = self._write_files(spec)
        argv = specs.run_command(
            spec, runtime=self.runtime.path, name=self.container_name, host_port=self.host_port,
            labels=specs.labels(self.context.run_id, self.experiment.name),
            global_flags=self.runtime.global_flags,
            extra_run_args=default_run_args(self.runtime), file_mounts=mounts)
        self.context.log(f"[fmbench] starting container {self.container_name} of '{self.name}' "
                         f"({spec.image}) on 127.0.0.1:{self.host_port}")
        # Marked started before the call: an interrupted `run` may still have created it.
        self._started = True
        env = {**os.environ, **spec.env}  # values by name: never on the command line
        try:
            done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False,
                                  timeout=max(600.0, self.startup_timeout_s))
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise EndpointError(f"cannot run {self.runtime.path}: {exc}",
                                key=_key(self.experiment, "image_uri"),
                                fix="check the container runtime works: "
                                    f"{self.runtime.path} run --rm {spec.image}") from None
        if done.returncode != 0:
            raise EndpointError(
                f"{self.runtime.path} run exited {done.returncode}: "
                f"{(done.stderr or done.stdout).strip()[-1500:]}",
                key=_key(self.experiment, "container.image" if self.settings else "image_uri"),
                fix="check the image exists locally or can be pulled, and the runtime's options "
                    "(FMBENCH_CONTAINER_FLAGS, FMBENCH_CONTAINER_RUN_ARGS)")
        self._wait_ready(spec)
        for command in spec.after_start:
            self.runtime.run("exec", self.container_name, *command, timeout_s=self.startup_timeout_s)

    def _write_files(self, spec: specs.ContainerSpec) -> dict[str, str]:
        if not spec.files:
            return {}
        self._files_dir = Path(tempfile.mkdtemp(prefix="fmbench-container-"))
        mounts = {}
        for index, (container_path, content) in enumerate(sorted(spec.files.items())):
            host = self._files_dir / f"{index}-{Path(container_path).name}"
            host.write_text(content, encoding="utf-8")
            host.chmod(0o644)
            mounts[container_path] = str(host)
        return mounts

    def _wait_ready(self, spec: specs.ContainerSpec) -> None:
        url = f"http://127.0.0.1:{self.host_port}{spec.health_path}"
        deadline = time.monotonic() + self.startup_timeout_s
        next_check = 0.0
        while True:
            if url_ok(url):
                self.context.log(f"[fmbench] container {self.container_name} answers {spec.health_path}")
                return
            now = time.monotonic()
            if now >= next_check:
                state = self.runtime.run("inspect", "--type", "container", "--format",
                                         "{{.State.Status}}", self.container_name, check=False)
                status = state.stdout.strip()
                if state.returncode != 0 or status in ("exited", "dead", "stopped"):
                    self._fail(f"exited ({status or 'gone'}) before {spec.health_path} answered")
                next_check = now + 2.0
            if now >= deadline:
                self._fail(f"did not answer {spec.health_path} within {self.startup_timeout_s:g} s")
            time.sleep(_POLL_S)

    def _fail(self, what: str) -> None:
        tail = self._logs_tail()
        raise EndpointError(
            f"container {self.container_name} ({self.spec.image if self.spec else ''}) {what}; "
            f"last log lines:\n{tail}",
            key=_key(self.experiment, "container.startup_timeout_s" if self.settings
                     else "ec2.model_loading_timeout"),
            fix="look at logs/<experiment>-container.log; raise the timeout if the model is "
                "still loading")

    def _logs_tail(self, lines: int = 20) -> str:
        done = self.runtime.run("logs", "--tail", str(lines), self.container_name, check=False)
        return (done.stdout + done.stderr).strip()

    def teardown(self) -> None:
        """Stop and remove the container (only if it carries this run's label)."""
        if not self._started:
            return
        try:
            self._save_logs()
        finally:
            remove_if_ours(self.runtime, self.container_name, self.context.run_id,
                           stop_timeout_s=self.stop_timeout_s)
            self._started = False
            if self._files_dir is not None:
                shutil.rmtree(self._files_dir, ignore_errors=True)
                self._files_dir = None
            self.context.log(f"[fmbench] removed container {self.container_name}")

    def _save_logs(self) -> None:
        # Raw first (outside the results dir), then a scrubbed copy into logs/.
        raw = private_log_path(self.context.run_id, f"{self.experiment.safe_name}-container.log")
        try:
            with open(raw, "wb") as handle:
                subprocess.run(self.runtime.argv("logs", self.container_name), stdout=handle,
                               stderr=subprocess.STDOUT, timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            self.context.log(f"[fmbench] could not read the logs of {self.container_name}: {exc}")
        publish_log(raw, self.context.results_dir / LOGS_DIR
                    / f"{self.experiment.safe_name}-container.log")

    def reap_plan(self) -> dict[str, Any] | None:
        return {"kind": "container", "name": self.container_name, "run_id": self.context.run_id,
                **self.runtime.to_json()}

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.host_port}"

    def client(self) -> EndpointClient:
        spec = self.spec
        assert spec is not None, "client() after deploy()"
        if self.kind == specs.DJL:
            from pytest_fmbench.endpoints.rest import DJL_STYLE, RestEndpoint

            rest = RestEndpoint(self.config, self.experiment, self.context,
                                url=f"{self.base_url}{spec.request_path}", style=DJL_STYLE)
            return rest.client()
        base, api = split_endpoint_url(f"{self.base_url}{spec.request_path}")
        model = (self.settings.model if self.settings else None) or self.experiment.model_id
        if self.kind == specs.SGLANG:
            model = "default"  # what FMBench's predictor sends SGLang
        return OpenAIClient(base, api=api or "completions",  # type: ignore[arg-type]
                            model=model, stream=self.experiment.inference_spec.stream,
                            timeout_s=self.timeout_s, count_tokens=self.context.count_tokens,
                            keep_text=False)

    def describe(self) -> dict[str, Any]:
        """Never env values (they may be tokens)."""
        facts: dict[str, Any] = {
            "backend": "container", "container": self.container_name,
            "runtime": Path(self.runtime.path).name, "container_type": self.kind,
            "image": (self.spec.image if self.spec else
                      (self.settings.image if self.settings else self.experiment.image_uri)),
            "instance_type": self.experiment.instance_type,
        }
        if self.host_port:
            facts["url"] = self.base_url
        return facts

