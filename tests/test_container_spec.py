"""The container each FMBench EC2 experiment describes, and its run line, against FMBench's own
derivation (``ec2_deploy.py`` and ``inference_containers/*.py`` of fmbench 2.1.6).

The experiments are real sections of FMBench's wheel (downloaded as the corpus tests do). The
expected values were written from reading FMBench's scripts; each test quotes the line of
FMBench's script it mirrors.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from pytest_fmbench.config.loader import load_config
from pytest_fmbench.config.model import ContainerSettings, Experiment
from pytest_fmbench.endpoints import container_spec as specs
from pytest_fmbench.endpoints.container import settings_spec
from pytest_fmbench.endpoints.container_runtime import Runtime, default_run_args
from tests.fmbench_support import fmbench_config_text

GPU_HOST = specs.HostFacts(gpu_count=1, home="/home/ubuntu", hf_token="hf_secret")


def fmbench_experiment(relative: str, tmp_path: Path, index: int = 0) -> Experiment:
    """One experiment of FMBench's wheel config, placeholders filled."""
    text = fmbench_config_text(relative)
    names = set(re.findall(r"\{([A-Za-z_][A-Za-z0-9_]*)\}", text))
    fill = {"region": "us-east-1", "model_id": "deepseek-ai/DeepSeek-R1-Distill-Llama-8B",
            "instance_type": "g6e.2xlarge"}
    path = tmp_path / "cfg.yml"
    path.write_text(text, encoding="utf-8")
    config = load_config(path, {name: fill.get(name, "x") for name in names})
    return config.experiments[index]


def argv(spec: specs.ContainerSpec, runtime: str = "docker", **kwargs: Any) -> list[str]:
    return specs.run_command(spec, runtime=runtime, name="c", host_port=41000,
                             labels={"fmbench.run-id": "r"}, **kwargs)


def test_vllm_cpu_m7a(tmp_path: Path) -> None:
    # vllm.py: docker run -d {privileged} ... --env "HF_TOKEN=..." --ipc=host -p 8000:8000
    #          {env_str} {image_uri} --model {model_id}
    experiment = fmbench_experiment("llama3.2/1b/config-llama3.2-1b-m7a-24xlarge-ec2.yml", tmp_path)
    assert experiment.resolved_backend == "container"
    [spec] = specs.fmbench_specs(experiment, GPU_HOST)
    assert (spec.image, spec.args) == ("vllm-cpu-env", ["--model", "meta-llama/Llama-3.2-1b-Instruct"])
    assert spec.container_port == 8000 and spec.request_path == "/v1/completions"
    assert spec.gpus is None and spec.ipc_host and spec.privileged  # ec2.privileged_mode: yes
    assert spec.env == {"MODEL_LOADING_TIMEOUT": "2400", "VLLM_CPU_KVCACHE_SPACE": "192",
                        "VLLM_CPU_OMP_THREADS_BIND": "0-92", "HF_TOKEN": "hf_secret"}
    line = argv(spec)
    assert line[:4] == ["docker", "run", "-d", "--name"]
    assert "-p" in line and line[line.index("-p") + 1] == "127.0.0.1:41000:8000"
    assert line[-3:] == ["vllm-cpu-env", "--model", "meta-llama/Llama-3.2-1b-Instruct"]
    assert {"--privileged", "--ipc=host"} <= set(line)
    # Env by name only: the token's value is never on the command line.
    assert "hf_secret" not in " ".join(line) and ["--env", "HF_TOKEN"] == line[
        line.index("HF_TOKEN") - 1: line.index("HF_TOKEN") + 1]


def test_vllm_gpu_llama4_with_cli_params(tmp_path: Path) -> None:
    # vllm_gpu.py: ... --runtime nvidia --gpus all ... --ipc=host -p 8000:8000 {env_str}
    #              {image_uri} --model {model_id} {cli_params}
    experiment = fmbench_experiment("llama4/config-llama4-scout-17b-g6e-longbench-vllm.yml", tmp_path)
    [spec] = specs.fmbench_specs(experiment, GPU_HOST)
    assert spec.image == "vllm/vllm-openai:v0.8.3" and spec.gpus == "all" and spec.ipc_host
    assert spec.args == ["--model", "meta-llama/Llama-4-Scout-17B-16E-Instruct",
                         "--gpu-memory-utilization", "0.95", "--max-model-len", "150000",
                         "--enable-chunked-prefill", "--tensor-parallel-size", "8"]
    docker, podman = argv(spec), argv(spec, "/usr/bin/podman")
    assert docker[docker.index("--gpus") + 1] == "all"
    # Podman: the NVIDIA Container Toolkit's CDI device instead of --gpus.
    assert "--gpus" not in podman and podman[podman.index("--device") + 1] == "nvidia.com/gpu=all"


