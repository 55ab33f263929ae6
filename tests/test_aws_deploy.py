"""SageMaker deploy and teardown against moto's server; states moto cannot show via Stubber;
preflight checks that stop a run before any AWS call costs money."""

from __future__ import annotations

import sys
import types
from typing import Any

import boto3
import pytest
from botocore.stub import ANY, Stubber

from pytest_fmbench.config.model import Config
from pytest_fmbench.endpoints.bedrock import BedrockEndpoint
from pytest_fmbench.endpoints.registry import preflight
from pytest_fmbench.endpoints.sagemaker import RUN_ID_TAG, SageMakerEndpoint
from pytest_fmbench.errors import ConfigError, EndpointError
from pytest_fmbench.testing.aws_emulator import aws_environment
from tests.aws_support import (
    ROLE,
    bench_config,
    context,
    create_byo_endpoint,
    moto_inventory,
    reset_moto,
)

TGI_IMAGE = "763104351884.dkr.ecr.us-east-1.amazonaws.com/huggingface-pytorch-tgi-inference:2.4.0-tgi2.3.1-gpu-py311-cu124-ubuntu22.04"
RUN_ID = "20250101T000000-abc123"
EMPTY = {"endpoints": [], "configs": [], "models": []}


@pytest.fixture
def sm(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """moto's SageMaker control plane, empty, with boto3 pointed at it."""
    reset_moto(moto_url)
    for key, value in aws_environment(control_url=moto_url).items():
        monkeypatch.setenv(key, value)
    return boto3.client("sagemaker")


def deploy_experiment(**extra: Any) -> dict[str, Any]:
    return {
        "name": "qwen-tgi", "backend": "sagemaker", "model_id": "Qwen/Qwen2.5-1.5B-Instruct",
        "ep_name": "qwen-g4dn", "instance_type": "ml.g4dn.xlarge", "image_uri": TGI_IMAGE,
        "deploy": True, "env": {"SM_NUM_GPUS": 1, "TRUST_REMOTE_CODE": True},
        "sagemaker": {"poll_interval_s": 0.01, "container_startup_health_check_timeout_s": 600},
        **extra,
    }


def endpoint(experiment: dict[str, Any], log: list[str] | None = None, **config: Any) -> SageMakerEndpoint:
    cfg = bench_config(experiment, **config)
    return SageMakerEndpoint(cfg, cfg.experiments[0], context(log, run_id=RUN_ID))


def tags_of(sm: Any, arn: str) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in sm.list_tags(ResourceArn=arn)["Tags"]}


# --- deploy and teardown through moto -----------------------------------------------------

def test_deploy_creates_tagged_resources_and_teardown_deletes_exactly_them(sm: Any) -> None:
    create_byo_endpoint(sm, "someone-elses")
    log: list[str] = []
    ep = endpoint(deploy_experiment(), log)
    ep.deploy()
    name = ep.endpoint_name
    assert name.startswith("qwen-g4dn-") and ep.deployed_by_us
    assert moto_inventory(sm) == {key: sorted([name, "someone-elses"]) for key in EMPTY}

    model = sm.describe_model(ModelName=name)
    assert model["ExecutionRoleArn"] == ROLE
    assert model["PrimaryContainer"]["Image"] == TGI_IMAGE
    assert model["PrimaryContainer"]["Environment"] == {
        "SM_NUM_GPUS": "1", "TRUST_REMOTE_CODE": "true", "HF_MODEL_ID": "Qwen/Qwen2.5-1.5B-Instruct"}
    variant = sm.describe_endpoint_config(EndpointConfigName=name)["ProductionVariants"][0]
    assert (variant["InstanceType"], variant["InitialInstanceCount"]) == ("ml.g4dn.xlarge", 1)
    assert variant["ContainerStartupHealthCheckTimeoutInSeconds"] == 600
    for arn in (model["ModelArn"], sm.describe_endpoint(EndpointName=name)["EndpointArn"],
                sm.describe_endpoint_config(EndpointConfigName=name)["EndpointConfigArn"]):
        assert tags_of(sm, arn).items() >= {RUN_ID_TAG: RUN_ID, "fmbench:experiment": "qwen-tgi"}.items()
    assert any("InService" in line for line in log)

    ep.teardown()
    assert moto_inventory(sm) == {key: ["someone-elses"] for key in EMPTY}
    assert not ep.deployed_by_us
    ep.teardown()  # twice is fine
    assert sum("deleted" in line for line in log) == 3


