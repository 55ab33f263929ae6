"""Who this pytest process is in the run, chosen once: the controller or an xdist worker.

Like pytest-cov's ``Central`` / ``DistMaster`` / ``DistWorker``, each role owns its duties at
session start and session finish, so the money-safety path of a run reads in one place:

- ``ControllerRole``, a plain run or the xdist controller: it owns the results dir (a reused
  one has the previous run set aside), the comparison with an earlier run, the terminal, the
  case ledger (``Controller``), the cleanup of crashed workers' endpoints, ``run.json``, the
  report, the verdict and the left-running check.
- ``WorkerRole``, an xdist worker: it takes the run id and results dir from the controller,
  prices its own selection, and ships its log lines and the endpoints it could not tear down
  to the controller (on its test reports and in ``workeroutput``).

``plugin.py`` picks the role in ``pytest_configure`` and its hooks delegate to it. Nothing in
session finish raises: a failing step is one line, and the run exits 1 (never INTERNALERROR).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pytest_fmbench.accuracy.session import evaluate_run as evaluate_accuracy
from pytest_fmbench.accuracy.session import merge_into_report
from pytest_fmbench.case_ledger import CaseLedger, case_label
from pytest_fmbench.cases import Case
from pytest_fmbench.config.model import Config
from pytest_fmbench.errors import ConfigError, FmbenchError
from pytest_fmbench.load.summary import format_summary
from pytest_fmbench.progress import (
    PROGRESS_DIR,
    SNAPSHOT_INTERVAL_S,
    Display,
    SnapshotFile,
    choose_interval,
    choose_mode,
    fd_writer,
    read_snapshots,
)
from pytest_fmbench.redaction import redact_args
from pytest_fmbench.report.ci import write_step_summary
from pytest_fmbench.report.history import load_baseline, parse_thresholds, resolve_baseline
from pytest_fmbench.report.session import ReportSettings, SessionReport, finish
from pytest_fmbench.results_dir import set_aside_previous_run
from pytest_fmbench.run import BenchmarkRun, cleanup_orphans, new_run_id
from pytest_fmbench.runlog import RunLog
from pytest_fmbench.safety.net import DISABLE_ENV, SafetyNet
from pytest_fmbench.safety.spend import estimate, estimate_lines, offline_prices
from pytest_fmbench.selection import check_selected, price_selected, selected_experiments
from pytest_fmbench.shard import Shard

# The case summary rides on the call report (xdist ships report attributes to the controller).
REPORT_ATTRIBUTE = "fmbench"
# A worker's log lines ride on its test reports and its workeroutput to the controller.
LOG_ATTRIBUTE = "fmbench_log"
# What a worker could not tear down, in its workeroutput.
LEFT_RUNNING_OUTPUT = "fmbench_left_running"
# With --fmbench-shard, the cases a worker's collection selected before the shard's share.
EXPECTED_OUTPUT = "fmbench_expected_cases"
CONTROLLER = "fmbench-controller"
# The controller's live progress display (progress.py), for the lines that must clear it first.
PROGRESS_KEY = pytest.StashKey["Display"]()


def setting(config: pytest.Config, name: str, env: str) -> str | None:
    """Command line, then environment, then ini (like pytest-timeout)."""
    value = config.getoption(name)
    if value:
        return str(value)
    if os.environ.get(env):
        return os.environ[env]
    ini = config.getini(name)
    return str(ini) if ini else None


def hourly_price(settings: ReportSettings, experiment: str) -> float | None:
    """An instance-priced experiment's USD per hour (None: token-priced or not priced)."""
    price = settings.prices.get(experiment)
    value = price.price_per_hour if price is not None else math.nan
    return None if math.isnan(value) else value


def clear_progress(config: pytest.Config) -> None:
    """Before the controller writes a line: remove the progress line drawn in place."""
    display = config.stash.get(PROGRESS_KEY, None)
    if display is not None:
        display.clear(hold=True)


def case_of(item: pytest.Item | None) -> Case | None:
    """The benchmark case a collected test runs, or None for any other test."""
    callspec = getattr(item, "callspec", None)
    case = callspec.params.get("fmbench_case") if callspec is not None else None
    return case if isinstance(case, Case) else None