def test_sglang_deepseek(tmp_path: Path) -> None:
    # sglang.py: docker run -d --rm --gpus all --shm-size 32g -p 30000:30000
    #   -v $HOME/.cache/huggingface:/root/.cache/huggingface --ipc host --network host ...
    #   {image_uri} python3 -m sglang.launch_server --model {model_id} --trust-remote-code
    #   --port 30000 {cli_params}
    experiment = fmbench_experiment("deepseek/config-deepseek-r1-sglang.yml", tmp_path)
    host = specs.HostFacts(gpu_count=8, home="/home/ubuntu", hf_cache_exists=True)
    [spec] = specs.fmbench_specs(experiment, host)
    assert spec.image == "lmsysorg/sglang:latest" and spec.gpus == "all" and spec.shm_size == "32g"
    assert spec.args[:8] == ["python3", "-m", "sglang.launch_server", "--model",
                             "deepseek-ai/DeepSeek-R1-Distill-Llama-8B", "--trust-remote-code",
                             "--port", "30000"]
    assert spec.container_port == 30000 and spec.request_path == "/v1/chat/completions"
    assert spec.volumes == ["/home/ubuntu/.cache/huggingface:/root/.cache/huggingface"]
    line = argv(spec)
    # Published on loopback: never FMBench's --network host.
    assert "--network" not in " ".join(line) and "127.0.0.1:41000:30000" in line


def test_djl_default_type_one_gpu_copy(tmp_path: Path) -> None:
    # No container_type: FMBench's default, DJL. djl.py create_djl_service: per copy
    # NVIDIA_VISIBLE_DEVICES, user djl, shm_size, serving.properties at /opt/ml/model,
    # config.properties (inference_address on the listen port) at /opt/djl/conf.
    experiment = fmbench_experiment(
        "llama3.2/1b/config-llama3.2-1b-g5.2xl-tp-1-mc-max-djl-ec2.yml", tmp_path)
    assert specs.container_type_of(experiment) == specs.DJL
    [spec] = specs.fmbench_specs(experiment, specs.HostFacts(gpu_count=1))
    assert spec.image.endswith("djl-inference:0.29.0-lmi11.0.0-cu124")
    assert spec.gpus == [0] and spec.env["NVIDIA_VISIBLE_DEVICES"] == "0"
    assert (spec.user, spec.shm_size, spec.container_port) == ("djl", "12g", 8080)
    assert spec.request_path == "/invocations" and spec.health_path == "/ping"
    assert "option.rolling_batch=lmi-dist" in spec.files["/opt/ml/model/serving.properties"]
    assert "inference_address=http://0.0.0.0:8080" in spec.files["/opt/djl/conf/config.properties"]
    line = argv(spec, file_mounts={"/opt/ml/model/serving.properties": "/tmp/x/sp"})
    assert '"device=0"' in line and "/tmp/x/sp:/opt/ml/model/serving.properties:ro" in line


def test_djl_neuron_max_copies_split_the_devices(tmp_path: Path) -> None:
    # utils.get_model_copies_to_start_neuron: tp_degree 16 needs 8 devices a copy; "max" on
    # 16 devices (trn1.32xlarge) gives 2 copies, on ports 8000 and 8001 behind nginx; copy 2
    # maps /dev/neuron8..15 to /dev/neuron0..7.
    experiment = fmbench_experiment(
        "llama3/8b/config-llama3-8b-trn1-32xl-tp16-bs-4-ec2.yml", tmp_path)
    copies = specs.fmbench_specs(experiment, specs.HostFacts(neuron_device_count=16))
    assert [c.container_port for c in copies] == [8000, 8001]
    assert copies[1].devices[0] == ("/dev/neuron8", "/dev/neuron0")
    assert copies[1].devices[-1] == ("/dev/neuron15", "/dev/neuron7") and copies[1].gpus is None
    assert "--device" in argv(copies[0]) and "/dev/neuron0:/dev/neuron0" in argv(copies[0])


