"""What container an experiment describes, and the ``podman``/``docker run`` line that starts it.

Pure functions (no processes, no files): the container backend (``container.py``) gathers
the host's facts (GPU and Neuron device counts, the home directory) and hands them in, so
every derivation here is unit-tested against FMBench's own.

FMBench's ``ec2_deploy.py`` (2.1.6) writes one shell script per ``inference_spec.container_type``;
read there, each maps onto one ``ContainerSpec``:

- ``vllm`` (CPU image): ``--ipc=host``, port 8000, ``IMAGE --model MODEL``;
- ``vllm_gpu``: the same with every GPU and ``cli_params`` after the model;
- ``sglang``: every GPU, ``--shm-size 32g``, the Hugging Face cache mounted, port 30000,
  ``python3 -m sglang.launch_server --model MODEL --trust-remote-code --port 30000 CLI_PARAMS``;
- ``djl`` (also FMBench's default when ``container_type`` is unset): DJL Serving with
  ``serving.properties`` at ``/opt/ml/model`` and a ``config.properties`` at ``/opt/djl/conf``
  listening on ``ep_name``'s port, ``inference_spec.shm_size``, user ``djl``, the GPUs (or
  ``/dev/neuron*`` devices) of one model copy; FMBench starts one such container per model copy
  behind nginx, so copies are derived here (``model_copies``: a number, ``max``, ``auto``);
- ``ollama``: FMBench installs Ollama on the host; here its container (``image_uri`` when it
  names an image, else ``docker.io/ollama/ollama``), port 11434, then ``ollama pull MODEL``;
- ``llama_server`` (which ``ec2_deploy.py`` refuses): llama.cpp's server image with
  ``--model MODEL --host 0.0.0.0 --port PORT CLI_PARAMS``;
- ``triton``: FMBench builds TensorRT-LLM engines or Neuron model repositories on the host
  before its container starts; that preparation is not reproduced (``unsupported_reason``).

Differences from FMBench, on purpose: the server is published on a free loopback port (not the
host's 8000, and never ``--network host``), every container carries labels naming the run, and
env values are passed by name (``--env NAME``, the value in the runtime's environment) so no
secret shows in a process list or a log.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
from collections.abc import Mapping, Sequence
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

VLLM, VLLM_GPU, SGLANG, DJL, TRITON, OLLAMA, LLAMA_SERVER = (
    "vllm", "vllm_gpu", "sglang", "djl", "triton", "ollama", "llama_server")
CONTAINER_TYPES = (VLLM, VLLM_GPU, SGLANG, DJL, TRITON, OLLAMA, LLAMA_SERVER)
OPENAI_TYPES = frozenset({VLLM, VLLM_GPU, SGLANG, OLLAMA, LLAMA_SERVER})
# FMBench's predictor and deploy script treat a missing container_type as DJL.
DEFAULT_TYPE = DJL
NEURON_PREFIXES = ("inf2", "trn1", "trn2")
OLLAMA_IMAGE = "docker.io/ollama/ollama"
LABEL_RUN_ID = "fmbench.run-id"
LABEL_CREATED_BY = "fmbench.created-by"
LABEL_EXPERIMENT = "fmbench.experiment"
CREATED_BY = "pytest-fmbench"

# Container port and health route per type, when ep_name names no port.
_DEFAULT_PORT = {VLLM: 8000, VLLM_GPU: 8000, SGLANG: 30000, DJL: 8080, OLLAMA: 11434,
                 LLAMA_SERVER: 8080, TRITON: 8080}
_HEALTH = {VLLM: "/v1/models", VLLM_GPU: "/v1/models", SGLANG: "/v1/models", DJL: "/ping",
           OLLAMA: "/api/tags", LLAMA_SERVER: "/health", TRITON: "/v2/health/ready"}
_DEFAULT_ROUTE = {VLLM: "/v1/completions", VLLM_GPU: "/v1/completions",
                  SGLANG: "/v1/chat/completions", DJL: "/invocations",
                  OLLAMA: "/api/generate", LLAMA_SERVER: "/v1/completions",
                  TRITON: "/v2/models/ensemble/generate"}
_COPIES_BASE_PORT = 8000
# DJL Serving's model server config (FMBench writes the same keys).
_DJL_CONFIG_PROPERTIES = ("inference_address=http://0.0.0.0:{port}\n"
                          "management_address=http://0.0.0.0:{port}\n"
                          "cluster_address=http://0.0.0.0:8888\n"
                          "model_store=/opt/ml/model\n"
                          "load_models=ALL\n")


@dataclasses.dataclass(frozen=True)
class HostFacts:
    """What the derivation needs to know about the machine (gathered by the backend)."""

    gpu_count: int = 0
    neuron_device_count: int = 0
    home: str = "/root"
    hf_cache_exists: bool = False
    # FMBench passes its hf_token.txt to every container as HF_TOKEN; ours comes from the
    # environment (passed by name, so it never shows on a command line).
    hf_token: str | None = dataclasses.field(default=None, repr=False)


@dataclasses.dataclass
class ContainerSpec:
    """One container to run: everything but the runtime, the name, labels and the host port."""

    image: str
    args: list[str] = dataclasses.field(default_factory=list)  # after the image
    container_port: int = 8000
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    # "all", a list of GPU indices, or None for no GPU.
    gpus: str | list[int] | None = None
    # (host device, device in the container), e.g. ("/dev/neuron2", "/dev/neuron0").
    devices: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    shm_size: str | None = None
    ipc_host: bool = False
    privileged: bool = False
    user: str | None = None
    volumes: list[str] = dataclasses.field(default_factory=list)
    # Files the backend writes on the host and mounts read-only: container path -> content.
    files: dict[str, str] = dataclasses.field(default_factory=dict)
    run_args: list[str] = dataclasses.field(default_factory=list)  # extra `run` options, verbatim
    health_path: str = "/v1/models"
    request_path: str = "/v1/completions"  # the route requests go to
    # Commands run inside the container once it answers (e.g. ``ollama pull MODEL``).
    after_start: list[list[str]] = dataclasses.field(default_factory=list)


class UnsupportedContainer(ValueError):
    """The experiment's container cannot be started by us (the message says why)."""