def finish_step(label: str, step: Callable[[], object]) -> str:
    """Run one session-finish step; '' when it worked, else the line that says why not."""
    try:
        step()
    except Exception as exc:  # noqa: BLE001 - reported, and the run fails
        return f"{label} failed: {type(exc).__name__}: {exc}"
    return ""


@dataclasses.dataclass(frozen=True)
class RunPlace:
    """Where this process's run writes, and under which run id."""

    run_id: str
    results_dir: Path
    payload_dir: Path
    # Given by the user (--fmbench-results-dir), so it may hold an earlier run.
    chosen: bool


def run_place(config: pytest.Config, name: str, workerinput: dict[str, Any]) -> RunPlace:
    """A worker's place is its controller's; a controller's is the user's choice, else
    ``results/<name>/<run id>/`` with payload files shared by the runs of ``<name>``."""
    base = config.invocation_params.dir
    run_id = workerinput.get("fmbench_run_id") or new_run_id()
    results = workerinput.get("fmbench_results_dir") or setting(
        config, "fmbench_results_dir", "FMBENCH_RESULTS_DIR")
    if results:
        results_dir = (base / results).resolve()
        payload_dir = results_dir / "payloads"
    else:
        results_dir = (base / "results" / name / run_id).resolve()
        payload_dir = results_dir.parent / "payloads"
    payload_dir = Path(workerinput.get("fmbench_payload_dir") or payload_dir)
    return RunPlace(run_id, results_dir, payload_dir, chosen=bool(results))


@dataclasses.dataclass
class RunSetup:
    """What ``pytest_configure`` read and checked, for the role to start its run with."""

    config: Config
    cases: list[Case]
    settings: ReportSettings
    read_dir: Path | None
    teardown_deadline_s: float
    upload: bool = False
    shard: Shard | None = None


class Role:
    """What both roles share: the run of this process, its log, and closing them."""

    def __init__(self, config: pytest.Config, run: BenchmarkRun, run_log: RunLog,
                 setup: RunSetup) -> None:
        self.config = config
        self.run = run
        self.run_log = run_log
        self.setup = setup
        # The controller's verdict block for the terminal summary (a worker has none).
        self.outcome: SessionReport | None = None
        # The exit status while session finish runs; each failing step may raise it to 1.
        self.exitstatus: int = pytest.ExitCode.OK
        # With --fmbench-shard: the case labels selected before the shard's share was taken.
        self.expected_cases: list[str] | None = None

    @classmethod
    def start(cls, config: pytest.Config, setup: RunSetup) -> Role:
        """Decide the place, do this role's duties before the run exists, then build it."""
        workerinput = cls.workerinput_of(config)
        place = run_place(config, setup.config.general.name, workerinput)
        cls.before_run(config, setup, place)
        worker = workerinput.get("workerid", "")
        run_log = RunLog(place.results_dir, worker, echo=cls.echo(config))
        safety = _safety_net(place, workerinput, run_log)
        run = BenchmarkRun(setup.config, run_id=place.run_id, results_dir=place.results_dir,
                           payload_dir=place.payload_dir, worker=worker, log=run_log,
                           read_dir=setup.read_dir, safety=safety,
                           teardown_deadline_s=setup.teardown_deadline_s)
        run.shard = setup.shard.label if setup.shard else ""
        return cls(config, run, run_log, setup)

    @staticmethod
    def workerinput_of(config: pytest.Config) -> dict[str, Any]:
        return {}

    @staticmethod
    def before_run(config: pytest.Config, setup: RunSetup, place: RunPlace) -> None:
        """Duties before the run writes anything (none by default)."""

    @staticmethod
    def echo(config: pytest.Config) -> Callable[[str], None] | None:
        """Where log lines are printed; None keeps them for the controller."""
        return None

    def register(self) -> None:
        """This role's own pytest plugins (none by default)."""

    def collection_finish(self, items: list[pytest.Item]) -> None:
        """After collection (nothing by default)."""

    def select_shard(self, items: list[pytest.Item]) -> None:
        """``--fmbench-shard``: deselect the cases of other shards' experiments (after
        ``-k``/``-m``), and keep the cases expected without the shard for the case ledger."""
        shard = self.setup.shard
        if shard is None:
            return
        self.expected_cases = [case_label(item.nodeid) for item in items if case_of(item)]
        mine = shard.experiments(case.experiment for case in self.setup.cases)
        kept: list[pytest.Item] = []
        dropped: list[pytest.Item] = []
        for item in items:
            case = case_of(item)
            (dropped if case is not None and case.experiment not in mine else kept).append(item)
        if dropped:
            self.config.hook.pytest_deselected(items=dropped)
            items[:] = kept

    def ship_log_lines(self, report: pytest.TestReport) -> None:
        """Lines logged during a test phase, for the controller (nothing by default)."""

    def session_finish(self, exitstatus: int) -> int:
        """The session-finish duties; returns the exit status the run ends with."""
        raise NotImplementedError

    def close(self) -> None:
        """At unconfigure: close the run (a no-op when session finish did) and the safety net."""
        self._close_run()
        self.run.safety.close(done=True)

    def _close_run(self) -> None:
        failure = finish_step("closing the run", self.run.close)  # never raise out of a hook
        if failure:
            self.run.log(f"[fmbench] ERROR {failure}")