def test_teardown_tolerates_resources_already_gone(sm: Any) -> None:
    ep = endpoint(deploy_experiment())
    ep.deploy()
    sm.delete_endpoint(EndpointName=ep.endpoint_name)
    ep.teardown()
    assert moto_inventory(sm) == EMPTY


def test_model_data_goes_to_the_container_instead_of_hf_model_id(sm: Any) -> None:
    ep = endpoint(deploy_experiment(sagemaker={"model_data": "s3://bucket/model.tar.gz",
                                               "poll_interval_s": 0.01}))
    ep.deploy()
    container = sm.describe_model(ModelName=ep.endpoint_name)["PrimaryContainer"]
    assert container["ModelDataUrl"] == "s3://bucket/model.tar.gz"
    assert "HF_MODEL_ID" not in container["Environment"]
    ep.teardown()


def test_bring_your_own_endpoint_is_checked_and_never_deleted(sm: Any) -> None:
    create_byo_endpoint(sm, "prod-llm")
    log: list[str] = []
    ep = endpoint({"name": "byo", "backend": "sagemaker", "deploy": False, "ep_name": "prod-llm",
                   "instance_type": None}, log)
    ep.deploy()
    assert (ep.endpoint_name, ep.instance_type, ep.deployed_by_us) == ("prod-llm", "ml.g4dn.xlarge", False)
    ep.teardown()
    assert moto_inventory(sm) == {key: ["prod-llm"] for key in EMPTY}
    assert any("never deleted" in line for line in log)


def test_bring_your_own_endpoint_that_does_not_exist_fails_clearly(sm: Any) -> None:
    ep = endpoint({"name": "byo", "backend": "sagemaker", "deploy": False, "ep_name": "nope"})
    with pytest.raises(EndpointError, match="'nope' was not found"):
        ep.deploy()


def test_ctrl_c_while_a_create_call_is_in_flight_still_cleans_up(sm: Any) -> None:
    """The endpoint exists in SageMaker but its create call never returned to us."""
    ep = endpoint(deploy_experiment())

    def interrupt(**_: Any) -> None:
        raise KeyboardInterrupt

    ep.control().meta.events.register("after-call.sagemaker.CreateEndpoint", interrupt)
    with pytest.raises(KeyboardInterrupt):
        ep.deploy()
    assert moto_inventory(sm) == EMPTY
    assert not ep.deployed_by_us


def test_pending_resources_without_our_run_id_are_left_alone(sm: Any) -> None:
    ep = endpoint(deploy_experiment())
    create_byo_endpoint(sm, ep.endpoint_name)  # same name, not ours (no run-id tag)
    ep._pending.append(("endpoint", ep.endpoint_name))
    ep.teardown()
    assert moto_inventory(sm)["endpoints"] == [ep.endpoint_name]


# --- states moto cannot show: Stubber -----------------------------------------------------

def stubbed(ep: SageMakerEndpoint, statuses: list[dict[str, Any]]) -> Stubber:
    client = boto3.client("sagemaker", region_name="us-east-1", aws_access_key_id="x",
                          aws_secret_access_key="y", endpoint_url="http://127.0.0.1:9")
    stub = Stubber(client)
    name = ep.endpoint_name
    arn = f"arn:aws:sagemaker:us-east-1:123456789012:endpoint/{name}"
    stub.add_response("create_model", {"ModelArn": arn.replace("endpoint/", "model/")},
                      {"ModelName": name, "PrimaryContainer": ANY, "ExecutionRoleArn": ROLE, "Tags": ANY})
    stub.add_response("create_endpoint_config", {"EndpointConfigArn": arn},
                      {"EndpointConfigName": name, "ProductionVariants": ANY, "Tags": ANY})
    stub.add_response("create_endpoint", {"EndpointArn": arn},
                      {"EndpointName": name, "EndpointConfigName": name, "Tags": ANY})
    for status in statuses:
        stub.add_response("describe_endpoint", {
            "EndpointName": name, "EndpointArn": arn, "CreationTime": "2025-01-01T00:00:00Z",
            "LastModifiedTime": "2025-01-01T00:00:00Z", **status}, {"EndpointName": name})
    stub.add_response("delete_endpoint", {}, {"EndpointName": name})
    stub.add_response("delete_endpoint_config", {}, {"EndpointConfigName": name})
    stub.add_response("delete_model", {}, {"ModelName": name})
    stub.activate()
    ep._control = client
    return stub


