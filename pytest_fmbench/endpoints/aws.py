"""What the SageMaker and Bedrock backends share: boto3 clients, error classes, retries.

boto3 is imported lazily (the ``aws`` extra). Runtime calls are blocking boto3 calls run in
a thread pool sized to the experiment's highest concurrency, so a wave of ``c`` requests is
``c`` calls in flight; each thread takes its own timestamps as bytes arrive, so TTFT and ITL
are not delayed by the event loop.

botocore's own retries are switched off for the runtime clients (``total_max_attempts=1``);
the only retries there are ours (``RetrySettings``): bounded, counted in ``InferenceResult.retries``, and kept out of
latency — a retried request's record measures its final attempt, and the time spent on the
earlier attempts and back-off shows as client queue time (``sent - scheduled``).

The control plane (create / describe / delete endpoint) is another matter: no latency is
measured there, calls are throttled per account, and one lost call can leave an endpoint
billing. Its clients use ``control_config``: botocore's adaptive retries, bounded timeouts.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pytest_fmbench.clock import now_ns
from pytest_fmbench.config.model import Config, Experiment, RetrySettings
from pytest_fmbench.endpoints.base import InferenceRequest, InferenceResult
from pytest_fmbench.errors import ConfigError

INSTALL_HINT = "pip install 'pytest-fmbench[aws]' (boto3)"
ROLE_ARN = re.compile(r"^arn:aws[a-z\-]*:iam::\d{12}:role/.+$")
_THROTTLE_CODES = frozenset({
    "throttlingexception", "throttling", "toomanyrequestsexception", "requestlimitexceeded",
    "servicequotaexceededexception", "provisionedthroughputexceededexception",
})
_TOKEN_LIMIT = re.compile(r"[^\s]+")


def import_boto3() -> Any:
    try:
        import boto3
    except ImportError:
        raise ConfigError(
            "the AWS backends need boto3, which is not installed",
            fix=INSTALL_HINT,
        ) from None
    return boto3


def region_of(config: Config) -> str | None:
    return (config.aws.region or os.environ.get("AWS_REGION")
            or os.environ.get("AWS_DEFAULT_REGION") or None)


_LOADER: Any = None


def session(config: Config) -> Any:
    """A fresh boto3 session (credentials and endpoint URLs read now), sharing one loader of
    service models, so that each new client does not parse botocore's JSON again."""
    global _LOADER
    boto3 = import_boto3()
    import botocore.loaders
    import botocore.session

    if _LOADER is None:
        _LOADER = botocore.loaders.create_loader()
    core = botocore.session.get_session()
    core.register_component("data_loader", _LOADER)
    return boto3.session.Session(botocore_session=core, region_name=region_of(config))


def client_config(*, workers: int = 10, timeout_s: float = 60.0) -> Any:
    from botocore.config import Config as BotoConfig

    return BotoConfig(
        retries={"total_max_attempts": 1, "mode": "standard"},
        max_pool_connections=max(10, workers),
        read_timeout=timeout_s,
        connect_timeout=min(10.0, timeout_s),
        tcp_keepalive=True,
    )


def control_config(*, max_attempts: int = 10, connect_timeout_s: float = 10.0,
                   read_timeout_s: float = 60.0) -> Any:
    """For control-plane clients: adaptive retries (throttling, 5xx, connection errors)."""
    from botocore.config import Config as BotoConfig

    return BotoConfig(
        retries={"mode": "adaptive", "max_attempts": max_attempts},
        connect_timeout=connect_timeout_s,
        read_timeout=read_timeout_s,
        tcp_keepalive=True,
    )