def _safety_net(place: RunPlace, workerinput: dict[str, Any],
                log: Callable[[str], None]) -> SafetyNet:
    """The journal and reaper connection of this process (a worker gets the controller's)."""
    address, token = SafetyNet.address_from(workerinput)
    return SafetyNet(place.run_id, place.results_dir, worker=workerinput.get("workerid", ""),
                     reaper_address=address, reaper_token=token,
                     enabled=os.environ.get(DISABLE_ENV) != "1", log=log)


class WorkerRole(Role):
    """An xdist worker: measures its cases, and ships what the controller must know."""

    # Live progress: this worker's phase for the controller (started by register).
    progress_file: SnapshotFile | None = None

    @staticmethod
    def workerinput_of(config: pytest.Config) -> dict[str, Any]:
        workerinput: dict[str, Any] = getattr(config, "workerinput", {})
        return workerinput

    def register(self) -> None:
        """Live progress: this worker's phase in a file the controller reads (its log lines
        reach the controller only when a test phase ends; a deploy takes minutes)."""
        self.progress_file = SnapshotFile(self.run.progress, self.run.results_dir / PROGRESS_DIR,
                                          min(SNAPSHOT_INTERVAL_S, choose_interval("lines")))
        self.progress_file.start()

    def collection_finish(self, items: list[pytest.Item]) -> None:
        """Price the selected experiments (the controller already checked them)."""
        if self.config.option.collectonly:
            return
        names = [case.experiment for item in items if (case := case_of(item))]
        self.run.pricing_from_read_bucket(quiet=True)  # the controller said where from
        price_selected(self.run.config, self.setup.settings,
                       selected_experiments(self.run.config, names))
        self.run.price_spend(self.setup.settings.prices)
        settings = self.setup.settings
        self.run.progress.price_of = lambda experiment: hourly_price(settings, experiment)

    def ship_log_lines(self, report: pytest.TestReport) -> None:
        lines = self.run_log.take()  # deploy progress, warnings, teardown failures of this phase
        if lines:
            setattr(report, LOG_ATTRIBUTE, lines)

    def session_finish(self, exitstatus: int) -> int:
        """Close the run (tearing down its endpoints), then ship what is left running and the
        session-end lines (teardowns come after the last test report) in ``workeroutput``."""
        self._close_run()
        if self.progress_file is not None:
            self.progress_file.stop()
        workeroutput: dict[str, Any] = getattr(self.config, "workeroutput", {})
        workeroutput[LEFT_RUNNING_OUTPUT] = self.run.left_running()
        workeroutput[LOG_ATTRIBUTE] = self.run_log.take()
        if self.expected_cases is not None:  # the controller collects nothing itself
            workeroutput[EXPECTED_OUTPUT] = self.expected_cases
        self.run.safety.close(done=True)
        return exitstatus  # the controller gives the verdict