DEFAULT_STARTUP_TIMEOUT_S = 1800.0
DEFAULT_STOP_TIMEOUT_S = 5.0


def startup_timeout_s(experiment: Any) -> float:
    """How long the server may take to answer: ``container.startup_timeout_s``, else FMBench's
    ``ec2.model_loading_timeout`` (else ``inference_spec.model_loading_timeout``), else 1800 s."""
    settings = experiment.container
    if settings is not None and settings.startup_timeout_s:
        return float(settings.startup_timeout_s)
    for source in (experiment.ec2 or {}, experiment.inference_spec.model_extra or {}):
        value = source.get("model_loading_timeout")
        try:
            if value is not None and float(value) > 0:
                return float(value)
        except (TypeError, ValueError):
            pass
    return DEFAULT_STARTUP_TIMEOUT_S


def stop_timeout_s(experiment: Any) -> float:
    settings = experiment.container
    return float(settings.stop_timeout_s) if settings is not None else DEFAULT_STOP_TIMEOUT_S


def container_type_of(experiment: Any) -> str:
    return str(experiment.inference_spec.container_type or DEFAULT_TYPE).strip().lower()


def is_neuron_instance(instance_type: str | None) -> bool:
    kind = (instance_type or "").removeprefix("ml.")
    return kind.startswith(NEURON_PREFIXES)


def unsupported_reason(experiment: Any) -> str | None:
    """Why this FMBench experiment's container cannot be started here (None: it can)."""
    kind = container_type_of(experiment)
    if kind not in CONTAINER_TYPES:
        return (f"inference_spec.container_type '{kind}' is none of FMBench's EC2 container "
                f"types ({', '.join(CONTAINER_TYPES)})")
    if kind == TRITON:
        return ("FMBench's Triton deployment builds TensorRT-LLM engines (GPU) or Neuron model "
                "repositories on the host before its container starts; pytest-fmbench does not "
                "reproduce that preparation")
    if kind != OLLAMA and not (experiment.image_uri or "").strip():
        return "image_uri is not set"
    return None


def _inference_spec(experiment: Any) -> dict[str, Any]:
    spec = experiment.inference_spec
    return {**(spec.model_extra or {}), "container_type": spec.container_type}


