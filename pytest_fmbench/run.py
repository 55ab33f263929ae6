"""One benchmark run in one process: payloads, endpoints, cases and their records.

The plugin creates one ``BenchmarkRun`` per process (controller or xdist worker) and calls it
from fixtures and hooks; everything here is plain Python, testable without pytest.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pytest_fmbench import __version__
from pytest_fmbench.cases import Case
from pytest_fmbench.clock import now_ns as clock_now
from pytest_fmbench.config.model import Config, Experiment
from pytest_fmbench.data.payloads import PayloadFilter, build_payload_files, load_payloads
from pytest_fmbench.data.tokens import TokenCounter, load_token_counter
from pytest_fmbench.endpoints.base import Endpoint, InferenceRequest, InferenceResult
from pytest_fmbench.endpoints.lifecycle import EndpointManager
from pytest_fmbench.endpoints.registry import EndpointContext, create_endpoint
from pytest_fmbench.errors import ConfigError
from pytest_fmbench.load.columnar import ColumnarRecordWriter
from pytest_fmbench.load.engine import RecordContext, plan_load, run_in_loop, run_load
from pytest_fmbench.load.records import RequestRecord
from pytest_fmbench.load.summary import case_summary


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


# One event-loop runner for the whole package (uvloop when installed).
run_async = run_in_loop


@dataclasses.dataclass
class CaseResult:
    case: Case
    records: list[RequestRecord]
    summary: dict[str, Any]

    @property
    def requests(self) -> int:
        return len(self.records)

    @property
    def successes(self) -> int:
        return sum(1 for r in self.records if r.ok)


class BenchmarkRun:
    def __init__(self, config: Config, *, run_id: str, results_dir: Path, worker: str = "",
                 payload_dir: Path | None = None, log: Callable[[str], None] = print) -> None:
        self.config = config
        # Payload files outlive a run so the next run with unchanged inputs reuses them.
        self.payload_dir = payload_dir or results_dir / "payloads"
        self.run_id = run_id
        self.results_dir = results_dir
        self.worker = worker
        self.log = log
        suffix = f"-{worker}" if worker else ""
        # JSON lines (the record of truth) plus an Arrow copy per case, for fast reports.
        self.records = ColumnarRecordWriter(results_dir / f"records{suffix}.jsonl")
        self.endpoints = EndpointManager(
            self._create_endpoint, results_dir / f"endpoints{suffix}.jsonl",
            warmup=self._warmup, log=log,
        )
        self._counter: TokenCounter | None = None
        self._payload_paths: dict[str, Path] | None = None
        self._requests: dict[tuple[str, str], list[InferenceRequest]] = {}
        self.started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    # -- files -------------------------------------------------------------------------
    @property
    def config_dir(self) -> Path:
        return self.config.source_path.parent if self.config.source_path else Path.cwd()

    def write_metadata(self, extra: dict[str, Any] | None = None) -> None:
        self.results_dir.mkdir(parents=True, exist_ok=True)
        meta = {
            "run_id": self.run_id,
            "name": self.config.general.name,
            "config": str(self.config.source_path) if self.config.source_path else None,
            "pytest_fmbench": __version__,
            "python": platform.python_version(),
            "host": platform.node(),
            "started": self.started,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **(extra or {}),
        }
        (self.results_dir / "run.json").write_text(json.dumps(meta, indent=2) + "\n")

    # -- tokens and payloads -----------------------------------------------------------
    @property
    def counter(self) -> TokenCounter:
        if self._counter is None:
            self._counter = load_token_counter(self._tokenizer_spec(), warn=self.log)
        return self._counter

    def _tokenizer_spec(self) -> str | None:
        spec = self.config.datasets.tokenizer
        if spec is None:
            return None
        if spec.startswith("local:"):
            from pytest_fmbench.endpoints.local import resolve_local_model

            return str(resolve_local_model(spec.removeprefix("local:")))
        candidate = (self.config_dir / spec).expanduser()
        return str(candidate) if candidate.exists() else spec

    def payload_paths(self) -> dict[str, Path]:
        if self._payload_paths is None:
            self._payload_paths = build_payload_files(
                self._dataset_records(),
                template=self._template(),
                keys=self.config.datasets.prompt_template_keys,
                filters=[PayloadFilter(**f.model_dump()) for f in self.config.datasets.filters],
                counter=self.counter,
                out_dir=self.payload_dir,
                max_prompts_per_file=self.config.datasets.max_prompts_per_file,
            )
        return self._payload_paths

    def _dataset_records(self) -> list[dict[str, Any]]:
        datasets = self.config.datasets
        if not datasets.source_files:
            from pytest_fmbench.data.synthetic import synthetic_longbench

            return synthetic_longbench(datasets.synthetic.records, datasets.synthetic.seed)
        from pytest_fmbench.data.longbench import load_longbench_jsonl

        records: list[dict[str, Any]] = []
        for name in datasets.source_files:
            records += load_longbench_jsonl(self.config_dir / name)
        return records

    def _template(self) -> str:
        datasets = self.config.datasets
        if datasets.prompt_template is not None:
            return datasets.prompt_template
        if datasets.prompt_template_file is not None:
            from pytest_fmbench.data.template import load_template

            return load_template(self.config_dir / datasets.prompt_template_file)
        from pytest_fmbench.data.template import DEFAULT_PROMPT_TEMPLATE

        return DEFAULT_PROMPT_TEMPLATE

    def requests_for(self, experiment: Experiment, payload_file: str) -> list[InferenceRequest]:
        key = (experiment.name, payload_file)
        if key not in self._requests:
            path = self.payload_paths().get(payload_file)
            if path is None:
                raise ConfigError(f"payload file '{payload_file}' was not built",
                                  key="datasets.filters", fix="add a filter producing it")
            parameters = self.config.parameters_for(experiment)
            self._requests[key] = [
                InferenceRequest(p.prompt, parameters, p.prompt_tokens) for p in load_payloads(path)
            ]
        return self._requests[key]

    # -- endpoints ---------------------------------------------------------------------
    def _create_endpoint(self, name: str) -> Endpoint:
        count = self.counter.count if self.counter.source == "tokenizer" else None
        context = EndpointContext(self.run_id, self.results_dir, self.log, count)
        return create_endpoint(self.config, self.config.experiment(name), context)

    def _warmup(self, name: str, endpoint: Endpoint) -> None:
        experiment = self.config.experiment(name)
        count = self.config.load_for(experiment).warmup_requests or 0
        if not count:
            return
        request = self.requests_for(experiment, experiment.payload_files[0])[0]

        async def warm() -> list[InferenceResult]:
            client = endpoint.client()
            try:
                return [await client.invoke(request) for _ in range(count)]
            finally:
                await client.aclose()

        results = run_async(warm)
        failed = [r for r in results if r.error]
        seconds = ", ".join(f"{(r.last_byte_ns - r.sent_ns) / 1e9:.2f} s" for r in results)
        self.log(f"[fmbench] warm-up of '{name}': {count} request(s) ({seconds})"
                 + (f", {len(failed)} failed: {failed[0].error} {failed[0].error_detail}" if failed else ""))

    # -- cases -------------------------------------------------------------------------
    def run_case(self, case: Case, endpoint: Endpoint) -> CaseResult:
        experiment = self.config.experiment(case.experiment)
        settings = self.config.load_for(experiment)
        requests = self.requests_for(experiment, case.payload_file)
        # Every pattern (waves, concurrency, rate) runs through the load engine (load/).
        plan = plan_load(settings, case.concurrency, len(requests))
        context = RecordContext(self.run_id, case.experiment, case.payload_file,
                                case.concurrency, case.id, self.worker)
        records: list[RequestRecord] = []

        def emit(record: RequestRecord) -> None:
            self.records.write(record)
            records.append(record)

        try:
            run_load(plan, endpoint.client, requests, context, emit, log=self.log)
        finally:
            self.records.checkpoint()
        return CaseResult(case, records, case_summary(records))

    def close(self) -> None:
        try:
            self.endpoints.teardown_all()
        finally:
            self.records.close()


def cleanup_orphans(run: BenchmarkRun) -> list[str]:
    """Controller: tear down what crashed xdist workers deployed and never tore down.

    A backend opts in with a ``cleanup_orphan(config, experiment, context, description)``
    classmethod that deletes from the description its endpoint logged at deploy time.
    """
    from pytest_fmbench.endpoints.lifecycle import (
        orphaned_deploys,
        read_endpoint_events,
        record_teardown,
    )
    from pytest_fmbench.endpoints.registry import backend_factory

    done = []
    for path in sorted(run.results_dir.glob("endpoints-*.jsonl")):
        try:
            events = orphaned_deploys(read_endpoint_events(path))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            run.log(f"[fmbench] WARNING: cannot read {path.name} to find endpoints left by a "
                    f"crashed worker: {type(exc).__name__}: {exc}")
            continue
        for event in events:
            # One event's failure (a renamed experiment, a broken description) must not stop
            # the others' cleanup, nor raise out of session finish.
            try:
                if _cleanup_orphan(run, event, record_teardown, backend_factory):
                    done.append(str(event["experiment"]))
            except Exception as exc:  # noqa: BLE001 - reported; the rest still cleaned up
                run.log(f"[fmbench] WARNING: could not clean up after a crashed worker "
                        f"({event.get('experiment')!r}): {type(exc).__name__}: {exc}")
    return done


def _cleanup_orphan(run: BenchmarkRun, event: dict[str, Any], record_teardown: Any,
                    backend_factory: Any) -> bool:
    """Tear down one endpoint a crashed worker left; False when its backend cannot."""
    name, description = event["experiment"], event.get("endpoint") or {}
    experiment = run.config.experiment(name)
    factory = backend_factory(experiment.resolved_backend or "")
    cleanup = getattr(factory, "cleanup_orphan", None)
    if cleanup is None:
        run.log(f"[fmbench] WARNING: the endpoint of '{name}' was deployed by a worker "
                f"that died and may still be running: {description}")
        return False
    start = clock_now()
    error = ""
    try:
        cleanup(run.config, experiment, EndpointContext(run.run_id, run.results_dir, run.log),
                description)
        run.log(f"[fmbench] tore down the endpoint of '{name}' left by a crashed worker")
    except Exception as exc:  # noqa: BLE001 - report it and keep cleaning up
        error = f"{type(exc).__name__}: {exc}"
        run.log(f"[fmbench] WARNING: could not tear down '{name}' left by a crashed "
                f"worker: {error}")
    record_teardown(run.results_dir / "endpoints.jsonl", name, start, error, description)
    return True