class ControllerRole(Role):
    """A plain run or the xdist controller: results dir, ledger, report, verdict."""

    def __init__(self, config: pytest.Config, run: BenchmarkRun, run_log: RunLog,
                 setup: RunSetup) -> None:
        super().__init__(config, run, run_log, setup)
        self.ledger = Controller(config, run, setup.cases, setup.settings)
        # Live progress (started by register): the display and the stdout duplicate it writes to.
        self.progress_display: Display | None = None
        self.progress_fd: int | None = None

    def select_shard(self, items: list[pytest.Item]) -> None:
        super().select_shard(items)
        self.ledger.expected_all = self.expected_cases

    @staticmethod
    def before_run(config: pytest.Config, setup: RunSetup, place: RunPlace) -> None:
        """A reused results dir holds one run; the baseline is read before anything is written."""
        if place.chosen:
            _set_aside_previous_run(place.results_dir)
        _prepare_comparison(config, setup.settings, setup.config.general.name,
                            place.results_dir if place.chosen else None)

    @staticmethod
    def echo(config: pytest.Config) -> Callable[[str], None] | None:
        return _terminal_logger(config)

    def register(self) -> None:
        self._start_progress()
        self.config.pluginmanager.register(self.ledger, CONTROLLER)
        if self.config.pluginmanager.hasplugin("xdist"):  # like pytest-randomly's XdistHooks
            self.config.pluginmanager.register(XdistHooks(self.run, self.ledger), "fmbench-xdist")

    def _start_progress(self) -> None:
        """Live progress on the terminal (or as lines in CI logs); off with ``-q``. It writes
        to a duplicate of stdout taken now, before pytest captures a test's output."""
        try:
            fd = os.dup(sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):  # stdout replaced by a stream without fd
            return
        mode = choose_mode(quiet=self.config.option.verbose < 0, isatty=os.isatty(fd))
        if mode == "off":
            os.close(fd)
            return
        self.progress_fd = fd
        run, settings = self.run, self.setup.settings
        progress_dir = run.results_dir / PROGRESS_DIR

        def sources() -> list[dict[str, Any]]:
            own = run.progress.snapshot()
            return ([own] if own else []) + read_snapshots(progress_dir)

        display = Display(fd_writer(fd), mode, choose_interval(mode), sources,
                          width=lambda: shutil.get_terminal_size().columns)
        run.progress.price_of = lambda experiment: hourly_price(settings, experiment)
        run.progress.on_end = display.clear
        self.progress_display = self.config.stash[PROGRESS_KEY] = display
        display.start()

    def _stop_progress(self) -> None:
        display, self.progress_display = self.progress_display, None
        if display is not None:
            display.stop()
            del self.config.stash[PROGRESS_KEY]
        fd = self.progress_fd
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
            self.progress_fd = None
        with contextlib.suppress(OSError):
            (self.run.results_dir / PROGRESS_DIR).rmdir()  # the workers removed their files

    def close(self) -> None:
        self._stop_progress()
        super().close()

    def session_finish(self, exitstatus: int) -> int:
        """No step may raise out of this hook (pytest would print INTERNALERROR and skip the
        rest); a step that fails is one clear line and fails the run."""
        self.exitstatus = exitstatus
        run = self.run
        self._stop_progress()
        failures = [finish_step("closing the run", run.close)]
        if self.config.option.collectonly:
            run.safety.close(done=True)
            return self.exitstatus  # nothing ran: no report, no verdict
        # Endpoints of crashed workers were never torn down by them: those not already done
        # when the worker went down are done here.
        failures += [finish_step("waiting for orphan cleanups", run.wait_orphan_cleanups),
                     finish_step("orphan cleanup", lambda: cleanup_orphans(run))]
        if run.results_dir.exists():
            # The command line with --fmbench-set values masked (they may be secrets).
            args = redact_args(list(self.config.invocation_params.args))
            failures += [finish_step("run.json", lambda: run.write_metadata({"args": args})),
                         finish_step("the report", self._report)]
        failures += [finish_step("the left-running check", self._fail_if_left_running)]
        failed = [failure for failure in failures if failure]
        for line in failed:
            run.log(f"[fmbench] ERROR {line}")
        if failed:  # a failed step fails the run, also one that collected no test
            self._fail(also_from=(pytest.ExitCode.NO_TESTS_COLLECTED,))
        run.safety.close(done=True)
        return self.exitstatus

    def _fail(self, *, also_from: tuple[int, ...] = ()) -> None:
        """Exit 1, unless the run already fails for another reason."""
        if self.exitstatus in (pytest.ExitCode.OK, *also_from):
            self.exitstatus = pytest.ExitCode.TESTS_FAILED

    def _report(self) -> None:
        """Merge every process's records, write the report, apply the gate."""
        run = self.run
        # Endpoints are down by now: the judges never share the cores with a measurement.
        accuracy = evaluate_accuracy(run.config, run.results_dir, run.run_id,
                                     self.config.rootpath, run.log)
        outcome = finish(run.results_dir, run.config, self.setup.settings,
                         missing_cases=self.ledger.missing, stopped=run.spend.stop_reasons(),
                         left_running=run.left_running())
        if accuracy is not None:
            merge_into_report(outcome, accuracy, run.results_dir)
        self.outcome = outcome
        call_user_hook(run, "pytest_fmbench_session_report",
                       lambda: self.config.hook.pytest_fmbench_session_report(
                           report=outcome, results_dir=run.results_dir, config=self.config))
        if self.setup.upload:
            _upload(run, outcome)
        _write_step_summary(outcome)
        if not outcome.passed:
            self._fail()

    def _fail_if_left_running(self) -> None:
        """Anything still running fails the run (exit 1), also without a report."""
        left = self.run.left_running()
        if not left:
            return
        if self.outcome is None:
            from pytest_fmbench.report.session import mark_left_running

            outcome = SessionReport(passed=False, ran=False)
            mark_left_running(outcome, self.run.results_dir, left)
            self.outcome = outcome
            _write_step_summary(outcome)
        self._fail(also_from=(pytest.ExitCode.NO_TESTS_COLLECTED,))


