"""One benchmark run in one process: payloads, endpoints, cases and their records.

The plugin creates one ``BenchmarkRun`` per process (controller or xdist worker) and calls it
from fixtures and hooks; everything here is plain Python, testable without pytest.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import platform
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pytest_fmbench import __version__
from pytest_fmbench.cases import Case
from pytest_fmbench.clock import now_ns as clock_now
from pytest_fmbench.config.model import Config, Experiment
from pytest_fmbench.data.fmbench_read import FmbenchInputs, uses_read_data
from pytest_fmbench.data.payloads import PayloadFilter, build_payload_files, load_payloads
from pytest_fmbench.data.tokens import TokenCounter, load_token_counter
from pytest_fmbench.endpoints.base import Endpoint, InferenceRequest, InferenceResult
from pytest_fmbench.endpoints.lifecycle import EndpointManager
from pytest_fmbench.endpoints.registry import EndpointContext, create_endpoint
from pytest_fmbench.errors import ConfigError
from pytest_fmbench.load.columnar import ColumnarRecordWriter
from pytest_fmbench.load.engine import (
    RecordContext,
    plan_load,
    run_in_loop,
    run_load,
    workload_plan,
)
from pytest_fmbench.load.records import RequestRecord
from pytest_fmbench.load.stored import CaseRecorder
from pytest_fmbench.progress import Tracker
from pytest_fmbench.safety.net import SafetyNet
from pytest_fmbench.safety.spend import SpendGuard, SpendLedger
from pytest_fmbench.telemetry.sampler import TelemetryRecorder


class SpendLimitReached(Exception):
    """The next deploy or case would cross ``--fmbench-max-cost``; nothing more starts."""


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


# One event-loop runner for the whole package (uvloop when installed).
run_async = run_in_loop


@dataclasses.dataclass
class CaseResult:
    case: Case
    # A sequence: a list, or the records file read back on demand (``StoredRecords``).
    records: Sequence[RequestRecord]
    summary: dict[str, Any]
    # The case's telemetry aggregates (server_waiting_max, ...): pytest_fmbench.telemetry.
    telemetry: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def requests(self) -> int:
        return len(self.records)

    @property
    def successes(self) -> int:
        return sum(1 for r in self.records if r.ok)


class BenchmarkRun:
    def __init__(self, config: Config, *, run_id: str, results_dir: Path, worker: str = "",
                 payload_dir: Path | None = None, log: Callable[[str], None] = print,
                 read_dir: Path | None = None, safety: SafetyNet | None = None,
                 teardown_deadline_s: float = 600.0) -> None:
        self.config = config
        # FMBench's local read layout (--fmbench-read-dir); without it, the read bucket.
        self.read_dir = read_dir
        # Payload files outlive a run so the next run with unchanged inputs reuses them.
        self.payload_dir = payload_dir or results_dir / "payloads"
        self.run_id = run_id
        self.results_dir = results_dir
        self.worker = worker
        self.log = log
        suffix = f"-{worker}" if worker else ""
        # The journal of intent (and, when the plugin passes one, the reaper connection).
        self.safety = safety or SafetyNet(run_id, results_dir, worker=worker, enabled=False,
                                          log=log)
        # What crashed workers left that the controller could not delete.
        self.orphans_left: list[dict[str, Any]] = []
        # What workers reported as left running (their ``left_running()``, via workeroutput).
        self.workers_left: list[dict[str, Any]] = []
        self._cleanups: list[threading.Thread] = []
        # JSON lines (the record of truth) plus an Arrow copy per case, for fast reports.
        self.records = ColumnarRecordWriter(results_dir / f"records{suffix}.jsonl")
        self.endpoints = EndpointManager(
            self._create_endpoint, results_dir / f"endpoints{suffix}.jsonl",
            warmup=self._warmup, log=log, journal=self.safety.journal,
            teardown_deadline_s=teardown_deadline_s,
        )
        self._counter: TokenCounter | None = None
        self._inputs: FmbenchInputs | None = None
        self._payload_paths: dict[str, Path] | None = None
        self._requests: dict[tuple[str, str], list[InferenceRequest]] = {}
        self.started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.spend = SpendLedger(results_dir, worker)
        # What this process is doing now, for live progress (progress.py); read by a thread.
        self.progress = Tracker(worker)
        self.guard: SpendGuard | None = None
        # ``--fmbench-shard`` ("K/N"; "" unsharded) and this host, stamped on every record so
        # results dirs can be merged later.
        self.shard = ""
        self.host = platform.node()
        # Per experiment, the per-request SLOs (metrics.slo_thresholds of its budgets) an SLO
        # search holds levels to; set by the plugin from the run's budgets.
        self.slos: dict[str, dict[str, float]] = {}
        # One line per level of a case and per SLO search (load/levels.py), for the report.
        self.levels_path = results_dir / f"levels{suffix}.jsonl"
        # Server, host and CloudWatch samples beside each case (telemetry.jsonl).
        self.telemetry = TelemetryRecorder(config, results_dir, run_id=run_id, worker=worker, log=log)

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

    @property
    def read_cache(self) -> Path:
        """Where the read bucket's files are downloaded: next to the payload files, so later
        runs reuse them."""
        return self.payload_dir.parent / "fmbench-read"

    def fmbench_inputs(self) -> FmbenchInputs | None:
        """The config's ``s3_read_data`` files as local paths (read dir, else read bucket)."""
        if self._inputs is None and uses_read_data(self.config):
            from pytest_fmbench.data.fmbench_read import read_source, resolve_inputs

            source = read_source(self.config, read_dir=self.read_dir,
                                 cache_dir=self.read_cache, s3_client=self._s3_client)
            self._inputs = resolve_inputs(self.config, source, cache_dir=self.read_cache)
            self.log(f"[fmbench] source data, prompt template and tokenizer from the FMBench "
                     f"{self._inputs.origin}")
        return self._inputs

    def pricing_from_read_bucket(self, *, quiet: bool = False) -> None:
        """FMBench reads a custom pricing file from the read bucket's configs/: so do we, once
        the cases are selected (never at collection). Not there: the packaged table (warned)."""
        from pytest_fmbench.data.fmbench_read import (
            S3ReadBucket,
            pricing_may_be_in_bucket,
            use_bucket_pricing,
        )

        if not pricing_may_be_in_bucket(self.config, self.read_dir):
            return
        section = self.config.s3_read_data
        assert section is not None and section.read_bucket
        warning = self.config.pricing_fallback_warning
        bucket = S3ReadBucket(section.read_bucket, self.read_cache, self._s3_client)
        try:
            found = use_bucket_pricing(self.config, bucket)
        except ConfigError as exc:  # the data's own lookup reports bucket problems
            found, warning = None, f"{warning} ({exc.message})"
        if quiet:
            return
        if found is not None:
            self.log(f"[fmbench] pricing: '{found.name}' from the FMBench read bucket "
                     f"s3://{section.read_bucket}/{section.configs_prefix}/")
        elif warning:
            self.log(f"[fmbench] WARNING {warning}")

    def _s3_client(self) -> Any:
        from pytest_fmbench.endpoints import aws

        return aws.session(self.config).client("s3")

    def _tokenizer_spec(self) -> str | None:
        spec = self.config.datasets.tokenizer
        if spec is None:
            inputs = self.fmbench_inputs()
            if inputs and inputs.tokenizer_dir:
                return str(inputs.tokenizer_dir)
            return self._fmbench_tokenizer()
        if spec.startswith("local:"):
            from pytest_fmbench.endpoints.local import resolve_local_model

            return str(resolve_local_model(spec.removeprefix("local:")))
        candidate = (self.config_dir / spec).expanduser()
        return str(candidate) if candidate.exists() else spec

    def _fmbench_tokenizer(self) -> str | None:
        """FMBench counts with the model's tokenizer (hf_tokenizer_model_id / model_id): use it
        when the local Hugging Face cache has it; offline otherwise, the estimate (warned)."""
        from pytest_fmbench.data.tokens import cached_tokenizer_file

        model_ids = self.config.tokenizer_model_ids()
        if not model_ids:
            return None
        found = cached_tokenizer_file(model_ids[0])
        if found is None:
            self.log(f"[fmbench] the tokenizer of '{model_ids[0]}' (hf_tokenizer_model_id / "
                     "model_id) is not in the local Hugging Face cache: not downloaded")
            return None
        if len(model_ids) > 1:
            self.log(f"[fmbench] token counts use the tokenizer of '{model_ids[0]}' for every "
                     f"experiment ({len(model_ids)} models named; set datasets.tokenizer to choose)")
        return str(found)

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

    def dataset_records(self) -> list[dict[str, Any]]:
        """The dataset's records (payload ids are their ``_id``, else their index)."""
        return self._dataset_records()

    def _dataset_records(self) -> list[dict[str, Any]]:
        datasets = self.config.datasets
        inputs = self.fmbench_inputs()
        if inputs is not None:
            from pytest_fmbench.data.longbench import load_longbench_jsonl

            return [record for path in inputs.source_files for record in load_longbench_jsonl(path)]
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
        inputs = self.fmbench_inputs()
        if inputs is not None and inputs.prompt_template is not None:
            from pytest_fmbench.data.template import load_template

            return load_template(inputs.prompt_template)
        from pytest_fmbench.data.template import DEFAULT_PROMPT_TEMPLATE

        return DEFAULT_PROMPT_TEMPLATE

    def requests_for(self, experiment: Experiment, payload_file: str) -> list[InferenceRequest]:
        key = (experiment.name, payload_file)
        workload = self.config.datasets.workload(payload_file)
        if key not in self._requests and workload is not None:
            from pytest_fmbench.data.workloads import (
                build_workload,
                check_backend,
                default_force_output,
            )

            check_backend(workload, experiment.resolved_backend, experiment.name)
            force = workload.force_output
            self._requests[key] = build_workload(
                workload, counter=self.counter, parameters=self.config.parameters_for(experiment),
                force_output=default_force_output(experiment.resolved_backend) if force is None
                else force, base_dir=self.config_dir)
        if key not in self._requests:
            path = self.payload_paths().get(payload_file)
            if path is None:
                raise ConfigError(f"payload file '{payload_file}' was not built",
                                  key="datasets.filters", fix="add a filter producing it")
            parameters = self.config.parameters_for(experiment)
            self._requests[key] = [
                InferenceRequest(p.prompt, parameters, p.prompt_tokens, p.id)
                for p in load_payloads(path)
            ]
        return self._requests[key]

    # -- endpoints ---------------------------------------------------------------------
    def _create_endpoint(self, name: str) -> Endpoint:
        count = self.counter.count if self.counter.source == "tokenizer" else None
        context = EndpointContext(self.run_id, self.results_dir, self._backend_log, count)
        return create_endpoint(self.config, self.config.experiment(name), context)

    def _backend_log(self, line: str) -> None:
        """A backend's line is logged, and during a deploy it is the deploy's live status."""
        self.log(line)
        self.progress.note(line)

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
        if self.guard is not None:
            self.guard.observe(name, [(r.last_byte_ns - r.sent_ns) / 1e9 for r in results if not r.error])
        failed = [r for r in results if r.error]
        seconds = ", ".join(f"{(r.last_byte_ns - r.sent_ns) / 1e9:.2f} s" for r in results)
        self.log(f"[fmbench] warm-up of '{name}': {count} request(s) ({seconds})"
                 + (f", {len(failed)} failed: {failed[0].error} {failed[0].error_detail}" if failed else ""))

    def limit_spend(self, limit: float) -> None:
        """``--fmbench-max-cost``: check every deploy and case against the run's spend."""
        self.guard = SpendGuard(limit, self.config, self.spend)

    def price_spend(self, prices: dict[str, Any]) -> None:
        """The checked prices of the selected experiments (with a pricing file from the read
        bucket, an instance type learned by preflight), for the spend guard."""
        if self.guard is not None:
            self.guard.prices.update(prices)

    def endpoint_for(self, case: Case) -> Endpoint:
        """The case's endpoint, deployed on first use, within the spend limit if one is set."""
        deploying = case.experiment not in self.endpoints.live
        if deploying and self.config.datasets.workload(case.payload_file) is not None:
            # Inputs first: a broken workload file must not cost a deployment.
            self.requests_for(self.config.experiment(case.experiment), case.payload_file)
        if self.guard is not None and deploying:
            experiment = self.config.experiment(case.experiment)
            commitment = self.guard.deploy_commitment(experiment)
            self._stop_if(self.guard.check(f"deploying '{case.experiment}'", commitment))
        with self.progress.deploying(case.experiment) if deploying else contextlib.nullcontext():
            endpoint = self.endpoints.acquire(case.experiment)
        if deploying and self.guard is not None:
            price = self.guard.prices.get(case.experiment)
            if price is not None and price.kind == "instance":
                self.spend.endpoint_up(case.experiment, price.price_per_hour)
        return endpoint

    def release(self, experiment: str) -> None:
        """Tear down the experiment's endpoint after its last case (and stop its spend)."""
        self.endpoints.teardown(experiment)
        self._account_teardowns([experiment])

    def _account_teardowns(self, experiments: list[str]) -> None:
        """An endpoint stops costing money once its teardown succeeded (it left the live set)."""
        if self.guard is None:
            return
        for experiment in experiments:
            if experiment not in self.endpoints.live:
                self.spend.endpoint_down(experiment)

    def _check_case_spend(self, case: Case, requests: int) -> None:
        if self.guard is None:
            return
        self._stop_if(self.guard.check(f"case {case.id}", self.guard.case_commitment(case, requests)))

    def _stop_if(self, reason: str | None) -> None:
        """Over the spend limit: tear down what is live, and start nothing more."""
        if reason is None:
            return
        live = self.endpoints.live
        self.endpoints.teardown_all()
        self._account_teardowns(live)
        raise SpendLimitReached(reason)

    # -- cases -------------------------------------------------------------------------
    def run_case(self, case: Case, endpoint: Endpoint) -> CaseResult:
        if case.accuracy:
            from pytest_fmbench.accuracy.experiment_pass import run_accuracy_pass

            return run_accuracy_pass(self, case, endpoint)
        # Server, host and CloudWatch samples beside the case (pytest_fmbench.telemetry).
        telemetry = self.telemetry.begin({"case_id": case.id, "experiment": case.experiment,
                                          "payload_file": case.payload_file,
                                          "concurrency": case.concurrency,
                                          "level": case.level}, endpoint)
        try:
            result = self._run_load_case(case, endpoint)
        except BaseException:
            self.telemetry.abandon(telemetry)
            raise
        result.telemetry = self.telemetry.end(telemetry)
        return result

    def _run_load_case(self, case: Case, endpoint: Endpoint) -> CaseResult:
        experiment = self.config.experiment(case.experiment)
        settings = self.config.load_for(experiment)
        if case.level_kind or (settings.repeats or 1) > 1:
            return self._run_levels(case, endpoint)
        requests = self.requests_for(experiment, case.payload_file)
        # Every pattern (waves, concurrency, rate) runs through the load engine (load/).
        plan = plan_load(settings, case.concurrency, len(requests))
        workload = self.config.datasets.workload(case.payload_file)
        expected = plan.requests or plan.waves * plan.concurrency
        if workload is not None:
            plan = workload_plan(plan, workload, settings.requests)
            if plan.pattern in ("trace", "sessions"):  # every entry / every turn, once
                expected = sum(1 + len(r.followups) for r in requests[:plan.requests])
        self._check_case_spend(case, expected)
        context = RecordContext(self.run_id, case.experiment, case.payload_file,
                                case.concurrency, case.id, self.worker, shard=self.shard,
                                host=self.host)
        # Bounded memory (issue 18): the records stay on disk, the summary is streamed.
        recorder = CaseRecorder(self.records, case.id)
        from pytest_fmbench.accuracy.combination import answer_tap

        # accuracy.per_combination: the answers of this case are kept (apart from the records).
        make_client, save_answers = answer_tap(self, case, plan.processes, endpoint.client)
        # Live progress counts finished requests; it never formats or writes per request.
        total = expected if plan.requests is not None or plan.pattern == "waves" else None
        with self.progress.case(case.id, total, plan.duration_s) as progress:

            def emit(record: RequestRecord) -> None:
                recorder(record)
                progress.count(bool(record.error))

            try:
                run_load(plan, make_client, requests, context, emit, log=self.log,
                         on_start=lambda collector: progress.watch(collector.in_flight))
                save_answers()
            finally:
                self.records.checkpoint()
                if self.guard is not None:
                    self.guard.record_case(case.experiment, recorder.records)
        return CaseResult(case, recorder.records, recorder.aggregate.summary())

    def _run_levels(self, case: Case, endpoint: Endpoint) -> CaseResult:
        """A case of load levels (load/levels.py): repeats, a rate level, a sweep or an SLO
        search; every level on this one endpoint, its records tagged with the level."""
        from pytest_fmbench.load.levels import LevelPlanner

        experiment = self.config.experiment(case.experiment)
        settings = self.config.load_for(experiment)
        requests = self.requests_for(experiment, case.payload_file)
        records: list[RequestRecord] = []
        levels = {level.rate: level for level in self.config.rate_levels(experiment)}

        def run_level(kind: str, label: str, rate: float | None, concurrency: int,
                      repeat: int) -> tuple[list[RequestRecord], str]:
            if kind == "concurrency":
                level_settings = settings
            elif rate is None:  # the closed-loop throughput probe
                probe = settings.sweep or settings.slo_search
                assert probe is not None
                level_settings = settings.model_copy(update={
                    "pattern": "concurrency", "requests": probe.probe_requests,
                    "duration_s": None, "warmup_s": 0.0})
            else:
                chosen = levels.get(rate)
                level_settings = settings.model_copy(update={
                    "pattern": "rate", "rate": rate,
                    "arrival": (chosen.arrival if chosen and chosen.arrival else settings.arrival),
                    "burstiness": (chosen.burstiness if chosen and chosen.burstiness
                                   else settings.burstiness)})
            plan = plan_load(level_settings, concurrency, len(requests))
            plan = dataclasses.replace(plan, saturation_stop=bool(
                rate is not None and settings.saturation_stop),
                seed=plan.seed + repeat)
            self._check_case_spend(case, plan.requests or plan.waves * plan.concurrency)
            context = RecordContext(self.run_id, case.experiment, case.payload_file,
                                    case.concurrency, case.id, self.worker, shard=self.shard,
                                    host=self.host, level=case.level if kind in ("concurrency", "rate") else label,
                                    rate=rate, repeat=repeat)
            level_records: list[RequestRecord] = []

            def emit(record: RequestRecord) -> None:
                self.records.write(record)
                level_records.append(record)

            try:
                stats = run_load(plan, endpoint.client, requests, context, emit, log=self.log)
            finally:
                self.records.checkpoint()
                if self.guard is not None:
                    self.guard.record_case(case.experiment, level_records)
                records.extend(level_records)
            return level_records, stats.saturation_stop

        planner = LevelPlanner(case.id, case.experiment, case.payload_file, case.concurrency,
                               self.slos.get(case.experiment, {}), settings.repeats or 1,
                               run_level, log=self.log)
        try:
            if case.level_kind == "sweep":
                assert settings.sweep is not None
                sweep = settings.sweep
                planner.sweep(levels=sweep.levels, probe_concurrency=sweep.probe_concurrency,
                              min_rate=sweep.min_rate, light_fraction=sweep.light_fraction)
            elif case.level_kind == "slo_search":
                search = settings.slo_search
                assert search is not None
                planner.slo_search(
                    probe_concurrency=search.probe_concurrency, min_rate=search.min_rate,
                    light_fraction=search.light_fraction, goodput_share=search.goodput_share,
                    precision=search.precision, max_requests=search.max_requests,
                    per_level=plan_load(settings.model_copy(update={"pattern": "rate",
                                                                     "rate": 1.0}),
                                        case.concurrency, len(requests)).requests or 100)
            else:
                planner.level(case.level_kind or "concurrency", case.level, case.rate,
                              case.concurrency)
        finally:
            self._write_levels([o.to_json() for o in planner.outcomes]
                               + ([planner.search] if planner.search else []))
        from pytest_fmbench.load.summary import case_summary

        summary = case_summary(records)
        summary["levels"] = [o.to_json() for o in planner.outcomes]
        if planner.search:
            summary["search"] = planner.search
        return CaseResult(case, records, summary)

    def _write_levels(self, lines: list[dict[str, Any]]) -> None:
        if not lines:
            return
        self.levels_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.levels_path, "a", encoding="utf-8") as handle:
            handle.writelines(json.dumps({"run_id": self.run_id, "worker": self.worker, **line})
                              + "\n" for line in lines)

    def close(self) -> None:
        live = self.endpoints.live
        try:
            self.endpoints.teardown_all()
            self._account_teardowns(live)
        finally:
            self.records.close()
            self.telemetry.close()

    def start_orphan_cleanup(self, worker: str) -> None:
        """Controller: a worker went down: delete what it left, now (in the background, so
        xdist's loop keeps serving the other workers while an endpoint leaves Creating)."""
        thread = threading.Thread(target=cleanup_orphans, args=(self, worker), daemon=True,
                                  name=f"fmbench-orphans-{worker}")
        thread.start()
        self._cleanups.append(thread)

    def wait_orphan_cleanups(self) -> None:
        for thread in self._cleanups:
            thread.join()
        self._cleanups.clear()

    def left_running(self) -> list[dict[str, Any]]:
        """Everything of this run that may still be running (and billing), each with the
        command that deletes it: failed teardowns here, and a crashed worker's leftovers."""
        from pytest_fmbench.safety.reap import delete_commands, describe_plan

        items = [{"experiment": left.experiment, "error": left.error, "plan": left.plan,
                  "description": left.description}
                 for left in self.endpoints.left_running.values()] + list(self.orphans_left)
        out = []
        sweep = f"python -m pytest_fmbench sweep --run-id {self.run_id} --results-dir {self.results_dir}"
        for item in items:
            plan = item.get("plan") or {}
            description = item.get("description") or {}
            out.append({
                "experiment": item["experiment"],
                "worker": self.worker,
                "error": item["error"],
                "resources": describe_plan(plan) if plan else str(description),
                "commands": (delete_commands(plan, self.run_id, str(self.results_dir)) if plan
                             else [sweep]),
            })
        return out + list(self.workers_left)


