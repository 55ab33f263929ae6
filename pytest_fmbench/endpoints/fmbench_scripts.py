"""FMBench's SageMaker deployment scripts (``deployment_script``), as container definitions
for the SageMaker backend.

FMBench runs a Python script per experiment to deploy; the backend here creates the model,
endpoint config and endpoint itself (named, tagged, waited for and deleted in
``sagemaker.py``), so each script is mapped to what it would have put in the container:

- ``deploy_w_hf_tgi.py``: the TGI container with HF_MODEL_ID = model_id, SM_NUM_GPUS from
  env.NUMBER_OF_GPU, FMBench's token limits, and env.HEALTH_CHECK_TIMEOUT as the container
  start-up health-check timeout.
- ``deploy_w_djl_serving.py``: the experiment's ``serving.properties`` packed alone in a
  ``model.tar.gz``, uploaded to the write bucket (the experiment's ``bucket``, else
  aws.bucket) under ``<model_id>/``, and given as ModelDataUrl with the experiment's env.
- ``sagemaker_deploy.py``: the experiment's ``model_data`` (an S3 URI or a ModelDataSource
  mapping) with its image and env; FMBench's 1200 s download and start-up timeouts. Without
  model_data, the image with env (HF_MODEL_ID = model_id), as without a script.
- ``neuron_deploy.py``: FMBench compiles the model with the Neuron SDK on its own machine
  first; that is not done here. With ``sagemaker.model_data`` (the compiled artifacts) it
  deploys like ``deploy_w_djl_serving.py``; without, startup says so.
- ``jumpstart.py``: resolved through the SageMaker SDK (``sagemaker.py``).

Anything else is refused at startup, naming the experiment, the key and the way out.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pytest_fmbench.config.model import Config, Experiment, SageMakerSettings
from pytest_fmbench.errors import ConfigError, EndpointError

TGI = "deploy_w_hf_tgi.py"
DJL = "deploy_w_djl_serving.py"
SAGEMAKER = "sagemaker_deploy.py"
NEURON = "neuron_deploy.py"
JUMPSTART = "jumpstart.py"
SUPPORTED = (TGI, DJL, SAGEMAKER, NEURON, JUMPSTART)

# The limits FMBench's TGI script always sets (tokens).
TGI_LIMITS = {"MAX_INPUT_LENGTH": "4090", "MAX_TOTAL_TOKENS": "4096", "MAX_BATCH_TOTAL_TOKENS": "8192"}
# sagemaker_deploy.py waits this long for a large model to download and start.
SAGEMAKER_DEPLOY_TIMEOUT_S = 1200
PROPERTIES_KEY = "serving.properties"
BYO_WAY_OUT = "or deploy the model yourself and benchmark it with 'deploy: no' and ep_name"


@dataclass
class ContainerPlan:
    """What one deployment script contributes to create_model and the production variant."""

    container: dict[str, Any]
    variant: dict[str, Any] = field(default_factory=dict)
    uploaded: list[str] = field(default_factory=list)


def script_name(experiment: Experiment) -> str | None:
    """``deployment_script`` without any folder (FMBench configs write both), lower-cased."""
    script = (experiment.deployment_script or "").strip()
    return script.replace("\\", "/").rsplit("/", 1)[-1].lower() or None


def _where(experiment: Experiment) -> str:
    return f"experiments ({experiment.name})"


def _model_data(experiment: Experiment) -> Any:
    """FMBench's experiment-level ``model_data``, else ours (``sagemaker.model_data``)."""
    settings = experiment.sagemaker or SageMakerSettings()
    return settings.model_data or getattr(experiment, "model_data", None)


def write_bucket(config: Config, experiment: Experiment) -> str | None:
    return getattr(experiment, "bucket", None) or config.aws.bucket


def check(config: Config, experiment: Experiment) -> None:
    """Startup, no network: the script is one we map, with the keys it needs."""
    name = script_name(experiment)
    if name is None or name == JUMPSTART:
        return
    where = _where(experiment)
    if name not in SUPPORTED:
        raise ConfigError(
            f"{where} deploys with deployment_script '{experiment.deployment_script}', "
            "which pytest-fmbench does not run",
            key=f"{where}.deployment_script",
            fix=f"use one of {', '.join(SUPPORTED)}, or drop deployment_script and give "
            f"image_uri and env (HF_MODEL_ID), {BYO_WAY_OUT}",
        )
    if name == TGI and not experiment.model_id:
        raise ConfigError(f"{where} uses {TGI} but has no model_id", key=f"{where}.model_id",
                          fix="set model_id to the Hugging Face model id TGI loads")
    if name == DJL:
        _check_djl(config, experiment)
    if name == NEURON and not _model_data(experiment):
        raise ConfigError(
            f"{where} uses {NEURON}, which compiles the model with the Neuron SDK on the "
            "machine running the benchmark; pytest-fmbench does not compile models",
            key=f"{where}.deployment_script",
            fix="compile once (FMBench's neuron_deploy.py or optimum-neuron), then set "
            f"sagemaker.model_data to the compiled artifacts' S3 URI, {BYO_WAY_OUT}",
        )


