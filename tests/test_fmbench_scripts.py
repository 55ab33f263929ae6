"""FMBench's deployment scripts mapped onto the SageMaker backend: checks at startup, the
container each script implies, and a DJL deploy against moto (model data uploaded to S3)."""

from __future__ import annotations

import io
import tarfile
from typing import Any

import boto3
import pytest

from pytest_fmbench.endpoints.fmbench_scripts import (
    check,
    pack_serving_properties,
    prepare,
    script_name,
)
from pytest_fmbench.endpoints.sagemaker import SageMakerEndpoint
from pytest_fmbench.errors import ConfigError
from pytest_fmbench.testing.aws_emulator import aws_environment
from tests.aws_support import bench_config, context, moto_inventory, reset_moto
from tests.fmbench_support import empty_s3

DJL_IMAGE = "763104351884.dkr.ecr.us-east-1.amazonaws.com/djl-inference:0.27.0-deepspeed0.12.6-cu121"
TGI_IMAGE = "763104351884.dkr.ecr.us-east-1.amazonaws.com/huggingface-pytorch-tgi-inference:2.1.1-tgi1.4.5-gpu-py310-cu121-ubuntu22.04-v1.0"
PROPERTIES = ("engine=MPI\noption.tensor_parallel_degree=4\n"
              "option.model_id=meta-llama/Meta-Llama-3-8B-Instruct\noption.rolling_batch=lmi-dist\n")
WRITE_BUCKET = "sagemaker-fmbench-write-us-east-1-123456789012"


def experiment(script: str, **extra: Any) -> dict[str, Any]:
    return {"name": "exp", "model_id": "meta-llama/Meta-Llama-3-8B-Instruct", "ep_name": "llama3",
            "instance_type": "ml.g4dn.xlarge", "image_uri": DJL_IMAGE, "deploy": True,
            "deployment_script": script, "inference_script": "sagemaker_predictor.py",
            "sagemaker": {"poll_interval_s": 0.01}, **extra}


def config_for(exp: dict[str, Any], bucket: str | None = WRITE_BUCKET) -> Any:
    from tests.aws_support import ROLE

    return bench_config(exp, aws={"region": "us-east-1", "sagemaker_execution_role": ROLE,
                                  "bucket": bucket})


def no_s3() -> Any:
    raise AssertionError("no upload expected")


def test_script_names_as_fmbench_configs_write_them() -> None:
    cfg = config_for(experiment("fmbench/scripts/Deploy_W_HF_TGI.py"))
    assert script_name(cfg.experiments[0]) == "deploy_w_hf_tgi.py"
    assert script_name(config_for(experiment("")).experiments[0]) is None


@pytest.mark.parametrize(("script", "extra", "key", "words"), [
    ("ec2_deploy.py", {}, "deployment_script", "does not run"),
    ("my_own_deploy.py", {}, "deployment_script", "deploy: no"),
    ("neuron_deploy.py", {}, "deployment_script", "sagemaker.model_data"),
    ("deploy_w_djl_serving.py", {}, "serving.properties", "option.model_id"),
    ("deploy_w_hf_tgi.py", {"model_id": None}, "model_id", "Hugging Face model id"),
])
def test_what_cannot_run_is_refused_at_startup_with_the_way_out(
        script: str, extra: dict[str, Any], key: str, words: str) -> None:
    cfg = config_for(experiment(script, **extra))
    with pytest.raises(ConfigError) as error:
        check(cfg, cfg.experiments[0])
    text = error.value.render()
    assert f"experiments (exp).{key}" in text and words in text


def test_djl_needs_a_write_bucket() -> None:
    cfg = config_for(experiment("deploy_w_djl_serving.py", **{"serving.properties": PROPERTIES}),
                     bucket=None)
    with pytest.raises(ConfigError, match="aws.bucket"):
        check(cfg, cfg.experiments[0])


def test_tgi_script_sets_the_container_env_fmbench_sets() -> None:
    cfg = config_for(experiment("deploy_w_hf_tgi.py", image_uri=TGI_IMAGE, env={
        "MODEL_LOADING_TIMEOUT": "3600", "NUMBER_OF_GPU": 8, "INSTANCE_COUNT": 1,
        "HEALTH_CHECK_TIMEOUT": 300}))
    env = {"MODEL_LOADING_TIMEOUT": "3600", "NUMBER_OF_GPU": "8", "INSTANCE_COUNT": "1",
           "HEALTH_CHECK_TIMEOUT": "300"}
    plan = prepare(cfg, cfg.experiments[0], env, s3=no_s3, log=print)
    assert plan is not None
    assert plan.container == {"Image": TGI_IMAGE, "Environment": {
        "MODEL_LOADING_TIMEOUT": "3600", "HF_MODEL_ID": "meta-llama/Meta-Llama-3-8B-Instruct",
        "SM_NUM_GPUS": "8", "MAX_INPUT_LENGTH": "4090", "MAX_TOTAL_TOKENS": "4096",
        "MAX_BATCH_TOTAL_TOKENS": "8192"}}
    assert plan.variant == {"ContainerStartupHealthCheckTimeoutInSeconds": 300}