def test_failed_deployment_reports_failure_reason_and_deletes_what_was_created() -> None:
    log: list[str] = []
    ep = endpoint(deploy_experiment(), log)
    stub = stubbed(ep, [
        {"EndpointStatus": "Creating"},
        {"EndpointStatus": "Failed", "FailureReason":
            "The primary container for production variant AllTraffic did not pass the ping health check."},
    ])
    with pytest.raises(EndpointError) as failure:
        ep.deploy()
    message = failure.value.render()
    assert "is Failed: The primary container" in message and "ping health check" in message
    assert "CloudWatch" in message
    stub.assert_no_pending_responses()  # the three deletes happened, in order
    assert not ep.deployed_by_us
    assert any("Creating" in line for line in log)


def test_deployment_timeout_is_reported_and_cleaned_up() -> None:
    ep = endpoint(deploy_experiment(sagemaker={"deploy_timeout_s": 0.05, "poll_interval_s": 30}))
    stub = stubbed(ep, [{"EndpointStatus": "Creating"}, {"EndpointStatus": "Creating"}])
    with pytest.raises(EndpointError, match="still Creating after 0 s") as failure:
        ep.deploy()
    assert "deploy_timeout_s" in failure.value.render()
    stub.assert_no_pending_responses()


# --- JumpStart: the SDK only resolves the container ---------------------------------------

def fake_sagemaker_sdk(monkeypatch: pytest.MonkeyPatch, seen: dict[str, Any]) -> None:
    class JumpStartModel:
        def __init__(self, **kwargs: Any) -> None:
            seen["init"] = kwargs

        def prepare_container_def(self, instance_type: str, accept_eula: bool | None = None) -> dict:
            seen["accept_eula"] = accept_eula
            return {"Image": "763104351884.dkr.ecr.us-east-1.amazonaws.com/djl-inference:0.27.0",
                    "Environment": {"SAGEMAKER_PROGRAM": "inference.py"},
                    "ModelDataUrl": "s3://jumpstart-cache-prod-us-east-1/meta-textgeneration/x.tar.gz"}

    root = types.ModuleType("sagemaker")
    session = types.ModuleType("sagemaker.session")
    session.Session = lambda **kwargs: ("sdk-session", kwargs)  # type: ignore[attr-defined]
    jumpstart = types.ModuleType("sagemaker.jumpstart")
    model = types.ModuleType("sagemaker.jumpstart.model")
    model.JumpStartModel = JumpStartModel  # type: ignore[attr-defined]
    root.session = session  # type: ignore[attr-defined]
    for name, module in [("sagemaker", root), ("sagemaker.session", session),
                         ("sagemaker.jumpstart", jumpstart), ("sagemaker.jumpstart.model", model)]:
        monkeypatch.setitem(sys.modules, name, module)


JUMPSTART = {"model_id": "meta-textgeneration-llama-3-8b-instruct", "model_version": "*",
             "deployment_script": "jumpstart.py", "accept_eula": True, "image_uri": None}


def test_jumpstart_model_is_resolved_by_the_sdk_and_deployed_by_us(
        sm: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}
    fake_sagemaker_sdk(monkeypatch, seen)
    ep = endpoint(deploy_experiment(**JUMPSTART))
    ep.deploy()
    assert seen["init"]["model_id"] == "meta-textgeneration-llama-3-8b-instruct"
    assert seen["init"]["role"] == ROLE and seen["accept_eula"] is True
    container = sm.describe_model(ModelName=ep.endpoint_name)["PrimaryContainer"]
    assert container["Image"].endswith("djl-inference:0.27.0")
    assert ep.format_name == "tgi"  # no image in the config: the default reply format
    ep.teardown()
    assert moto_inventory(sm) == EMPTY