def cleanup_orphans(run: BenchmarkRun, worker: str | None = None) -> list[str]:
    """Controller: tear down what a dead xdist worker deployed and never tore down.

    ``worker``: that worker's id (``pytest_testnodedown``); None: every worker (session end).
    First the worker's journal: every intent without a teardown is reaped from its plan
    (also a deploy still in progress when the worker died). Then, for experiments of
    backends without a plan, the backend's ``cleanup_orphan`` (``SupportsOrphanCleanup``)
    with the description its endpoint logged at deploy. What cannot be deleted is added to
    ``run.orphans_left`` (reported like a failed teardown).
    """
    from pytest_fmbench.endpoints.lifecycle import (
        orphaned_deploys,
        read_endpoint_events,
        record_teardown,
    )
    from pytest_fmbench.endpoints.registry import backend_factory
    from pytest_fmbench.safety.journal import open_entries_in
    from pytest_fmbench.safety.reap import reap_plan

    done: list[str] = []
    covered: set[tuple[str, str]] = set()
    # A worker that ended normally already reported what it could not tear down.
    reported = {(str(i.get("worker")), str(i.get("experiment"))) for i in run.workers_left}
    for entry in open_entries_in(run.results_dir):
        owner = str(entry.get("worker") or "")
        if not owner or (worker is not None and owner != worker):
            continue  # the controller's own entries are its teardown's business
        if entry.get("run_id") != run.run_id:
            continue  # another run's journal in a reused results dir: sweep's business
        if (owner, str(entry.get("experiment"))) in reported:
            continue
        name, plan = str(entry.get("experiment")), entry.get("plan") or {}
        covered.add((owner, name))
        start = clock_now()
        error = ""
        try:
            deleted = reap_plan(plan, log=run.log)
            run.log(f"[fmbench] tore down the endpoint of '{name}' left by crashed worker "
                    f"{owner}: {', '.join(deleted) or 'nothing was left'}")
            run.safety.journal.torn_down(str(entry["id"]))
        except Exception as exc:  # noqa: BLE001 - ReapFailed or any other: report it, go on
            error = f"{type(exc).__name__}: {exc}"
            run.log(f"[fmbench] WARNING: could not tear down '{name}' left by crashed worker "
                    f"{owner}: {error}")
            run.orphans_left.append({"experiment": name, "error": error, "plan": plan})
        record_teardown(run.results_dir / "endpoints.jsonl", name, start, error, {"plan": plan})
        done.append(name)
    pattern = f"endpoints-{worker}.jsonl" if worker else "endpoints-*.jsonl"
    for path in sorted(run.results_dir.glob(pattern)):
        owner = path.stem.removeprefix("endpoints-")
        try:
            events = orphaned_deploys(read_endpoint_events(path))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            run.log(f"[fmbench] WARNING: cannot read {path.name} to find endpoints left by a "
                    f"crashed worker: {type(exc).__name__}: {exc}")
            continue
        for event in events:
            name = str(event.get("experiment"))
            if (owner, name) in covered or name in done:
                continue
            # One event's failure (a renamed experiment, a broken description) must not stop
            # the others' cleanup, nor raise out of session finish.
            try:
                if _cleanup_orphan(run, event, record_teardown, backend_factory):
                    done.append(name)
            except Exception as exc:  # noqa: BLE001 - reported; the rest still cleaned up
                run.log(f"[fmbench] WARNING: could not clean up after a crashed worker "
                        f"({name!r}): {type(exc).__name__}: {exc}")
    return done