def call_user_hook(run: BenchmarkRun, name: str, call: Callable[[], object]) -> None:
    """Call a ``pytest_fmbench_*`` hook (``hooks.py``); a user's implementation that raises is
    one warning line: pushing results to a dashboard must never fail or stop the benchmark."""
    try:
        call()
    except Exception as exc:  # noqa: BLE001 - users' code, reported
        run.log(f"[fmbench] WARNING {name} raised {type(exc).__name__}: {exc}")


def _set_aside_previous_run(results_dir: Path) -> None:
    """A reused results dir holds one run: an earlier run's files move to previous/<run id>/."""
    try:
        set_aside_previous_run(results_dir)
    except OSError as exc:
        raise pytest.UsageError(
            f"{results_dir}: cannot move the previous run's files aside: {exc}\n"
            "  fix: make the results directory writable, or pass another "
            "--fmbench-results-dir") from None


def _prepare_comparison(config: pytest.Config, settings: ReportSettings, name: str,
                        results_dir: Path | None) -> None:
    reference = config.getoption("fmbench_compare")
    specs = config.getoption("fmbench_compare_fail")
    if specs and not reference:
        raise pytest.UsageError("--fmbench-compare-fail needs --fmbench-compare=<earlier run>\n"
                                "  fix: add --fmbench-compare=latest (or a run id or path)")
    if not reference:
        return
    base = config.invocation_params.dir
    try:
        settings.thresholds = parse_thresholds(specs)
        settings.baseline = resolve_baseline(reference, invocation_dir=base,
                                             results_root=base / "results" / name,
                                             results_dir=results_dir)
        settings.baseline_metrics = load_baseline(settings.baseline)
    except ConfigError as exc:
        raise pytest.UsageError(exc.render()) from None


def _terminal_logger(config: pytest.Config) -> Callable[[str], None]:
    def log(message: str) -> None:
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is None:
            return
        capture = config.pluginmanager.get_plugin("capturemanager")
        clear_progress(config)
        # Progress lines (deploys take minutes) must reach the terminal during test setup.
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            reporter.ensure_newline()
            reporter.write_line(message)

    return log