def test_jumpstart_without_the_sdk_is_a_clear_error(sm: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sagemaker", None)  # import fails
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
    cfg = bench_config(deploy_experiment(**JUMPSTART))
    with pytest.raises(ConfigError, match="SageMaker Python SDK") as failure:
        SageMakerEndpoint.preflight(cfg, cfg.experiments[0])
    assert "pytest-fmbench[jumpstart]" in failure.value.render()
    ep = SageMakerEndpoint(cfg, cfg.experiments[0], context(run_id=RUN_ID))
    with pytest.raises(EndpointError, match="SageMaker Python SDK"):
        ep.deploy()
    assert moto_inventory(sm) == EMPTY


# --- preflight: before any call that costs money --------------------------------------------

@pytest.fixture
def no_aws(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def check(config: Config) -> str:
    with pytest.raises(ConfigError) as failure:
        preflight(config)
    return failure.value.render()


def test_preflight_missing_region(no_aws: None) -> None:
    message = check(bench_config(deploy_experiment(), aws={"sagemaker_execution_role": ROLE}))
    assert "no AWS region" in message and "AWS_REGION" in message


def test_preflight_missing_credentials(no_aws: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    message = check(bench_config(deploy_experiment()))
    assert "no AWS credentials" in message
    bedrock = {"name": "b", "backend": "bedrock", "ep_name": "us.amazon.nova-micro-v1:0"}
    assert "no AWS credentials" in check(bench_config(bedrock))


def test_preflight_missing_or_malformed_role_when_deploying(sm: Any) -> None:
    message = check(bench_config(deploy_experiment(), aws={"region": "us-east-1"}))
    assert "no execution role" in message and "FMBENCH_ROLE_ARN" in message
    message = check(bench_config(deploy_experiment(), aws={"sagemaker_execution_role": "admin"}))
    assert "not an IAM role ARN" in message
    # Bringing your own endpoint needs no role (priced here, so its type is not looked up).
    preflight(bench_config({"name": "byo", "backend": "sagemaker", "deploy": False,
                            "ep_name": "x", "price_per_hour": 1.0}, aws={"region": "us-east-1"}))


@pytest.mark.parametrize(("change", "expected"), [
    ({"image_uri": None}, "no image_uri"),
    ({"instance_type": None}, "no instance_type"),
    ({"sagemaker": {"payload_format": "grpc"}}, "unknown SageMaker payload format 'grpc'"),
    ({"deploy": False, "ep_name": None}, "'deploy: no' but no ep_name"),
])
def test_preflight_incomplete_sagemaker_experiments(sm: Any, change: dict, expected: str) -> None:
    assert expected in check(bench_config(deploy_experiment(**change)))


def test_preflight_bedrock_model_and_body_format(sm: Any) -> None:
    assert "names no Bedrock model" in check(bench_config({"name": "b", "backend": "bedrock"}))
    arn = "arn:aws:bedrock:us-east-1:123456789012:provisioned-model/abc"
    message = check(bench_config({"name": "b", "backend": "bedrock", "ep_name": arn,
                                  "bedrock": {"api": "invoke"}}))
    assert "cannot tell the InvokeModel body format" in message and "bedrock.body_format" in message
    preflight(bench_config({"name": "b", "backend": "bedrock", "ep_name": arn,
                            "bedrock": {"api": "invoke", "body_format": "meta"}}))
    preflight(bench_config({"name": "b", "backend": "bedrock", "ep_name": arn}))  # converse


def test_bedrock_has_nothing_to_deploy_or_delete(sm: Any) -> None:
    cfg = bench_config({"name": "b", "backend": "bedrock", "ep_name": "anthropic.claude-3-haiku-20240307-v1:0"})
    ep = BedrockEndpoint(cfg, cfg.experiments[0], context())
    ep.deploy()
    ep.teardown()
    assert not ep.deployed_by_us
    assert ep.describe()["pricing"] == "token"
    arn = "arn:aws:bedrock:us-east-1:123456789012:provisioned-model/abc"
    cfg = bench_config({"name": "b", "backend": "bedrock", "ep_name": arn})
    assert BedrockEndpoint(cfg, cfg.experiments[0], context()).describe()["provisioned_throughput"]
