"""Telemetry beside each case: which sources apply, the sampler process, telemetry.jsonl.

``TelemetryRecorder.begin`` (before a case's load) decides the sources from the endpoint's
capabilities (``endpoints.base``: ``ExposesServerMetrics``, ``RunsOnThisHost``,
``PublishesCloudWatchMetrics``) and the experiment's ``telemetry:`` settings, and starts the
sampler process (``telemetry.child``) when something is to be sampled during the load.
``end`` (after the load) collects its samples, reads CloudWatch for the case's window, appends
everything to ``telemetry[-<worker>].jsonl`` and returns the case's aggregates.

Nothing here may fail a case: a source that does not answer is *unavailable* (with the reason,
named in the report), and the run goes on exactly as without telemetry.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from pytest_fmbench.clock import now_ns
from pytest_fmbench.config.model import Config, TelemetrySettings
from pytest_fmbench.endpoints.base import (
    Endpoint,
    ExposesServerMetrics,
    PublishesCloudWatchMetrics,
    RunsOnThisHost,
)
from pytest_fmbench.redaction import redact_url, scrub
from pytest_fmbench.telemetry.aggregate import case_aggregates

REPLY_TIMEOUT_S = 30.0
HOST_SOURCES = ("host", "nvml", "neuron")


@dataclasses.dataclass
class CaseTelemetry:
    """One case's telemetry while it runs: what is sampled, what is not and why."""

    keys: dict[str, Any]
    settings: TelemetrySettings
    start_ns: int
    available: dict[str, str] = dataclasses.field(default_factory=dict)
    unavailable: dict[str, str] = dataclasses.field(default_factory=dict)
    cloudwatch: tuple[str, str] | None = None
    sampling: bool = False
    samples: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    aggregates: dict[str, float] = dataclasses.field(default_factory=dict)


class SamplerProcess:
    """``python -m pytest_fmbench.telemetry.child``, started once and reused by every case."""

    def __init__(self) -> None:
        self._process: subprocess.Popen[str] | None = None

    def _ensure(self) -> subprocess.Popen[str]:
        if self._process is None or self._process.poll() is not None:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "pytest_fmbench.telemetry.child"], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1)
            self._expect("ready")
        return self._process

    def _expect(self, kind: str) -> dict[str, Any]:
        process = self._process
        assert process is not None and process.stdout is not None
        line = _readline(process.stdout, REPLY_TIMEOUT_S)
        if not line:
            self.close()
            raise RuntimeError(f"the telemetry sampler process did not answer '{kind}'")
        reply: dict[str, Any] = json.loads(line)
        if reply.get("reply") != kind:
            raise RuntimeError(f"the telemetry sampler answered {reply.get('reply')!r}, not {kind!r}")
        return reply

    def start(self, command: dict[str, Any]) -> dict[str, Any]:
        process = self._ensure()
        assert process.stdin is not None
        process.stdin.write(json.dumps({"cmd": "start", **command}) + "\n")
        process.stdin.flush()
        return self._expect("started")

    def stop(self) -> dict[str, Any]:
        process = self._process
        assert process is not None and process.stdin is not None
        process.stdin.write('{"cmd": "stop"}\n')
        process.stdin.flush()
        return self._expect("samples")

    def close(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        try:
            if process.stdin is not None:
                process.stdin.close()  # the child exits on end of input
            process.wait(5)
        except (OSError, subprocess.TimeoutExpired):
            process.kill()
            process.wait(5)
        if process.stdout is not None:
            process.stdout.close()


def _readline(stream: IO[str], timeout_s: float) -> str:
    """One line, or '' after ``timeout_s`` (a hung child must not hang the run)."""
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout_s)
    return out[0] if out else ""