def _cleanup_orphan(run: BenchmarkRun, event: dict[str, Any], record_teardown: Any,
                    backend_factory: Any) -> bool:
    """Tear down one endpoint a crashed worker left; False when its backend cannot."""
    from pytest_fmbench.endpoints.base import SupportsOrphanCleanup

    name, description = event["experiment"], event.get("endpoint") or {}
    experiment = run.config.experiment(name)
    factory = backend_factory(experiment.resolved_backend or "")
    if not isinstance(factory, SupportsOrphanCleanup):
        run.log(f"[fmbench] WARNING: the endpoint of '{name}' was deployed by a worker "
                f"that died and may still be running: {description}")
        run.orphans_left.append({"experiment": name, "error": "no orphan cleanup for "
                                 "its backend", "description": description})
        return False
    start = clock_now()
    error = ""
    try:
        factory.cleanup_orphan(run.config, experiment,
                               EndpointContext(run.run_id, run.results_dir, run.log), description)
        run.log(f"[fmbench] tore down the endpoint of '{name}' left by a crashed worker")
    except Exception as exc:  # noqa: BLE001 - report it and keep cleaning up
        error = f"{type(exc).__name__}: {exc}"
        run.log(f"[fmbench] WARNING: could not tear down '{name}' left by a crashed "
                f"worker: {error}")
        run.orphans_left.append({"experiment": name, "error": error, "description": description})
    record_teardown(run.results_dir / "endpoints.jsonl", name, start, error, description)
    return True
