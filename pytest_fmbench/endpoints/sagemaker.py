"""The SageMaker backend: real-time endpoints, deployed for the run or brought by the user.

Deploy (``deploy: yes``) is plain boto3: ``create_model`` → ``create_endpoint_config`` →
``create_endpoint``, then ``describe_endpoint`` until ``InService`` (progress lines, a
timeout). Each resource is named ``<ep_name>-<token>`` (the token derived from the run id,
the experiment and a nonce of this deploy, so a re-deploy after a crashed worker never
collides with the crashed worker's resources) and tagged ``fmbench:run-id`` /
``fmbench:experiment`` / ``fmbench:created-by``, so leftovers of a killed machine can be found
(``python -m pytest_fmbench sweep``). A failed or timed-out deployment raises with SageMaker's
FailureReason and deletes what was created. Teardown deletes exactly what this object
created, waiting out ``Creating`` (the service refuses the delete until then) and retrying
throttled calls (``pytest_fmbench.safety.sagemaker``); a bring-your-own endpoint
(``deploy: no``, ``ep_name``) is never deleted. Control-plane calls retry (adaptive mode);
runtime calls do not (retries stay out of latency).

JumpStart model ids (FMBench's ``deployment_script: jumpstart.py``) are resolved to a
container with the SageMaker Python SDK 2.x (optional, imported lazily); the resources are
still created, tagged and deleted here.

Requests go through sagemaker-runtime ``invoke_endpoint`` or
``invoke_endpoint_with_response_stream`` (``inference_spec.stream``), with the body and
reply format chosen by ``sagemaker.payload_format`` / ``inference_spec.container_type``
(see ``sagemaker_formats``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
import secrets
import time
from collections.abc import Callable
from typing import Any

from pytest_fmbench.clock import now_ns
from pytest_fmbench.config.model import Config, Experiment, SageMakerSettings
from pytest_fmbench.endpoints import aws, fmbench_scripts
from pytest_fmbench.endpoints.base import EndpointClient, InferenceRequest, InferenceResult
from pytest_fmbench.endpoints.registry import EndpointContext
from pytest_fmbench.endpoints.sagemaker_formats import (
    Completion,
    FormatError,
    PayloadFormat,
    ServerStreamError,
    format_names,
    get_format,
    guess_format,
    request_body,
    with_stop_token,
)
from pytest_fmbench.errors import ConfigError, EndpointError
from pytest_fmbench.safety import sagemaker as cleanup
from pytest_fmbench.safety.sagemaker import CREATED_BY_TAG, RUN_ID_TAG

EXPERIMENT_TAG = "fmbench:experiment"
JUMPSTART_HINT = "pip install 'pytest-fmbench[jumpstart]' (the SageMaker Python SDK 2.x)"

_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9]+")
_TAG_UNSAFE = re.compile(r"[^\w\s.:/=+\-@]+")
# Resource kinds in creation order; teardown goes in reverse.
KINDS = ("model", "endpoint-config", "endpoint")
# How long a delete waits for an endpoint to leave Creating (the service can take an hour).
DELETE_WAIT_S = 3900.0
_FAILED_STATES = ("Failed", "OutOfService", "Deleting", "RollingBack", "UpdateRollbackFailed")


def resource_name(base: str, run_id: str, experiment: str, nonce: str = "") -> str:
    """``<base>-<10 hex>``: ≤ 63 characters, SageMaker's name pattern, unique per run,
    experiment and deploy (``nonce``)."""
    token = hashlib.sha256(f"{run_id}/{experiment}/{nonce}".encode()).hexdigest()[:10]
    stem = _NAME_UNSAFE.sub("-", base).strip("-")[: 63 - 11].strip("-") or "fmbench"
    return f"{stem}-{token}"


def is_jumpstart(experiment: Experiment) -> bool:
    return (experiment.deployment_script or "").strip().lower().startswith("jumpstart")


def format_name(experiment: Experiment) -> str:
    settings = experiment.sagemaker or SageMakerSettings()
    if settings.payload_format:
        return settings.payload_format
    return guess_format(experiment.inference_spec.container_type, experiment.image_uri)


def _env_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class SageMakerEndpoint:
    def __init__(self, config: Config, experiment: Experiment, context: EndpointContext) -> None:
        self.name = experiment.name
        self.config = config
        self.experiment = experiment
        self.context = context
        self.settings = experiment.sagemaker or SageMakerSettings()
        self.timeout_s = config.load_for(experiment).request_timeout_s or 120.0
        self.stream = experiment.inference_spec.stream
        self.format_name = format_name(experiment)
        try:
            self.format: PayloadFormat = with_stop_token(get_format(self.format_name),
                                                         experiment.inference_spec.stop_token)
        except KeyError:
            raise _unknown_format(experiment, self.format_name) from None
        if experiment.deploy:
            # A nonce per deploy: a re-deploy after a crashed worker gets other names.
            self.endpoint_name = resource_name(experiment.ep_name or experiment.name,
                                               context.run_id, experiment.name,
                                               secrets.token_hex(4))
        else:
            if not experiment.ep_name:
                raise _missing_ep_name(experiment)
            self.endpoint_name = experiment.ep_name
        self.instance_type = experiment.instance_type
        self.instance_count = experiment.instance_count or 1
        self._created: list[tuple[str, str]] = []
        # Production-variant settings an FMBench deployment script implies (timeouts).
        self._script_variant: dict[str, Any] = {}
        self._pending: list[tuple[str, str]] = []
        self._session: Any = None
        self._control: Any = None
        self._runtime: Any = None

    # -- checks before money is spent --------------------------------------------------
    @classmethod
    def preflight(cls, config: Config, experiment: Experiment) -> None:
        where = f"experiments ({experiment.name})"
        settings = experiment.sagemaker or SageMakerSettings()
        name = format_name(experiment)
        if name not in format_names():
            raise _unknown_format(experiment, name)
        if experiment.deploy:
            role = settings.role_arn or config.aws.sagemaker_execution_role
            if not role:
                raise ConfigError(
                    f"{where} deploys a SageMaker endpoint but no execution role is set",
                    key="aws.sagemaker_execution_role",
                    fix="set aws.sagemaker_execution_role (FMBench's {role_arn}: export "
                    "FMBENCH_ROLE_ARN=arn:aws:iam::<account>:role/<name>) or sagemaker.role_arn",
                )
            if not aws.ROLE_ARN.match(role):
                raise ConfigError(
                    f"'{role}' is not an IAM role ARN",
                    key="aws.sagemaker_execution_role",
                    fix="give the role's ARN, arn:aws:iam::<12-digit account>:role/<name>",
                )
            if not experiment.instance_type:
                raise ConfigError(f"{where} deploys but has no instance_type",
                                  key=f"{where}.instance_type",
                                  fix="set instance_type, e.g. ml.g5.2xlarge")
            # FMBench's deployment_script: one we map, with the keys it needs.
            fmbench_scripts.check(config, experiment)
            if is_jumpstart(experiment):
                if not experiment.model_id:
                    raise ConfigError(f"{where} uses jumpstart.py but has no model_id",
                                      key=f"{where}.model_id",
                                      fix="set model_id to the JumpStart model id")
                if importlib.util.find_spec("sagemaker") is None:
                    raise ConfigError(
                        f"{where} deploys the JumpStart model '{experiment.model_id}', which "
                        "needs the SageMaker Python SDK to resolve, and it is not installed",
                        key=f"{where}.deployment_script",
                        fix=f"{JUMPSTART_HINT}, or give image_uri and env (HF_MODEL_ID) "
                        "and drop deployment_script",
                    )
            elif not experiment.image_uri:
                raise ConfigError(f"{where} deploys but has no image_uri",
                                  key=f"{where}.image_uri",
                                  fix="set image_uri to the serving container (TGI, LMI, vLLM)")
        elif not experiment.ep_name:
            raise _missing_ep_name(experiment)
        boto_session = aws.check_region_and_credentials(config, experiment)
        if not experiment.deploy and not experiment.instance_type and experiment.price_per_hour is None:
            _read_instance_type(boto_session, experiment)

    # -- clients -----------------------------------------------------------------------
    def _boto_session(self) -> Any:
        if self._session is None:
            self._session = aws.session(self.config)
        return self._session

    def control(self) -> Any:
        if self._control is None:
            # Retries (adaptive): throttled control-plane calls must not lose an endpoint.
            self._control = self._boto_session().client("sagemaker", config=aws.control_config())
        return self._control

    def runtime(self) -> Any:
        if self._runtime is None:
            self._runtime = self._boto_session().client(
                "sagemaker-runtime",
                config=aws.client_config(workers=aws.max_concurrency(self.experiment),
                                         timeout_s=self.timeout_s))
        return self._runtime

    def _log(self, message: str) -> None:
        self.context.log(f"[fmbench] {self.name}: {message}")

    # -- lifecycle ---------------------------------------------------------------------
    @property
    def deployed_by_us(self) -> bool:
        return bool(self._created or self._pending)

    def deploy(self) -> None:
        if not self.experiment.deploy:
            self._check_existing()
            return
        try:
            self._create_all()
            self._wait_in_service()
        except BaseException:
            # Whatever failed (or Ctrl-C), nothing this run created may be left behind.
            try:
                self.teardown()
            except Exception as exc:  # noqa: BLE001 - report the deploy error, not this one
                self._log(f"cleanup after the failed deployment failed: {exc}")
            raise

    def _container(self) -> dict[str, Any]:
        experiment = self.experiment
        env = {str(k): _env_value(v) for k, v in (experiment.env or {}).items() if v is not None}
        if is_jumpstart(experiment):
            return self._jumpstart_container(env)
        plan = fmbench_scripts.prepare(self.config, experiment, env, log=self._log,
                                       s3=lambda: self._boto_session().client("s3"))
        if plan is not None:
            self._script_variant = plan.variant
            return plan.container
        container: dict[str, Any] = {"Image": experiment.image_uri, "Environment": env}
        if self.settings.model_data:
            container["ModelDataUrl"] = self.settings.model_data
        elif "HF_MODEL_ID" not in env and experiment.model_id:
            env["HF_MODEL_ID"] = experiment.model_id
        return container

    def _jumpstart_container(self, env: dict[str, str]) -> dict[str, Any]:
        experiment = self.experiment
        try:
            import sagemaker.session
            from sagemaker.jumpstart.model import JumpStartModel
        except ImportError:
            raise EndpointError(
                f"JumpStart model '{experiment.model_id}' needs the SageMaker Python SDK 2.x",
                key=f"experiments ({experiment.name}).deployment_script",
                fix=JUMPSTART_HINT,
            ) from None
        sdk_session = sagemaker.session.Session(boto_session=self._boto_session(),
                                                sagemaker_client=self.control())
        try:
            model = JumpStartModel(
                model_id=experiment.model_id, model_version=experiment.model_version or "*",
                image_uri=experiment.image_uri or None, env=env or None, role=self._role(),
                instance_type=experiment.instance_type, sagemaker_session=sdk_session,
            )
            try:
                container = model.prepare_container_def(
                    instance_type=experiment.instance_type, accept_eula=experiment.accept_eula)
            except TypeError:  # older SDKs: no accept_eula
                container = model.prepare_container_def(instance_type=experiment.instance_type)
        except Exception as exc:  # the SDK raises many kinds
            raise EndpointError(
                f"resolving JumpStart model '{experiment.model_id}' failed: {exc}",
                key=f"experiments ({experiment.name}).model_id",
                fix="check the JumpStart model id and version, and the region",
            ) from exc
        return dict(container)

    def _role(self) -> str:
        role = self.settings.role_arn or self.config.aws.sagemaker_execution_role
        if not role:
            raise EndpointError("no execution role", key="aws.sagemaker_execution_role")
        return role

    def _tags(self) -> list[dict[str, str]]:
        tags = {
            RUN_ID_TAG: self.context.run_id,
            EXPERIMENT_TAG: _TAG_UNSAFE.sub("-", self.experiment.name)[:256],
            CREATED_BY_TAG: "pytest-fmbench",
            **self.settings.tags,
        }
        return [{"Key": k, "Value": v} for k, v in tags.items()]

    def _create(self, kind: str, call: Callable[[], Any]) -> None:
        item = (kind, self.endpoint_name)
        # Recorded before the call: a Ctrl-C while it is in flight still gets it checked.
        self._pending.append(item)
        call()
        self._pending.remove(item)
        self._created.append(item)

    def _create_all(self) -> None:
        sm = self.control()
        name = self.endpoint_name
        tags = self._tags()
        container = self._container()
        role = self._role()
        self._log(f"creating SageMaker model, endpoint config and endpoint '{name}' "
                  f"({self.instance_count} x {self.instance_type}, image {container.get('Image')})")
        self._create("model", lambda: sm.create_model(
            ModelName=name, PrimaryContainer=container, ExecutionRoleArn=role, Tags=tags))
        variant: dict[str, Any] = {
            "VariantName": self.settings.variant_name,
            "ModelName": name,
            "InitialInstanceCount": self.instance_count,
            "InstanceType": self.instance_type,
            "InitialVariantWeight": 1.0,
            **self._script_variant,
        }
        if self.settings.model_data_download_timeout_s:
            variant["ModelDataDownloadTimeoutInSeconds"] = self.settings.model_data_download_timeout_s
        if self.settings.container_startup_health_check_timeout_s:
            variant["ContainerStartupHealthCheckTimeoutInSeconds"] = (
                self.settings.container_startup_health_check_timeout_s)
        if self.settings.volume_size_gb:
            variant["VolumeSizeInGB"] = self.settings.volume_size_gb
        self._create("endpoint-config", lambda: sm.create_endpoint_config(
            EndpointConfigName=name, ProductionVariants=[variant], Tags=tags))
        self._create("endpoint", lambda: sm.create_endpoint(
            EndpointName=name, EndpointConfigName=name, Tags=tags))

    def _wait_in_service(self) -> None:
        sm = self.control()
        timeout = self.settings.deploy_timeout_s
        started = time.monotonic()
        last_status, last_line = "", started
        while True:
            description = self._describe_tolerantly(sm)
            status = description.get("EndpointStatus", "")
            elapsed = time.monotonic() - started
            if status == "InService":
                self._log(f"endpoint '{self.endpoint_name}' is InService after {elapsed:.0f} s")
                return
            if status in _FAILED_STATES:
                reason = description.get("FailureReason") or "no FailureReason given"
                raise EndpointError(
                    f"SageMaker endpoint '{self.endpoint_name}' is {status}: {reason}",
                    key=f"experiments ({self.name})",
                    fix="see the FailureReason and the endpoint's CloudWatch logs "
                    f"(/aws/sagemaker/Endpoints/{self.endpoint_name}); what was created is deleted",
                )
            if status != last_status or time.monotonic() - last_line >= 60:
                self._log(f"endpoint '{self.endpoint_name}' is {status or 'unknown'} "
                          f"({elapsed:.0f} s of at most {timeout:.0f} s)")
                last_status, last_line = status, time.monotonic()
            if elapsed >= timeout:
                raise EndpointError(
                    f"SageMaker endpoint '{self.endpoint_name}' is still {status} after "
                    f"{timeout:.0f} s",
                    key=f"experiments ({self.name}).sagemaker.deploy_timeout_s",
                    fix="raise sagemaker.deploy_timeout_s (large models take long to load); "
                    "what was created is deleted",
                )
            time.sleep(max(0.0, min(self.settings.poll_interval_s, timeout - elapsed)))

    def _describe_tolerantly(self, sm: Any) -> dict[str, Any]:
        """DescribeEndpoint while waiting: a transient error (throttling, a reset connection)
        is logged and the wait goes on ({} reads as status unknown); others raise."""
        try:
            description: dict[str, Any] = sm.describe_endpoint(EndpointName=self.endpoint_name)
        except Exception as exc:
            if not cleanup.is_transient(exc):
                raise
            self._log(f"describing endpoint '{self.endpoint_name}' failed "
                      f"({aws.error_code(exc) or type(exc).__name__}); still waiting")
            return {}
        return description

    def _check_existing(self) -> None:
        """Bring your own: the endpoint must exist and serve; learn its instance type."""
        from botocore.exceptions import BotoCoreError, ClientError

        sm = self.control()
        try:
            description = sm.describe_endpoint(EndpointName=self.endpoint_name)
        except ClientError as exc:
            code = aws.error_code(exc)
            if code in ("ValidationException", "ValidationError", "ResourceNotFound"):
                raise EndpointError(
                    f"SageMaker endpoint '{self.endpoint_name}' was not found",
                    key=f"experiments ({self.name}).ep_name",
                    fix="check ep_name and the region, or set 'deploy: yes' to deploy it",
                ) from None
            self._log(f"cannot describe endpoint '{self.endpoint_name}' ({code}); benchmarking anyway")
            return
        except BotoCoreError as exc:
            self._log(f"cannot describe endpoint '{self.endpoint_name}' ({exc}); benchmarking anyway")
            return
        status = description.get("EndpointStatus")
        if status not in ("InService", "Updating"):
            raise EndpointError(
                f"SageMaker endpoint '{self.endpoint_name}' is {status}, not InService",
                key=f"experiments ({self.name}).ep_name",
                fix="wait until it is InService, or deploy one with 'deploy: yes'",
            )
        if self.instance_type is None:
            self._learn_instance(sm, description)
        self._log(f"benchmarking existing endpoint '{self.endpoint_name}' (it is never deleted)")

    def _learn_instance(self, sm: Any, description: dict[str, Any]) -> None:
        """Instance type and count of a bring-your-own endpoint, for the report and pricing."""
        from botocore.exceptions import BotoCoreError, ClientError

        wanted = self.settings.target_variant
        counts = {v.get("VariantName"): v.get("CurrentInstanceCount")
                  for v in description.get("ProductionVariants") or ()}
        try:
            config = sm.describe_endpoint_config(EndpointConfigName=description["EndpointConfigName"])
        except (ClientError, BotoCoreError, KeyError):
            return
        for variant in config.get("ProductionVariants") or ():
            if wanted in (None, variant.get("VariantName")):
                self.instance_type = variant.get("InstanceType")
                self.instance_count = (counts.get(variant.get("VariantName"))
                                       or variant.get("InitialInstanceCount") or self.instance_count)
                return

    def teardown(self) -> None:
        """Delete what this object created (and, after a check of its run-id tag, what it
        may have created when interrupted mid-call). Never touches anything else."""
        if not (self._created or self._pending):
            return
        sm = self.control()
        errors: list[str] = []
        for kind in reversed(KINDS):
            for item in [i for i in self._created if i[0] == kind]:
                if self._delete(sm, *item, errors):
                    self._created.remove(item)
            for item in [i for i in self._pending if i[0] == kind]:
                try:
                    tags = cleanup.tags_of(sm, *item)  # None: the create never happened
                except Exception as exc:  # noqa: BLE001
                    errors.append(f"{item[0]} '{item[1]}': {exc}")
                    continue
                ours = tags is not None and tags.get(RUN_ID_TAG) == self.context.run_id
                if not ours or self._delete(sm, *item, errors):
                    self._pending.remove(item)
        if errors:
            raise EndpointError(
                "deleting SageMaker resources failed: " + "; ".join(errors),
                key=f"experiments ({self.name})",
                fix=f"delete them by hand (they carry the tag {RUN_ID_TAG}={self.context.run_id})",
            )

    def _delete(self, sm: Any, kind: str, name: str, errors: list[str]) -> bool:
        """Delete one resource, waiting out Creating/Updating and retrying transient errors
        (a broken endpoint can sit in Creating for about an hour, also after our deploy
        timeout gave up on it)."""
        try:
            cleanup.delete(sm, kind, name,
                           deadline_s=max(self.settings.deploy_timeout_s, DELETE_WAIT_S),
                           poll_s=self.settings.poll_interval_s, log=self.context.log)
        except cleanup.DeleteFailed as exc:
            errors.append(str(exc))
            return False
        return True

    # -- if this process dies ----------------------------------------------------------
    def reap_plan(self) -> dict[str, Any] | None:
        """What the reaper deletes if this process dies: all three names (journaled before
        the first create), each deleted only if it carries this run's id."""
        if not self.experiment.deploy:
            return None  # bring your own: never deleted
        return {
            "kind": "sagemaker", "run_id": self.context.run_id,
            "region": aws.region_of(self.config) or self._boto_session().region_name,
            "endpoint_url": self.control().meta.endpoint_url,
            "resources": [[kind, self.endpoint_name] for kind in reversed(KINDS)],
            "wait_s": self.settings.deploy_timeout_s, "poll_s": self.settings.poll_interval_s,
        }

    @classmethod
    def cleanup_orphan(cls, config: Config, experiment: Experiment, context: EndpointContext,
                       description: dict[str, Any]) -> None:
        """Delete what a dead worker deployed, from its logged description (run id checked)."""
        name = description.get("endpoint_name")
        if not experiment.deploy or not isinstance(name, str):
            return
        settings = experiment.sagemaker or SageMakerSettings()
        plan = {"run_id": context.run_id,
                "region": description.get("region") or aws.region_of(config),
                "endpoint_url": description.get("control_url"),
                "resources": [[kind, name] for kind in reversed(KINDS)]}
        cleanup.delete_plan(plan, deadline_s=settings.deploy_timeout_s,
                            poll_s=settings.poll_interval_s, log=context.log)

    # -- requests ----------------------------------------------------------------------
    def client(self) -> EndpointClient:
        self.runtime()  # created here, once: botocore clients are slow to build, safe to share
        return aws.ThreadedClient(self._invoke, workers=aws.max_concurrency(self.experiment),
                                  timeout_s=self.timeout_s, retry=self.settings.retry)

    def _invoke(self, request: InferenceRequest) -> InferenceResult:
        body, arguments = request_body(
            self.format, request, stream=self.stream,
            split_input_and_parameters=self.experiment.inference_spec.split_input_and_parameters)
        kwargs: dict[str, Any] = {
            "EndpointName": self.endpoint_name,
            "Body": body,
            "ContentType": "application/json",
            **arguments,
        }
        if self.settings.target_variant:
            kwargs["TargetVariant"] = self.settings.target_variant
        if self.settings.inference_component:
            kwargs["InferenceComponentName"] = self.settings.inference_component
        runtime = self.runtime()
        sent = now_ns()
        deadline_ns = sent + int(self.timeout_s * 1e9)
        started = False
        progress = aws.StreamProgress()
        chunks: int | None = None
        result = InferenceResult(sent_ns=sent, last_byte_ns=0)
        try:
            if self.stream:
                response = runtime.invoke_endpoint_with_response_stream(**kwargs)
                started = True
                result.status = aws.status_of(response)
                completion = self._read_stream(response["Body"], result, progress, deadline_ns)
                chunks = progress.pieces
            else:
                response = runtime.invoke_endpoint(**kwargs)
                started = True
                result.status = aws.status_of(response)
                data = response["Body"].read()
                result.last_byte_ns = now_ns()
                completion = self.format.parse(data)
        except FormatError as exc:
            return _error(result, "bad_response", str(exc), progress.first)
        except ServerStreamError as exc:
            return _error(result, "http_5xx", str(exc), progress.first)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a record
            failure = aws.failed(sent, exc, started=started, first_token_ns=progress.first)
            failure.status = failure.status or result.status
            failure.itl_us = result.itl_us
            return failure
        if not result.last_byte_ns:
            result.last_byte_ns = now_ns()
        result.first_token_ns = progress.first
        result.text = completion.text
        aws.fill_tokens(result, request, server_prompt=completion.prompt_tokens,
                        server_completion=completion.completion_tokens, content_chunks=chunks,
                        count_tokens=self.context.count_tokens)
        return result

    def _read_stream(self, stream: Any, result: InferenceResult, progress: aws.StreamProgress,
                     deadline_ns: float) -> Completion:
        decoder = self.format.decoder()

        def on_event(event: Any, arrived: int) -> None:
            part = event.get("PayloadPart")
            if part is not None:
                content = decoder.feed(part.get("Bytes") or b"")
                if content:
                    progress.content(arrived, len(content), result.itl_us)

        aws.drain_stream(stream, on_event, deadline_ns, self.timeout_s)
        result.last_byte_ns = now_ns()
        return decoder.finish()

    def cloudwatch_dimensions(self) -> tuple[str, str]:
        """CloudWatch's EndpointName and VariantName of this endpoint (telemetry)."""
        return self.endpoint_name, self.settings.target_variant or self.settings.variant_name

    def describe(self) -> dict[str, Any]:
        return {
            "backend": "sagemaker",
            "endpoint_name": self.endpoint_name,
            "region": aws.region_of(self.config),
            "instance_type": self.instance_type,
            "instance_count": self.instance_count,
            "payload_format": self.format_name,
            "stream": self.stream,
            "image_uri": self.experiment.image_uri,
            "model_id": self.experiment.model_id,
            "jumpstart": is_jumpstart(self.experiment),
            "deploy": self.experiment.deploy,
            "resources": [f"{kind}/{name}" for kind, name in self._created],
            "control_url": self._control.meta.endpoint_url if self._control is not None else None,
        }


