"""A stateful stand-in for the SageMaker control plane, behaving like the real service where
moto does not (NOTES.md, "SageMaker behaviour that emulators miss").

Point real boto3 clients at it (``AWS_ENDPOINT_URL_SAGEMAKER`` or ``endpoint_url=``, dummy
credentials). It speaks SageMaker's JSON 1.1 protocol (``POST /``, ``X-Amz-Target:
SageMaker.<Operation>``) for models, endpoint configs and endpoints: Create / Describe /
Delete / List, plus ListTags and AddTags.

Where it differs from moto on purpose:

- a new endpoint is ``Creating`` for ``creating_s`` seconds, then ``InService`` (or
  ``Failed`` when ``fail_endpoints`` is set);
- DeleteEndpoint of an endpoint that is ``Creating`` or ``Updating`` is refused with a
  ValidationException, like the real service; a deleted endpoint is ``Deleting`` for
  ``deleting_s`` seconds before it is gone;
- faults are injected per operation: ``inject("DescribeEndpoint", times=3)`` answers the next
  three calls with HTTP 400 ``ThrottlingException`` (the ``__type`` and the
  ``x-amzn-query-error`` header botocore reads), so botocore's retries see a real throttle.

Every call is logged in ``calls`` (operation, resource name, the error code answered).
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

ACCOUNT = "123456789012"
_BUSY_STATES = ("Creating", "Updating", "SystemUpdating")


@dataclasses.dataclass
class Fault:
    operation: str
    code: str = "ThrottlingException"
    status: int = 400
    message: str = "Rate exceeded"
    times: int | None = 1  # None: every call
    fired: int = 0


@dataclasses.dataclass
class Call:
    operation: str
    name: str
    error: str = ""
    at: float = dataclasses.field(default_factory=time.time)


@dataclasses.dataclass
class _Resource:
    kind: str  # model | endpoint-config | endpoint
    name: str
    body: dict[str, Any]
    tags: dict[str, str]
    created: float = dataclasses.field(default_factory=time.time)
    status: str = ""
    ready_at: float = 0.0  # Creating until then
    gone_at: float | None = None  # Deleting until then

    @property
    def arn(self) -> str:
        return f"arn:aws:sagemaker:{SageMakerControl.region}:{ACCOUNT}:{self.kind}/{self.name.lower()}"


class ApiError(Exception):
    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


_NAME_KEYS = {"model": "ModelName", "endpoint-config": "EndpointConfigName",
              "endpoint": "EndpointName"}
_LABEL = {"model": "model", "endpoint-config": "endpoint configuration", "endpoint": "endpoint"}


class SageMakerControl:
    """The emulator; a context manager running a threaded HTTP server on loopback."""

    region = "us-east-1"

    def __init__(self, *, creating_s: float = 0.0, deleting_s: float = 0.0,
                 fail_endpoints: bool = False, host: str = "127.0.0.1", port: int = 0) -> None:
        self.creating_s = creating_s
        self.deleting_s = deleting_s
        self.fail_endpoints = fail_endpoints
        self.calls: list[Call] = []
        self._faults: list[Fault] = []
        self._resources: dict[tuple[str, str], _Resource] = {}
        self._lock = threading.RLock()
        self._server = _Server((host, port), _handler_for(self))
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    # -- running -----------------------------------------------------------------------
    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> Self:
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="sagemaker-control")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- test controls -----------------------------------------------------------------
    def inject(self, operation: str, *, times: int | None = 1, code: str = "ThrottlingException",
               status: int = 400, message: str = "Rate exceeded") -> None:
        with self._lock:
            self._faults.append(Fault(operation, code, status, message, times))

    def reset(self) -> None:
        with self._lock:
            self._faults.clear()
            self._resources.clear()
            self.calls.clear()

    def names(self, kind: str) -> list[str]:
        """What exists now (Deleting counts until it is gone)."""
        with self._lock:
            self._expire()
            return sorted(r.name for r in self._resources.values() if r.kind == kind)

    def inventory(self) -> dict[str, list[str]]:
        return {"endpoints": self.names("endpoint"), "configs": self.names("endpoint-config"),
                "models": self.names("model")}

    def status_of(self, name: str) -> str | None:
        with self._lock:
            self._expire()
            resource = self._resources.get(("endpoint", name))
            return self._status(resource) if resource else None

    def errors(self, operation: str) -> list[str]:
        return [c.error for c in self.calls if c.operation == operation and c.error]

    # -- the protocol ------------------------------------------------------------------
    def handle(self, operation: str, body: dict[str, Any]) -> dict[str, Any]:
        name = str(next((body[k] for k in (*_NAME_KEYS.values(), "ResourceArn") if k in body), ""))
        with self._lock:
            call = Call(operation, name)
            self.calls.append(call)
            try:
                fault = self._take_fault(operation)
                if fault is not None:
                    raise ApiError(fault.code, fault.message, fault.status)
                method = getattr(self, f"_op_{operation}", None)
                if method is None:
                    raise ApiError("UnknownOperationException", f"{operation} is not emulated")
                self._expire()
                result: dict[str, Any] = method(body)
                return result
            except ApiError as exc:
                call.error = exc.code
                raise

    def _take_fault(self, operation: str) -> Fault | None:
        for fault in self._faults:
            if fault.operation == operation and (fault.times is None or fault.fired < fault.times):
                fault.fired += 1
                return fault
        return None

    def _expire(self) -> None:
        now = time.time()
        for key, resource in list(self._resources.items()):
            if resource.gone_at is not None and now >= resource.gone_at:
                del self._resources[key]

    def _status(self, resource: _Resource) -> str:
        if resource.status == "Creating" and time.time() >= resource.ready_at:
            resource.status = "Failed" if self.fail_endpoints else "InService"
        return resource.status

    def _get(self, kind: str, name: str) -> _Resource:
        resource = self._resources.get((kind, name))
        if resource is None:
            arn = f"arn:aws:sagemaker:{self.region}:{ACCOUNT}:{kind}/{name.lower()}"
            raise ApiError("ValidationException", f'Could not find {_LABEL[kind]} "{arn}".')
        return resource

    def _create(self, kind: str, body: dict[str, Any]) -> _Resource:
        name = str(body[_NAME_KEYS[kind]])
        if (kind, name) in self._resources:
            raise ApiError("ValidationException",
                           f'Cannot create already existing {_LABEL[kind]} "{name}".')
        tags = {t["Key"]: t["Value"] for t in body.get("Tags") or []}
        resource = _Resource(kind, name, dict(body), tags)
        self._resources[(kind, name)] = resource
        return resource

    def _op_CreateModel(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"ModelArn": self._create("model", body).arn}

    def _op_CreateEndpointConfig(self, body: dict[str, Any]) -> dict[str, Any]:
        self._get("model", str(body["ProductionVariants"][0]["ModelName"]))
        return {"EndpointConfigArn": self._create("endpoint-config", body).arn}

    def _op_CreateEndpoint(self, body: dict[str, Any]) -> dict[str, Any]:
        self._get("endpoint-config", str(body["EndpointConfigName"]))
        resource = self._create("endpoint", body)
        resource.status, resource.ready_at = "Creating", time.time() + self.creating_s
        return {"EndpointArn": resource.arn}

    def _op_DescribeModel(self, body: dict[str, Any]) -> dict[str, Any]:
        resource = self._get("model", str(body["ModelName"]))
        return {**_public(resource.body), "ModelArn": resource.arn, "CreationTime": resource.created}

    def _op_DescribeEndpointConfig(self, body: dict[str, Any]) -> dict[str, Any]:
        resource = self._get("endpoint-config", str(body["EndpointConfigName"]))
        return {**_public(resource.body), "EndpointConfigArn": resource.arn,
                "CreationTime": resource.created}

    def _op_DescribeEndpoint(self, body: dict[str, Any]) -> dict[str, Any]:
        resource = self._get("endpoint", str(body["EndpointName"]))
        status = self._status(resource)
        reply = {"EndpointName": resource.name, "EndpointArn": resource.arn,
                 "EndpointConfigName": resource.body["EndpointConfigName"],
                 "EndpointStatus": status, "CreationTime": resource.created,
                 "LastModifiedTime": resource.created}
        if status == "Failed":
            reply["FailureReason"] = "The primary container did not pass the ping health check."
        return reply

    def _op_DeleteModel(self, body: dict[str, Any]) -> dict[str, Any]:
        resource = self._get("model", str(body["ModelName"]))
        del self._resources[("model", resource.name)]
        return {}

    def _op_DeleteEndpointConfig(self, body: dict[str, Any]) -> dict[str, Any]:
        resource = self._get("endpoint-config", str(body["EndpointConfigName"]))
        del self._resources[("endpoint-config", resource.name)]
        return {}

    def _op_DeleteEndpoint(self, body: dict[str, Any]) -> dict[str, Any]:
        resource = self._get("endpoint", str(body["EndpointName"]))
        status = self._status(resource)
        if status in _BUSY_STATES:
            # The real service refuses this (NOTES.md): wait until InService or Failed.
            raise ApiError("ValidationException",
                           f"Cannot update in-progress endpoint \"{resource.arn}\".")
        if status == "Deleting":
            raise ApiError("ValidationException",
                           f"Cannot update in-progress endpoint \"{resource.arn}\".")
        if self.deleting_s > 0:
            resource.status, resource.gone_at = "Deleting", time.time() + self.deleting_s
        else:
            del self._resources[("endpoint", resource.name)]
        return {}

    def _list(self, kind: str, body: dict[str, Any]) -> list[_Resource]:
        contains = str(body.get("NameContains") or "")
        return sorted((r for r in self._resources.values()
                       if r.kind == kind and contains in r.name), key=lambda r: r.created)

    def _op_ListModels(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"Models": [{"ModelName": r.name, "ModelArn": r.arn, "CreationTime": r.created}
                           for r in self._list("model", body)]}

    def _op_ListEndpointConfigs(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"EndpointConfigs": [
            {"EndpointConfigName": r.name, "EndpointConfigArn": r.arn, "CreationTime": r.created}
            for r in self._list("endpoint-config", body)]}

    def _op_ListEndpoints(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"Endpoints": [
            {"EndpointName": r.name, "EndpointArn": r.arn, "CreationTime": r.created,
             "LastModifiedTime": r.created, "EndpointStatus": self._status(r)}
            for r in self._list("endpoint", body)]}

    def _by_arn(self, arn: str) -> _Resource:
        for resource in self._resources.values():
            if resource.arn == arn:
                return resource
        raise ApiError("ValidationException", f"Could not find resource {arn}.")

    def _op_ListTags(self, body: dict[str, Any]) -> dict[str, Any]:
        resource = self._by_arn(str(body["ResourceArn"]))
        return {"Tags": [{"Key": k, "Value": v} for k, v in resource.tags.items()]}

    def _op_AddTags(self, body: dict[str, Any]) -> dict[str, Any]:
        resource = self._by_arn(str(body["ResourceArn"]))
        resource.tags.update({t["Key"]: t["Value"] for t in body.get("Tags") or []})
        return {"Tags": body.get("Tags") or []}


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client killed mid-call (the point of these tests) resets its connection: quiet."""


def _public(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != "Tags"}


def _handler_for(control: SageMakerControl) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b"{}"
            target = self.headers.get("X-Amz-Target") or ""
            operation = target.rpartition(".")[2]
            try:
                status, reply, headers = 200, control.handle(operation, json.loads(raw or b"{}")), {}
            except ApiError as exc:
                status = exc.status
                reply = {"__type": exc.code, "message": exc.message}
                # botocore reads the code from __type, or from this header (query-compatible).
                headers = {"x-amzn-query-error": f"{exc.code};Sender"}
            data = json.dumps(reply, default=str).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/x-amz-json-1.1")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("x-amzn-RequestId", f"control-{time.monotonic_ns():x}")
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # one line per call would drown test output

    return Handler