class TelemetryRecorder:
    """Per process (controller or xdist worker): the telemetry of every case it runs."""

    def __init__(self, config: Config, results_dir: Path, *, run_id: str, worker: str = "",
                 log: Callable[[str], None] = print, cloudwatch_client: Callable[[], Any] | None = None
                 ) -> None:
        self.config = config
        self.path = results_dir / (f"telemetry-{worker}.jsonl" if worker else "telemetry.jsonl")
        self.run_id = run_id
        self.worker = worker
        self.log = log
        self._sampler = SamplerProcess()
        self._cloudwatch_client = cloudwatch_client
        self._client: Any = None

    # -- around a case -------------------------------------------------------------------
    def begin(self, keys: dict[str, Any], endpoint: Endpoint) -> CaseTelemetry:
        """Before the load: decide the sources and start sampling those that run during it."""
        settings = self.config.telemetry_for(self.config.experiment(keys["experiment"]))
        case = CaseTelemetry(keys=keys, settings=settings, start_ns=now_ns())
        if not settings.enabled:
            case.unavailable["telemetry"] = "off (telemetry.enabled: false)"
            return case
        command: dict[str, Any] = {"interval_s": settings.interval_s,
                                   "server_metrics": settings.server_metrics}
        command["prometheus_url"] = self._metrics_url(settings, endpoint, case)
        command["host"] = self._host(settings, endpoint, case)
        self._cloudwatch(settings, endpoint, case)
        if command["prometheus_url"] or command["host"]:
            try:
                reply = self._sampler.start(command)
            except (OSError, RuntimeError, ValueError) as exc:
                self._sampler.close()
                case.unavailable["sampler"] = f"the sampler process failed: {exc}"
            else:
                case.sampling = True
                case.available.update(reply.get("available") or {})
                case.unavailable.update(reply.get("unavailable") or {})
                if "prometheus" in case.available and command["prometheus_url"]:
                    case.available["prometheus"] += f" at {redact_url(command['prometheus_url'])}"
        case.start_ns = now_ns()
        return case

    def end(self, case: CaseTelemetry) -> dict[str, float]:
        """After the load: the samples, CloudWatch's minutes, telemetry.jsonl, the aggregates."""
        end_ns = now_ns()
        if case.sampling:
            try:
                reply = self._sampler.stop()
                case.samples += reply.get("samples") or []
                for source, failure in (reply.get("failures") or {}).items():
                    case.available[source] = f"{case.available.get(source, source)}; {failure}"
            except (OSError, RuntimeError, ValueError) as exc:
                self._sampler.close()
                case.unavailable["sampler"] = f"the sampler process failed: {exc}"
        if case.cloudwatch is not None:
            self._read_cloudwatch(case, end_ns)
        case.aggregates = case_aggregates(case.samples)
        try:
            self._write(case, end_ns)
        except OSError as exc:
            self.log(f"[fmbench] WARNING could not write {self.path.name}: {exc}")
        return case.aggregates

    def abandon(self, case: CaseTelemetry) -> None:
        """The load failed or was interrupted: stop sampling, record nothing."""
        if case.sampling:
            try:
                self._sampler.stop()
            except (OSError, RuntimeError, ValueError):
                self._sampler.close()

    def close(self) -> None:
        self._sampler.close()

    # -- sources -------------------------------------------------------------------------
    @staticmethod
    def _metrics_url(settings: TelemetrySettings, endpoint: Endpoint, case: CaseTelemetry) -> str | None:
        if not settings.prometheus:
            case.unavailable["prometheus"] = "off (telemetry.prometheus: false)"
            return None
        url = settings.metrics_url
        if url is None and isinstance(endpoint, ExposesServerMetrics):
            url = endpoint.metrics_url()
        if url is None:
            case.unavailable["prometheus"] = "the endpoint has no Prometheus /metrics (not an OpenAI-compatible server)"
        return url

    @staticmethod
    def _host(settings: TelemetrySettings, endpoint: Endpoint, case: CaseTelemetry) -> bool:
        if not settings.host:
            case.unavailable["host"] = "off (telemetry.host: false)"
            return False
        if isinstance(endpoint, RunsOnThisHost) and endpoint.runs_on_this_host():
            return True
        case.unavailable["host"] = "the endpoint is not served by this machine"
        return False

    @staticmethod
    def _cloudwatch(settings: TelemetrySettings, endpoint: Endpoint, case: CaseTelemetry) -> None:
        if not settings.cloudwatch:
            case.unavailable["cloudwatch"] = "off (telemetry.cloudwatch: false)"
        elif isinstance(endpoint, PublishesCloudWatchMetrics):
            case.cloudwatch = endpoint.cloudwatch_dimensions()
        else:
            case.unavailable["cloudwatch"] = "not a SageMaker endpoint"

    def _read_cloudwatch(self, case: CaseTelemetry, end_ns: int) -> None:
        from pytest_fmbench.telemetry.cloudwatch import (
            PERIOD_S,
            CloudWatchTarget,
            fetch_case_metrics,
        )

        assert case.cloudwatch is not None
        name, variant = case.cloudwatch
        try:
            if self._client is None:
                self._client = (self._cloudwatch_client or self._default_client)()
            found = fetch_case_metrics(self._client, CloudWatchTarget(name, variant), case.start_ns, end_ns)
        except Exception as exc:  # noqa: BLE001 - no credentials, AccessDenied, throttling: unavailable
            case.unavailable["cloudwatch"] = f"get_metric_data failed: {type(exc).__name__}: {exc}"
            return
        case.samples += found
        detail = (f"endpoint {name} variant {variant}: {len(found)} minute(s), "
                  f"{PERIOD_S}-second granularity")
        if found:
            case.available["cloudwatch"] = detail
        else:
            case.unavailable["cloudwatch"] = f"{detail} — no datapoint for the case's window yet"

    def _default_client(self) -> Any:
        from pytest_fmbench.endpoints import aws

        return aws.session(self.config).client("cloudwatch", config=aws.control_config(max_attempts=5))

    # -- telemetry.jsonl -------------------------------------------------------------------
    def _write(self, case: CaseTelemetry, end_ns: int) -> None:
        head = {"run_id": self.run_id, "worker": self.worker, **case.keys}
        lines = [{"kind": "case", **head, "start_ns": case.start_ns, "end_ns": end_ns,
                  "interval_s": case.settings.interval_s,
                  # A reason may quote the URL or a service's error: scrubbed like any detail.
                  "available": {k: scrub(v) for k, v in case.available.items()},
                  "unavailable": {k: scrub(v) for k, v in case.unavailable.items()}}]
        lines += [{"kind": "sample", **head, **sample} for sample in case.samples]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as out:
            out.write("".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines))


def read_telemetry(results_dir: Path) -> list[dict[str, Any]]:
    """Every line of every process's telemetry file (a broken line is skipped)."""
    lines: list[dict[str, Any]] = []
    for path in sorted(results_dir.glob("telemetry*.jsonl")):
        try:
            text = path.read_text(encoding="utf-8")
        except OSError:
            continue
        for line in text.splitlines():
            try:
                lines.append(json.loads(line))
            except ValueError:
                continue
    return lines
