"""Deleting SageMaker resources so that the delete finishes or fails loudly.

Shared by the backend's teardown, the reaper, the controller's orphan cleanup and ``sweep``:

- the control plane is throttled per account: every call runs on a client with botocore's
  adaptive retries (``aws.control_config``), and ``delete`` retries transient errors with
  back-off until its deadline;
- DeleteEndpoint is refused while the endpoint is ``Creating`` or ``Updating`` (real service
  behaviour): ``delete`` waits, polling DescribeEndpoint, until it can delete or the deadline
  passes;
- ``delete_if_ours`` first checks the ``fmbench:run-id`` tag (and ``fmbench:created-by``), so
  a resource without our tags is never touched.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

RUN_ID_TAG = "fmbench:run-id"
CREATED_BY_TAG = "fmbench:created-by"
CREATED_BY = "pytest-fmbench"
# Resource kinds in creation order; deletes go in reverse.
KINDS = ("model", "endpoint-config", "endpoint")
BUSY_STATES = ("Creating", "Updating", "SystemUpdating", "RollingBack")
_TRANSIENT_CODES = frozenset({
    "ThrottlingException", "Throttling", "ThrottledException", "RequestLimitExceeded",
    "TooManyRequestsException", "ServiceUnavailable", "InternalFailure", "InternalServerError",
    "RequestTimeout", "RequestTimeoutException",
})

Log = Callable[[str], None]


class DeleteFailed(Exception):
    """A resource could not be deleted before the deadline."""


def error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None) or {}
    return str((response.get("Error") or {}).get("Code") or "")


def is_not_found(exc: BaseException) -> bool:
    message = str(exc)
    return ("Could not find" in message or "does not exist" in message
            or error_code(exc) in ("ResourceNotFound", "ResourceNotFoundException"))


def is_in_progress(exc: BaseException) -> bool:
    """DeleteEndpoint refused because the endpoint is Creating/Updating/Deleting."""
    message = str(exc)
    return error_code(exc) == "ValidationException" and (
        "in-progress" in message or "in progress" in message
        or any(state in message for state in BUSY_STATES))


def is_transient(exc: BaseException) -> bool:
    """Throttling, 5xx and connection trouble: worth another try."""
    from botocore.exceptions import BotoCoreError, ClientError

    if isinstance(exc, BotoCoreError):
        return True
    if isinstance(exc, ClientError):
        status = ((exc.response or {}).get("ResponseMetadata") or {}).get("HTTPStatusCode")
        return error_code(exc) in _TRANSIENT_CODES or (isinstance(status, int) and status >= 500)
    return False


def control_client(region: str | None, endpoint_url: str | None = None) -> Any:
    """A SageMaker control-plane client with retries (for processes without a Config)."""
    import boto3

    from pytest_fmbench.endpoints.aws import control_config

    return boto3.session.Session(region_name=region).client(
        "sagemaker", endpoint_url=endpoint_url or None, config=control_config())


def _call(kind: str, name: str, sm: Any, action: str) -> Any:
    if kind == "endpoint":
        if action == "describe":
            return sm.describe_endpoint(EndpointName=name)
        return sm.delete_endpoint(EndpointName=name)
    if kind == "endpoint-config":
        if action == "describe":
            return sm.describe_endpoint_config(EndpointConfigName=name)
        return sm.delete_endpoint_config(EndpointConfigName=name)
    if action == "describe":
        return sm.describe_model(ModelName=name)
    return sm.delete_model(ModelName=name)


def delete(sm: Any, kind: str, name: str, *, deadline_s: float = 900.0, poll_s: float = 15.0,
           log: Log = print) -> bool:
    """Delete one resource; True if deleted, False if it was not there.

    Waits out ``Creating``/``Updating`` and retries transient errors until ``deadline_s``;
    raises ``DeleteFailed`` if the resource still exists then.
    """
    deadline = time.monotonic() + deadline_s
    backoff = min(1.0, poll_s)
    while True:
        try:
            _call(kind, name, sm, "delete")
        except Exception as exc:
            if is_not_found(exc):
                return False
            if not (is_in_progress(exc) or is_transient(exc)):
                raise DeleteFailed(f"{kind} '{name}': {exc}") from exc
            if time.monotonic() >= deadline:
                raise DeleteFailed(f"{kind} '{name}' still exists after {deadline_s:.0f} s: "
                                   f"{exc}") from exc
            if is_in_progress(exc):
                status = _status(sm, name)
                if status is None:
                    return False  # gone meanwhile
                if status == "Deleting":
                    return True  # someone else's delete is under way: it goes
                log(f"[fmbench] {kind} '{name}' is {status}: waiting to delete it")
                wait = poll_s
            else:
                log(f"[fmbench] deleting {kind} '{name}' failed ({error_code(exc) or exc}); "
                    "retrying")
                wait, backoff = backoff, min(backoff * 2, poll_s)
            time.sleep(max(0.0, min(wait, deadline - time.monotonic())))
            continue
        log(f"[fmbench] deleted {kind} '{name}'")
        return True


def _status(sm: Any, name: str) -> str | None:
    try:
        return str(sm.describe_endpoint(EndpointName=name).get("EndpointStatus") or "")
    except Exception as exc:  # noqa: BLE001
        if is_not_found(exc):
            return None
        return "unknown"


def tags_of(sm: Any, kind: str, name: str) -> dict[str, str] | None:
    """The resource's tags; None if it does not exist."""
    try:
        description = _call(kind, name, sm, "describe")
    except Exception as exc:
        if is_not_found(exc):
            return None
        raise
    arn = description.get({"endpoint": "EndpointArn", "endpoint-config": "EndpointConfigArn",
                           "model": "ModelArn"}[kind])
    tags = sm.list_tags(ResourceArn=arn).get("Tags") or []
    return {str(t["Key"]): str(t["Value"]) for t in tags}