def _write_step_summary(outcome: SessionReport) -> None:
    """Never INTERNALERROR at session end: a summary that cannot be written fails the run."""
    failure = finish_step("the CI step summary", lambda: write_step_summary(outcome))
    if failure:
        outcome.lines.append(failure)
        outcome.passed = False


def _upload(run: BenchmarkRun, outcome: SessionReport) -> None:
    """--fmbench-upload: the results dir to the write bucket; a failure fails the run."""
    from pytest_fmbench.endpoints import aws
    from pytest_fmbench.report.fmbench_upload import upload_results

    try:
        boto = aws.session(run.config)
        done = upload_results(run.results_dir, run.config, client=boto.client)
    except FmbenchError as exc:
        outcome.passed = False
        outcome.lines.append(f"upload FAILED: {exc.render()}")
        return
    outcome.lines.append(f"uploaded {len(done.files)} result file(s) to {done.uri}")


class Controller:
    """The controller's case ledger (also under xdist): one line per finished case, which
    selected cases never completed (a crashed worker, a failed deploy), the selection's
    preflight and its cost estimate before the first deploy."""

    def __init__(self, config: pytest.Config, run: BenchmarkRun, cases: list[Case],
                 settings: ReportSettings) -> None:
        self.config = config
        self.run = run
        self.cases = cases
        self.settings = settings
        self.case_ids = {case.id: case.experiment for case in cases}
        self.cases_by_id = {case.id: case for case in cases}
        # Cases skipped on purpose (a payload file no filter produces) are not missing.
        self.skipped_ids = {case.id for case in cases if case.skip_reason}
        self.expected: list[str] = []
        self.completed: set[str] = set()
        # cases.jsonl: the selection and each completed case, for `report`/`merge` later.
        self.case_file = CaseLedger(run.results_dir)
        # With --fmbench-shard: the cases expected without it (set by the role).
        self.expected_all: list[str] | None = None

    def _is_case(self, nodeid: str) -> bool:
        from pytest_fmbench.xdist import experiment_of

        return experiment_of(nodeid, self.case_ids) is not None

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.expected = [item.nodeid for item in session.items if case_of(item) is not None]
        self._check_selected([case.experiment for item in session.items
                              if (case := case_of(item)) is not None])
        if self.expected:
            self._write_plan(self.expected_all)
            self._print_estimate()

    def _write_plan(self, expected_all: list[str] | None) -> None:
        """The ledger's plan line: expected cases (all shards), this run's, the skipped."""
        if self.config.option.collectonly:
            return
        selected = [case_label(nodeid) for nodeid in self.expected]
        skipped = [case_label(nodeid) for nodeid in self.expected
                   if nodeid.rsplit("[", 1)[-1].rstrip("]") in self.skipped_ids]
        source = self.run.config.source_path
        failure = finish_step("the case ledger", lambda: self.case_file.plan(
            expected=expected_all if expected_all is not None else selected, selected=selected,
            skipped=skipped, shard=self.run.shard, run_id=self.run.run_id, host=self.run.host,
            config=str(source) if source else None))
        if failure:
            self.run.log(f"[fmbench] WARNING {failure}")

    def worker_expected(self, expected_all: list[str]) -> None:
        """xdist with --fmbench-shard: a worker's pre-shard selection (once, at its end)."""
        if self.expected_all is None and self.expected:
            self.expected_all = list(expected_all)
            self._write_plan(self.expected_all)

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        if not self.expected:
            from pytest_fmbench.xdist import experiment_of

            self.expected = [nodeid for nodeid in ids if self._is_case(nodeid)]
            self._check_selected([experiment_of(nodeid, self.case_ids) for nodeid in ids])
            if self.expected:
                # Under a shard the expected list comes from a worker at its end.
                self._write_plan(None)
            self._print_estimate()

    def _check_selected(self, experiments: list[str | None]) -> None:
        """Preflight and prices of the selected experiments, once, before the first deploy."""
        if self.config.option.collectonly:
            return
        try:
            self.run.pricing_from_read_bucket()
            check_selected(self.run.config, self.settings,
                           selected_experiments(self.run.config, experiments))
        except ConfigError as exc:
            raise pytest.UsageError(exc.render()) from None
        self.run.price_spend(self.settings.prices)

    def _print_estimate(self) -> None:
        """Before the first deploy (also under --collect-only): what the selection may cost."""
        run = self.run
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is None:
            return
        selected = {nodeid.rsplit("[", 1)[-1].rstrip("]") for nodeid in self.expected}
        cases = [case for case in self.cases if case.id in selected]
        # The checked prices once the selection was checked; under --collect-only (no
        # checks, no network) the pricing tables alone.
        prices = (offline_prices(run.config) if self.config.option.collectonly
                  else self.settings.prices)
        estimates = estimate(run.config, cases, prices)
        if run.guard is None and all(e.price is None for e in estimates):
            return  # nothing priced (local or bring-your-own endpoints): nothing to say
        lines = estimate_lines(estimates, run.guard.limit if run.guard else None)
        reporter.ensure_newline()
        for line in lines:
            reporter.write_line(line)

    @property
    def missing(self) -> list[str]:
        return [nodeid.split("::", 1)[-1] for nodeid in self.expected
                if nodeid not in self.completed
                and nodeid.rsplit("[", 1)[-1].rstrip("]") not in self.skipped_ids]

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        shipped = getattr(report, LOG_ATTRIBUTE, None)
        if shipped:  # a worker's lines, printed and logged here
            worker = getattr(getattr(report, "node", None), "gateway", None)
            prefix = f"[{worker.id}] " if worker is not None else ""
            for line in shipped:
                self.run.log(prefix + str(line))
        if report.when != "call" or report.skipped:  # a skipped case measured nothing
            return
        self.completed.add(report.nodeid)
        if self._is_case(report.nodeid):
            failure = finish_step("the case ledger", lambda: self.case_file.done(
                case_label(report.nodeid)))
            if failure:
                self.run.log(f"[fmbench] WARNING {failure}")
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        value = getattr(report, REPORT_ATTRIBUTE, None)
        if isinstance(value, dict) and reporter is not None:
            clear_progress(self.config)
            reporter.ensure_newline()
            reporter.write_line(format_summary(value["case"], value["summary"]))
        if isinstance(value, dict) and (case := self.cases_by_id.get(str(value["case"]))):
            summary = value["summary"]
            call_user_hook(self.run, "pytest_fmbench_case_finished",
                           lambda: self.config.hook.pytest_fmbench_case_finished(
                               case=case, summary=summary, config=self.config))