def _check_djl(config: Config, experiment: Experiment) -> None:
    where = _where(experiment)
    if not getattr(experiment, "serving_properties", None):
        raise ConfigError(f"{where} uses {DJL} but has no '{PROPERTIES_KEY}'",
                          key=f"{where}.{PROPERTIES_KEY}",
                          fix="add the DJL serving.properties text (engine=..., option.model_id=...)")
    if getattr(experiment, "download_from_hf_place_in_s3", None) is True:
        raise ConfigError(
            f"{where} asks FMBench to download the model from Hugging Face and copy it to "
            "model_s3_path first; pytest-fmbench does not copy model weights",
            key=f"{where}.download_from_hf_place_in_s3",
            fix="copy the weights to model_s3_path once (e.g. huggingface-cli download, then "
            "aws s3 sync) and set download_from_hf_place_in_s3: no",
        )
    if not write_bucket(config, experiment):
        raise ConfigError(
            f"{where} uses {DJL}, which uploads serving.properties as model data, but no write "
            "bucket is set", key="aws.bucket",
            fix="set aws.bucket ({write_bucket}: --fmbench-set write_bucket=NAME) or the "
            "experiment's bucket")


def prepare(config: Config, experiment: Experiment, env: dict[str, str], *,
            s3: Callable[[], Any], log: Callable[[str], None]) -> ContainerPlan | None:
    """The container for the experiment's deployment script; None when no FMBench script
    applies (no script, or jumpstart.py, which sagemaker.py resolves itself)."""
    name = script_name(experiment)
    if name is None or name == JUMPSTART:
        return None
    check(config, experiment)
    if name == TGI:
        return _tgi(experiment, env)
    if name == SAGEMAKER:
        # Without model_data (FMBench would fail) the container loads env HF_MODEL_ID, as
        # with no script at all: the backend's own container.
        return _sagemaker_deploy(experiment, env) if _model_data(experiment) else None
    if name == NEURON:
        return ContainerPlan(_with_model_data(experiment, env, _model_data(experiment)))
    return _djl(config, experiment, env, s3=s3, log=log)


def _tgi(experiment: Experiment, env: dict[str, str]) -> ContainerPlan:
    settings = dict(env)
    tgi = {"HF_MODEL_ID": str(experiment.model_id), **TGI_LIMITS}
    if "NUMBER_OF_GPU" in settings:
        tgi["SM_NUM_GPUS"] = settings["NUMBER_OF_GPU"]
    # FMBench's own knobs are read by its script, not the container; the rest passes through.
    for key in ("NUMBER_OF_GPU", "INSTANCE_COUNT", "HEALTH_CHECK_TIMEOUT"):
        settings.pop(key, None)
    variant: dict[str, Any] = {}
    timeout = (experiment.env or {}).get("HEALTH_CHECK_TIMEOUT")
    if timeout is not None:
        variant["ContainerStartupHealthCheckTimeoutInSeconds"] = int(timeout)
    return ContainerPlan({"Image": experiment.image_uri, "Environment": {**settings, **tgi}}, variant)


def _sagemaker_deploy(experiment: Experiment, env: dict[str, str]) -> ContainerPlan:
    container = _with_model_data(experiment, env, _model_data(experiment))
    variant = {"ModelDataDownloadTimeoutInSeconds": SAGEMAKER_DEPLOY_TIMEOUT_S,
               "ContainerStartupHealthCheckTimeoutInSeconds": SAGEMAKER_DEPLOY_TIMEOUT_S}
    return ContainerPlan(container, variant)


def _with_model_data(experiment: Experiment, env: dict[str, str], model_data: Any) -> dict[str, Any]:
    container: dict[str, Any] = {"Image": experiment.image_uri, "Environment": dict(env)}
    if isinstance(model_data, dict):
        # An uncompressed prefix (S3DataSource); gated models need the EULA accepted there.
        source = dict(model_data.get("S3DataSource", model_data))
        if experiment.accept_eula is not None and "ModelAccessConfig" not in source:
            source["ModelAccessConfig"] = {"AcceptEula": bool(experiment.accept_eula)}
        container["ModelDataSource"] = {"S3DataSource": source}
    else:
        container["ModelDataUrl"] = str(model_data)
    return container


def pack_serving_properties(text: str) -> bytes:
    """A ``model.tar.gz`` holding only ``serving.properties``, as DJL's container expects."""
    data = text.encode("utf-8")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo(PROPERTIES_KEY)
        info.size = len(data)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _djl(config: Config, experiment: Experiment, env: dict[str, str], *,
         s3: Callable[[], Any], log: Callable[[str], None]) -> ContainerPlan:
    bucket = str(write_bucket(config, experiment))
    properties = str(getattr(experiment, "serving_properties", ""))
    # FMBench formats {write_bucket} into the properties (option.s3url=s3://{write_bucket}/...).
    properties = properties.replace("{write_bucket}", bucket)
    key = f"{(experiment.model_id or experiment.safe_name).strip('/')}/model.tar.gz"
    try:
        s3().put_object(Bucket=bucket, Key=key, Body=pack_serving_properties(properties),
                        ContentType="application/gzip")
    except Exception as exc:  # noqa: BLE001 - credentials, permissions, a missing bucket
        raise EndpointError(
            f"uploading serving.properties to s3://{bucket}/{key} failed: "
            f"{type(exc).__name__}: {exc}",
            key=f"{_where(experiment)}.bucket",
            fix="check the write bucket (aws.bucket or the experiment's bucket), credentials "
            "and s3:PutObject",
        ) from None
    uri = f"s3://{bucket}/{key}"
    log(f"serving.properties packed as {uri}: {json.dumps(properties.strip().splitlines())}")
    container = {"Image": experiment.image_uri, "ModelDataUrl": uri, "Environment": dict(env)}
    return ContainerPlan(container, uploaded=[uri])