def check_region_and_credentials(config: Config, experiment: Experiment) -> Any:
    """ConfigError unless a region and credentials are found; returns the boto3 session."""
    boto_session = session(config)
    where = f"experiments ({experiment.name})"
    if not boto_session.region_name:
        raise ConfigError(
            f"no AWS region for {where}",
            key="aws.region",
            fix="set aws.region in the config, or export AWS_REGION / AWS_DEFAULT_REGION",
        )
    try:
        credentials = boto_session.get_credentials()
    except Exception as exc:  # noqa: BLE001 - a broken profile is a config problem too
        raise ConfigError(f"AWS credentials could not be loaded: {exc}",
                          fix="check ~/.aws/config, AWS_PROFILE and the AWS_* variables") from None
    if credentials is None:
        raise ConfigError(
            f"no AWS credentials found for {where}",
            fix="configure credentials (aws configure / AWS_PROFILE / AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, or an instance role)",
        )
    return boto_session


def max_concurrency(experiment: Experiment) -> int:
    """The most requests in flight the client's connection pool must serve (an experiment
    with only load levels, docs/load-levels.md: their in-flight cap, else 64)."""
    cap = (experiment.load.max_in_flight if experiment.load is not None else None) or 64
    return max(experiment.concurrency_levels, default=cap)


# -- error classes (METRICS.md) ----------------------------------------------------------

def error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None) or {}
    return str((response.get("Error") or {}).get("Code") or "")


def classify_exception(exc: BaseException, *, started: bool) -> tuple[str, str, int | None]:
    """(error class, detail, HTTP status) for anything a boto3 runtime call raised.

    ``started``: whether the response had begun (a break after that is a truncated stream).
    """
    from botocore import exceptions as bex

    detail = f"{type(exc).__name__}: {exc}"[:500]
    if isinstance(exc, bex.ClientError):
        response = exc.response or {}
        status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
        code = error_code(exc)
        if code.lower() in _THROTTLE_CODES or status == 429:
            return "throttled", detail, status
        if isinstance(exc, bex.EventStreamError):
            # The server reported an error mid-stream, after a 200.
            return "http_5xx", detail, status
        original = response.get("OriginalStatusCode") or response.get("originalStatusCode")
        if code in ("ModelError", "ModelErrorException") and isinstance(original, int):
            return ("http_4xx" if 400 <= original < 500 else "http_5xx"), detail, status
        if isinstance(status, int) and status >= 500 or code in ("ModelError", "ModelErrorException"):
            return "http_5xx", detail, status
        if isinstance(status, int) and 400 <= status < 500:
            return "http_4xx", detail, status
        return "client", detail, status
    try:
        from urllib3 import exceptions as uex
    except ImportError:  # pragma: no cover - botocore depends on urllib3
        uex = None  # type: ignore[assignment]
    if isinstance(exc, bex.ReadTimeoutError) or (uex and isinstance(exc, uex.ReadTimeoutError)):
        return "timeout", detail, None
    if isinstance(exc, TimeoutError):
        return "timeout", detail, None
    if isinstance(exc, (bex.ConnectTimeoutError, bex.EndpointConnectionError)):
        return "connection", detail, None
    if isinstance(exc, bex.ConnectionClosedError):
        return ("stream_truncated" if started else "connection"), detail, None
    if isinstance(exc, bex.ResponseStreamingError) or (uex and isinstance(exc, uex.ProtocolError)):
        return ("stream_truncated" if started else "connection"), detail, None
    if isinstance(exc, (ConnectionError, OSError)):
        return ("stream_truncated" if started else "connection"), detail, None
    from botocore.parsers import ResponseParserError

    if isinstance(exc, (ValueError, ResponseParserError)):
        return "bad_response", detail, None
    return "client", detail, None