def test_model_copies_as_fmbench_counts_them() -> None:
    assert specs.model_copies("max", tp_degree=1, devices=4, neuron=False) == (4, 1)
    assert specs.model_copies("max", tp_degree=2, devices=4, neuron=False) == (2, 2)
    assert specs.model_copies(3, tp_degree=2, devices=4, neuron=False) == (2, 2)  # at most what fits
    assert specs.model_copies("auto", tp_degree=1, devices=8, neuron=False) == (1, 8)
    assert specs.model_copies("max", tp_degree=1, devices=0, neuron=False) == (1, 0)  # CPU host


def test_ollama_runs_its_container_and_pulls_the_model(tmp_path: Path) -> None:
    # FMBench's ollama.py installs Ollama on the host (image_uri: ec2) and runs
    # `ollama pull {model_id}`, then serves on 11434.
    experiment = fmbench_experiment("llama3.1/8b/config-llama3.1-8b-g6e.2xl-ollama.yml", tmp_path)
    [spec] = specs.fmbench_specs(experiment, GPU_HOST)
    assert spec.image == specs.OLLAMA_IMAGE and spec.container_port == 11434
    assert spec.after_start == [["ollama", "pull", str(experiment.model_id)]]
    assert spec.request_path == "/api/generate" and spec.gpus == "all"


def test_triton_is_refused_with_the_reason(tmp_path: Path) -> None:
    experiment = fmbench_experiment("llama3/8b/config-llama3-8b-g5.4xl-tp-1-mc-max-triton-ec2.yml",
                                    tmp_path)
    reason = specs.unsupported_reason(experiment)
    assert reason is not None and "TensorRT-LLM" in reason
    with pytest.raises(specs.UnsupportedContainer):
        specs.fmbench_specs(experiment, GPU_HOST)


def test_backend_container_settings() -> None:
    settings = ContainerSettings(image="img:1", args=["--x"], port=9000, gpus=2,
                                 health_url="http://ignored:1/healthz", shm_size="1g",
                                 run_args=["--ulimit", "memlock=-1"])
    spec = settings_spec(settings)
    assert (spec.image, spec.args, spec.container_port, spec.gpus) == ("img:1", ["--x"], 9000, [0, 1])
    assert spec.health_path == "/healthz"
    line = argv(spec, "podman", global_flags=["--runtime", "runc"], extra_run_args=["-v", "/a:/a"])
    assert line[:5] == ["podman", "--runtime", "runc", "run", "-d"]
    assert line[-6:] == ["-v", "/a:/a", "--ulimit", "memlock=-1", "img:1", "--x"]
    assert ["nvidia.com/gpu=0", "nvidia.com/gpu=1"] == [line[i + 1] for i, w in enumerate(line)
                                                       if w == "--device"]


def test_podman_gets_the_hosts_lower_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    import resource

    monkeypatch.delenv("FMBENCH_CONTAINER_RUN_ARGS", raising=False)
    limits = {resource.RLIMIT_NOFILE: (1024, 20000), resource.RLIMIT_NPROC: (100, 96365)}
    monkeypatch.setattr(resource, "getrlimit", lambda which: limits[which])
    args = default_run_args(Runtime("/usr/bin/podman"))
    assert args[:2] == ["--ulimit", "nofile=20000:20000"]
    assert args[2] == "--ulimit" and args[3].startswith("nproc=")
    assert default_run_args(Runtime("/usr/bin/docker")) == []
    # Given by the user: kept, not added twice.
    monkeypatch.setenv("FMBENCH_CONTAINER_RUN_ARGS", "--ulimit nofile=5000:5000 -v /a:/a")
    assert default_run_args(Runtime("podman"))[:5] == ["--ulimit", "nofile=5000:5000", "-v", "/a:/a",
                                                       "--ulimit"]


def test_labels_name_the_run_and_experiment() -> None:
    assert specs.labels("r1", "exp") == {"fmbench.run-id": "r1",
                                         "fmbench.created-by": "pytest-fmbench",
                                         "fmbench.experiment": "exp"}


def test_the_case_deadline_covers_the_model_loading_timeout(tmp_path: Path) -> None:
    from pytest_fmbench import timeouts

    experiment = fmbench_experiment("llama3.2/1b/config-llama3.2-1b-m7a-24xlarge-ec2.yml", tmp_path)
    assert specs.startup_timeout_s(experiment) == 2400.0  # ec2.model_loading_timeout
    assert timeouts.deploy_bound_s(experiment) == 2400.0 + timeouts.CONTAINER_START_S
    assert timeouts.teardown_bound_s(experiment) >= specs.DEFAULT_STOP_TIMEOUT_S