class XdistHooks:
    """The controller's side of xdist; registered only when pytest-xdist is present."""

    def __init__(self, run: BenchmarkRun, ledger: Controller | None = None) -> None:
        self.run = run
        self.ledger = ledger

    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput["fmbench_run_id"] = self.run.run_id
        node.workerinput["fmbench_results_dir"] = str(self.run.results_dir)
        node.workerinput["fmbench_payload_dir"] = str(self.run.payload_dir)
        # Workers journal to the controller's reaper (started here, before any deploy).
        node.workerinput.update(self.run.safety.workerinput())

    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        """A worker went down: print its last lines (its session-end teardowns; absent if
        it crashed), and delete a crashed worker's endpoints now, not at session end."""
        worker = str(getattr(node, "workerinput", {}).get("workerid") or node.gateway.id)
        output = getattr(node, "workeroutput", {})
        for line in output.get(LOG_ATTRIBUTE) or []:
            self.run.log(f"[{worker}] {line}")
        expected = output.get(EXPECTED_OUTPUT)
        if expected is not None and self.ledger is not None:
            self.ledger.worker_expected(list(expected))
        left = output.get(LEFT_RUNNING_OUTPUT)
        if left:
            self.run.workers_left.extend(left)
        if error:
            self.run.start_orphan_cleanup(worker)


def choose_role(config: pytest.Config) -> type[Role]:
    """Once per process: an xdist worker has ``workerinput``; any other process controls."""
    return WorkerRole if hasattr(config, "workerinput") else ControllerRole