def test_sagemaker_deploy_and_compiled_neuron_artifacts_use_model_data() -> None:
    data = "s3://my-models/llama3-8b/model.tar.gz"
    for script in ("sagemaker_deploy.py", "neuron_deploy.py"):
        cfg = config_for(experiment(script, sagemaker={"model_data": data}))
        plan = prepare(cfg, cfg.experiments[0], {"A": "1"}, s3=no_s3, log=print)
        assert plan is not None
        assert plan.container == {"Image": DJL_IMAGE, "Environment": {"A": "1"}, "ModelDataUrl": data}
    assert plan.variant == {}
    cfg = config_for(experiment("sagemaker_deploy.py", sagemaker={"model_data": data}))
    plan = prepare(cfg, cfg.experiments[0], {}, s3=no_s3, log=print)
    assert plan is not None and plan.variant == {
        "ModelDataDownloadTimeoutInSeconds": 1200, "ContainerStartupHealthCheckTimeoutInSeconds": 1200}


def test_jumpstart_no_script_and_sagemaker_deploy_without_model_data_use_the_backend() -> None:
    for script in ("jumpstart.py", "", "sagemaker_deploy.py"):
        cfg = config_for(experiment(script))
        assert prepare(cfg, cfg.experiments[0], {}, s3=no_s3, log=print) is None


def unpack(data: bytes) -> dict[str, str]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return {m.name: tar.extractfile(m).read().decode() for m in tar.getmembers()}  # type: ignore[union-attr]


def test_serving_properties_packed_alone_at_the_archive_root() -> None:
    assert unpack(pack_serving_properties(PROPERTIES)) == {"serving.properties": PROPERTIES}


# -- a DJL deploy against moto: serving.properties as model data on S3 ---------------------------

@pytest.fixture
def aws(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any]:
    reset_moto(moto_url)
    for key, value in aws_environment(control_url=moto_url).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_url)
    s3 = boto3.client("s3")
    empty_s3(s3)
    return boto3.client("sagemaker"), s3


def test_djl_deploy_uploads_serving_properties_and_points_the_model_at_it(aws: tuple[Any, Any]) -> None:
    sm, s3 = aws
    s3.create_bucket(Bucket=WRITE_BUCKET)
    properties = PROPERTIES + "option.s3url=s3://{write_bucket}/llama3/\n"
    cfg = config_for(experiment("deploy_w_djl_serving.py", env={"MAX_INPUT_LENGTH": "4095"},
                                **{"serving.properties": properties}))
    log: list[str] = []
    ep = SageMakerEndpoint(cfg, cfg.experiments[0], context(log))
    ep.deploy()
    try:
        model = sm.describe_model(ModelName=ep.endpoint_name)["PrimaryContainer"]
        key = "meta-llama/Meta-Llama-3-8B-Instruct/model.tar.gz"
        assert model["ModelDataUrl"] == f"s3://{WRITE_BUCKET}/{key}"
        assert model["Image"] == DJL_IMAGE and model["Environment"] == {"MAX_INPUT_LENGTH": "4095"}
        archive = s3.get_object(Bucket=WRITE_BUCKET, Key=key)["Body"].read()
        assert unpack(archive) == {"serving.properties": properties.replace(
            "{write_bucket}", WRITE_BUCKET)}
        assert any("serving.properties packed as" in line for line in log)
    finally:
        ep.teardown()
    assert moto_inventory(sm) == {"endpoints": [], "configs": [], "models": []}


def test_a_failed_upload_creates_nothing(aws: tuple[Any, Any]) -> None:
    sm, _ = aws  # the write bucket does not exist
    cfg = config_for(experiment("deploy_w_djl_serving.py", **{"serving.properties": PROPERTIES}))
    ep = SageMakerEndpoint(cfg, cfg.experiments[0], context())
    with pytest.raises(Exception, match="uploading serving.properties to s3://"):
        ep.deploy()
    assert moto_inventory(sm) == {"endpoints": [], "configs": [], "models": []}


def test_an_uncompressed_model_data_prefix_carries_the_eula_choice() -> None:
    from pytest_fmbench.endpoints.fmbench_scripts import _with_model_data

    cfg = config_for(experiment("sagemaker_deploy.py", accept_eula=True))
    source = {"S3DataSource": {"S3Uri": "s3://jumpstart-private-cache-prod-us-east-1/x/",
                               "S3DataType": "S3Prefix", "CompressionType": "None"}}
    container = _with_model_data(cfg.experiments[0], {"A": "1"}, source)
    assert container["ModelDataSource"] == {"S3DataSource": {
        "S3Uri": "s3://jumpstart-private-cache-prod-us-east-1/x/", "S3DataType": "S3Prefix",
        "CompressionType": "None", "ModelAccessConfig": {"AcceptEula": True}}}
    assert "ModelDataUrl" not in container