def _error(result: InferenceResult, error: str, detail: str, first: int | None) -> InferenceResult:
    result.error, result.error_detail = error, detail[:500]
    result.first_token_ns = first
    result.last_byte_ns = now_ns()
    return result


def _unknown_format(experiment: Experiment, name: str) -> ConfigError:
    return ConfigError(
        f"unknown SageMaker payload format '{name}'",
        key=f"experiments ({experiment.name}).sagemaker.payload_format",
        fix=f"use one of: {', '.join(format_names())} (or register one with "
        "pytest_fmbench.endpoints.sagemaker_formats.register_format)",
    )


def _read_instance_type(boto_session: Any, experiment: Experiment) -> None:
    """Fill in a ``deploy: no`` endpoint's instance type (and count) from its endpoint config,
    so that it can be priced without repeating them in the config."""
    from botocore.exceptions import BotoCoreError, ClientError

    where = f"experiments ({experiment.name})"
    name = str(experiment.ep_name)
    skip = "or set instance_type (and instance_count) or price_per_hour to skip this lookup"
    client = boto_session.client("sagemaker", config=aws.client_config(timeout_s=30.0))
    try:
        endpoint = client.describe_endpoint(EndpointName=name)
        endpoint_config = client.describe_endpoint_config(
            EndpointConfigName=endpoint["EndpointConfigName"])
    except ClientError as exc:
        code = aws.error_code(exc)
        if code == "ValidationException":
            raise ConfigError(
                f"{where}: SageMaker endpoint '{name}' not found in {boto_session.region_name}",
                key=f"{where}.ep_name", fix=f"check ep_name and aws.region, {skip}") from None
        raise ConfigError(f"{where}: could not describe SageMaker endpoint '{name}' ({code}): "
                          f"{exc}", key=f"{where}.instance_type",
                          fix=f"allow sagemaker:DescribeEndpoint and DescribeEndpointConfig, {skip}"
                          ) from None
    except BotoCoreError as exc:
        raise ConfigError(f"{where}: could not describe SageMaker endpoint '{name}': {exc}",
                          key=f"{where}.instance_type", fix=f"check the network, {skip}") from None
    variants = endpoint_config.get("ProductionVariants") or []
    variant = variants[0] if variants else {}
    if not variant.get("InstanceType"):
        raise ConfigError(f"{where}: SageMaker endpoint '{name}' has no instance type "
                          "(a serverless endpoint?), so it cannot be priced per instance-hour",
                          key=f"{where}.price_per_hour",
                          fix="set price_per_hour (USD per hour) for this experiment")
    experiment.instance_type = variant["InstanceType"]
    if "instance_count" not in experiment.model_fields_set:
        live = {v.get("VariantName"): v for v in endpoint.get("ProductionVariants") or []}
        current = live.get(variant.get("VariantName"), {}).get("CurrentInstanceCount")
        experiment.instance_count = int(current or variant.get("InitialInstanceCount") or 1)


def _missing_ep_name(experiment: Experiment) -> ConfigError:
    return ConfigError(
        f"experiments ({experiment.name}) has 'deploy: no' but no ep_name",
        key=f"experiments ({experiment.name}).ep_name",
        fix="set ep_name to the name of the existing SageMaker endpoint",
    )