def is_ours(tags: dict[str, str] | None, run_id: str | None) -> bool:
    """Created by pytest-fmbench (and by that run, when a run id is given)."""
    if not tags or tags.get(CREATED_BY_TAG) != CREATED_BY or RUN_ID_TAG not in tags:
        return False
    return run_id is None or tags.get(RUN_ID_TAG) == run_id


def delete_if_ours(sm: Any, kind: str, name: str, run_id: str | None, *,
                   deadline_s: float = 900.0, poll_s: float = 15.0, log: Log = print) -> str:
    """``deleted``, ``absent`` or ``not ours`` (left alone); raises ``DeleteFailed``."""
    tags = tags_of(sm, kind, name)
    if tags is None:
        return "absent"
    if not is_ours(tags, run_id):
        log(f"[fmbench] {kind} '{name}' is not tagged {RUN_ID_TAG}={run_id}: left alone")
        return "not ours"
    return "deleted" if delete(sm, kind, name, deadline_s=deadline_s, poll_s=poll_s,
                               log=log) else "absent"


def delete_plan(plan: dict[str, Any], *, deadline_s: float | None = None, poll_s: float = 5.0,
                log: Log = print, client: Any = None) -> list[str]:
    """Delete a journaled SageMaker plan (endpoint, then config, then model), each only if it
    carries the plan's run id. Returns what was deleted; raises ``DeleteFailed`` on the first
    resource that could not be deleted, after trying the others."""
    sm = client or control_client(plan.get("region"), plan.get("endpoint_url"))
    run_id = plan.get("run_id")
    wait = float(deadline_s if deadline_s is not None else plan.get("wait_s") or 3600.0)
    done: list[str] = []
    failures: list[str] = []
    for kind, name in _in_delete_order(plan):
        try:
            if delete_if_ours(sm, kind, name, run_id, deadline_s=wait, poll_s=poll_s,
                              log=log) == "deleted":
                done.append(f"{kind}/{name}")
        except DeleteFailed as exc:
            failures.append(str(exc))
        except Exception as exc:  # noqa: BLE001 - try the other resources too
            failures.append(f"{kind} '{name}': {type(exc).__name__}: {exc}")
    if failures:
        raise DeleteFailed("; ".join(failures))
    return done


def delete_commands(plan: dict[str, Any]) -> list[str]:
    """The exact AWS CLI commands that delete a plan's resources, for a human."""
    region = f" --region {plan['region']}" if plan.get("region") else ""
    flags = {"endpoint": ("delete-endpoint", "--endpoint-name"),
             "endpoint-config": ("delete-endpoint-config", "--endpoint-config-name"),
             "model": ("delete-model", "--model-name")}
    return [f"aws sagemaker {flags[k][0]} {flags[k][1]} {n}{region}"
            for k, n in _in_delete_order(plan) if k in flags]


def _in_delete_order(plan: dict[str, Any]) -> list[tuple[str, str]]:
    """A plan's (kind, name) resources: endpoint, then endpoint config, then model."""
    order = {kind: i for i, kind in enumerate(reversed(KINDS))}
    return sorted(((str(k), str(n)) for k, n in plan.get("resources") or []),
                  key=lambda item: order.get(item[0], 99))