def ep_port_and_path(ep_name: str | None, kind: str) -> tuple[int, str]:
    """The container's port and request route from ``ep_name`` (FMBench reads the port there)."""
    port, path = _DEFAULT_PORT[kind], _DEFAULT_ROUTE[kind]
    if ep_name and ep_name.startswith(("http://", "https://")):
        parts = urlsplit(ep_name)
        try:
            port = parts.port or port
        except ValueError:
            pass
        path = parts.path or path
    return port, path


def model_copies(requested: Any, *, tp_degree: int, devices: int, neuron: bool) -> tuple[int, int]:
    """(copies, devices per copy) as FMBench's ``get_model_copies_to_start_*`` counts them.

    GPUs: a copy needs ``tp_degree`` GPUs; Neuron: ``tp_degree / 2`` devices (two cores
    each). ``auto``: one copy on every device; ``max``: as many as fit; a number: at most as
    many as fit. No device at all (a CPU host): one copy without devices.
    """
    if devices <= 0:
        return 1, 0
    text = str(requested if requested is not None else 1).strip().lower()
    if text == "auto":
        return 1, devices
    per_copy = max(1, tp_degree // 2 if neuron else tp_degree)
    possible = max(1, devices // per_copy)
    wanted = possible if text == "max" else int(float(text))
    return max(1, min(wanted, possible)), per_copy


def _split(text: Any) -> list[str]:
    return shlex.split(str(text)) if text else []


def _env(experiment: Any, host: HostFacts, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {str(k): "" if v is None else str(v) for k, v in (experiment.env or {}).items()}
    env.update(extra or {})
    if host.hf_token:
        env["HF_TOKEN"] = host.hf_token
    return env


def fmbench_specs(experiment: Any, host: HostFacts) -> list[ContainerSpec]:
    """The containers FMBench's ``ec2_deploy.py`` would start for ``experiment`` (one per
    model copy), each on its own container port. Raises ``UnsupportedContainer``."""
    reason = unsupported_reason(experiment)
    if reason:
        raise UnsupportedContainer(reason)
    kind = container_type_of(experiment)
    spec = _inference_spec(experiment)
    port, route = ep_port_and_path(experiment.ep_name, kind)
    image = str(experiment.image_uri or "").strip()
    model = str(experiment.model_id or "")
    cli = _split(spec.get("cli_params"))
    privileged = bool((experiment.ec2 or {}).get("privileged_mode") or False)
    common: dict[str, Any] = {"container_port": port, "request_path": route,
                              "health_path": _HEALTH[kind], "privileged": privileged}
    if kind == VLLM:
        return [ContainerSpec(image, ["--model", model], env=_env(experiment, host), ipc_host=True,
                              **common)]
    if kind == VLLM_GPU:
        return [ContainerSpec(image, ["--model", model, *cli], env=_env(experiment, host),
                              ipc_host=True, gpus="all", **common)]
    if kind == SGLANG:
        volumes = ([f"{host.home}/.cache/huggingface:/root/.cache/huggingface"]
                   if host.hf_cache_exists else [])
        args = ["python3", "-m", "sglang.launch_server", "--model", model,
                "--trust-remote-code", "--port", str(port), *cli]
        return [ContainerSpec(image, args, env=_env(experiment, host), gpus="all", shm_size="32g",
                              ipc_host=True, volumes=volumes, **common)]
    if kind == LLAMA_SERVER:
        args = ["--model", model, "--host", "0.0.0.0", "--port", str(port), *cli]
        return [ContainerSpec(image, args, env=_env(experiment, host),
                              gpus="all" if host.gpu_count else None, **common)]
    if kind == OLLAMA:
        if not image or image == "ec2" or not re.search(r"[/:]", image):
            image = OLLAMA_IMAGE  # FMBench's configs say image_uri: ec2 (Ollama on the host)
        return [ContainerSpec(image, [], env=_env(experiment, host, {"OLLAMA_HOST": f"0.0.0.0:{port}"}),
                              gpus="all" if host.gpu_count else None,
                              volumes=[f"{host.home}/.ollama:/root/.ollama"],
                              after_start=[["ollama", "pull", model]], **common)]
    return _djl_specs(experiment, spec, host, image, port, common)


def _djl_specs(experiment: Any, spec: dict[str, Any], host: HostFacts, image: str, port: int,
               common: dict[str, Any]) -> list[ContainerSpec]:
    params = spec.get("container_params") or {}
    properties = (params.get("serving.properties") if isinstance(params, dict) else None) \
        or experiment.serving_properties or ""
    tp_degree = int((params.get("tp_degree") if isinstance(params, dict) else None)
                    or spec.get("tp_degree") or 1)
    neuron = is_neuron_instance(experiment.instance_type)
    devices = host.neuron_device_count if neuron else host.gpu_count
    copies, per_copy = model_copies(spec.get("model_copies", 1), tp_degree=tp_degree,
                                    devices=devices, neuron=neuron)
    shm = spec.get("shm_size")
    # One copy listens on ep_name's port; several on 8000, 8001, ... behind FMBench's nginx.
    base_port = port if copies == 1 else _COPIES_BASE_PORT
    specs = []
    for copy in range(copies):
        offset = copy * per_copy
        copy_port = base_port + copy
        env = _env(experiment, host)
        gpus: list[int] | None = None
        neuron_devices: list[tuple[str, str]] = []
        if neuron:
            neuron_devices = [(f"/dev/neuron{offset + j}", f"/dev/neuron{j}") for j in range(per_copy)]
        elif per_copy:
            gpus = [offset + j for j in range(per_copy)]
            env["NVIDIA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpus)
        files = {"/opt/djl/conf/config.properties": _DJL_CONFIG_PROPERTIES.format(port=copy_port)}
        if properties:
            files["/opt/ml/model/serving.properties"] = _properties_text(properties)
        specs.append(ContainerSpec(
            image, [], **{**common, "container_port": copy_port}, env=env, gpus=gpus,
            devices=neuron_devices, shm_size=str(shm) if shm else None, user=DJL, files=files))
    return specs


def _properties_text(properties: Any) -> str:
    text = str(properties)
    return text if text.endswith("\n") else text + "\n"


# -- the run line ----------------------------------------------------------------------------

def gpu_options(runtime: str, gpus: str | list[int] | None) -> list[str]:
    """Docker: ``--gpus all`` / ``--gpus "device=0,1"``; Podman: CDI devices
    (``nvidia.com/gpu=all``; the NVIDIA Container Toolkit's ``nvidia-ctk cdi generate``)."""
    if gpus is None or gpus == []:
        return []
    podman = is_podman(runtime)
    if gpus == "all":
        return ["--device", "nvidia.com/gpu=all"] if podman else ["--gpus", "all"]
    ids = list(gpus) if isinstance(gpus, list) else []
    if podman:
        return [option for g in ids for option in ("--device", f"nvidia.com/gpu={g}")]
    return ["--gpus", f"\"device={','.join(str(g) for g in ids)}\""]


def is_podman(runtime: str) -> bool:
    return PurePosixPath(runtime).name.startswith("podman")


def labels(run_id: str, experiment: str) -> dict[str, str]:
    return {LABEL_RUN_ID: run_id, LABEL_CREATED_BY: CREATED_BY, LABEL_EXPERIMENT: experiment}


def run_command(spec: ContainerSpec, *, runtime: str, name: str, host_port: int,
                labels: Mapping[str, str], global_flags: Sequence[str] = (),
                extra_run_args: Sequence[str] = (),
                file_mounts: Mapping[str, str] | None = None) -> list[str]:
    """The ``<runtime> [global flags] run -d ...`` argv (values of ``spec.env`` not in it:
    ``--env NAME`` takes them from the runtime's environment)."""
    argv = [runtime, *global_flags, "run", "-d", "--name", name]
    for key, value in labels.items():
        argv += ["--label", f"{key}={value}"]
    argv += ["-p", f"127.0.0.1:{host_port}:{spec.container_port}"]
    if spec.privileged:
        argv.append("--privileged")
    if spec.ipc_host:
        argv.append("--ipc=host")
    if spec.shm_size:
        argv += ["--shm-size", spec.shm_size]
    if spec.user:
        argv += ["--user", spec.user]
    argv += gpu_options(runtime, spec.gpus)
    for host_device, device in spec.devices:
        argv += ["--device", f"{host_device}:{device}"]
    for key in spec.env:
        argv += ["--env", key]
    for volume in spec.volumes:
        argv += ["-v", volume]
    for container_path, host_path in (file_mounts or {}).items():
        argv += ["-v", f"{host_path}:{container_path}:ro"]
    argv += [*extra_run_args, *spec.run_args, spec.image, *spec.args]
    return argv