def estimate_tokens(text: str) -> int:
    """FMBench's rule of thumb, 750 words = 1000 tokens."""
    words = len(_TOKEN_LIMIT.findall(text))
    return -(-words * 4 // 3) if words else 0


def fill_tokens(result: InferenceResult, request: InferenceRequest, *,
                server_prompt: int | None, server_completion: int | None,
                content_chunks: int | None, count_tokens: Callable[[str], int] | None) -> None:
    """Token counts: server usage, else the configured tokenizer, else an estimate."""
    if server_completion is not None:
        result.completion_tokens = server_completion
        result.prompt_tokens = server_prompt if server_prompt is not None else request.prompt_tokens
        result.token_source = "server"
        return
    result.prompt_tokens = server_prompt if server_prompt is not None else request.prompt_tokens
    if count_tokens is not None:
        result.completion_tokens = count_tokens(result.text)
        result.token_source = "tokenizer"
    else:
        result.completion_tokens = content_chunks if content_chunks else estimate_tokens(result.text)
        result.token_source = "estimate"


class StreamProgress:
    """Content chunks seen so far in a stream: first-token time, ITL gaps, piece count."""

    __slots__ = ("first", "last", "pieces")

    def __init__(self) -> None:
        self.first: int | None = None
        self.last = 0
        self.pieces = 0

    def content(self, arrived: int, pieces: int, itl_us: list[int]) -> None:
        if self.first is None:
            self.first = arrived
        else:
            itl_us.append((arrived - self.last) // 1000)
        self.last = arrived
        self.pieces += pieces



# -- the async face of blocking boto3 calls ----------------------------------------------

Call = Callable[[InferenceRequest], InferenceResult]


class ThreadedClient:
    """``EndpointClient`` over a blocking ``call(request)``, with our retries."""

    def __init__(self, call: Call, *, workers: int, timeout_s: float,
                 retry: RetrySettings, default_retries: int = 0) -> None:
        self._call = call
        self._timeout_s = timeout_s
        self._retry = retry
        self.max_retries = retry.max_retries if retry.max_retries is not None else default_retries
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers),
                                        thread_name_prefix="fmbench-aws")

    async def invoke(self, request: InferenceRequest) -> InferenceResult:
        loop = asyncio.get_running_loop()
        first = now_ns()
        first_sent: int | None = None
        attempt = 0
        while True:
            result = await loop.run_in_executor(self._pool, self._call, request)
            result.retries = attempt
            # Throttled attempts and back-off are the server's doing: recorded apart from
            # the client's own lateness (REVIEW M3).
            first_sent = result.sent_ns if first_sent is None else first_sent
            result.retry_wait_ns = result.sent_ns - first_sent
            if not result.error or result.error not in self._retry.retry_on:
                return result
            if attempt >= self.max_retries:
                return result
            delay = min(self._retry.max_backoff_s, self._retry.backoff_s * 2 ** attempt)
            delay *= random.uniform(0.5, 1.0)  # jitter, so throttled waves spread out
            # Retrying never pushes a request past its timeout budget.
            if (now_ns() - first) / 1e9 + delay >= self._timeout_s:
                return result
            await asyncio.sleep(delay)
            attempt += 1

    async def aclose(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def failed(sent_ns: int, exc: BaseException, *, started: bool,
           first_token_ns: int | None = None) -> InferenceResult:
    error, detail, status = classify_exception(exc, started=started)
    return InferenceResult(sent_ns=sent_ns, last_byte_ns=now_ns(), first_token_ns=first_token_ns,
                           error=error, error_detail=detail, status=status)


def status_of(response: dict[str, Any]) -> int | None:
    status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
    return status if isinstance(status, int) else None


def drain_stream(stream: Any, on_event: Callable[[Any, int], None], deadline_ns: float,
                 timeout_s: float) -> None:
    """Hand each event of a response stream to ``on_event`` with its arrival time.

    Past ``deadline_ns`` the read ends as a ``TimeoutError``; on any error (the stream's, the
    deadline's or ``on_event``'s) the stream is closed so its connection is not left open.
    """
    try:
        for event in stream:
            arrived = now_ns()
            on_event(event, arrived)
            if arrived > deadline_ns:
                raise TimeoutError(f"the stream did not end within {timeout_s} s")
    except BaseException:
        close_stream(stream)
        raise


def close_stream(stream: Any) -> None:
    close = getattr(stream, "close", None)
    if close is not None:
        try:
            close()
        except Exception:  # noqa: BLE001, S110 - closing a broken stream may fail too
            pass
