"""pytest hooks and fixtures of pytest-fmbench: thin translations onto ``BenchmarkRun``."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_fmbench.cases import Case, all_markers, expand_cases
from pytest_fmbench.config.loader import load_config
from pytest_fmbench.config.model import BUILTIN_BACKENDS, Config
from pytest_fmbench.data.fmbench_read import use_read_dir_pricing
from pytest_fmbench.endpoints.base import Endpoint
from pytest_fmbench.endpoints.lifecycle import DeployFailed
from pytest_fmbench.endpoints.registry import backend_names
from pytest_fmbench.errors import ConfigError, FmbenchError
from pytest_fmbench.load.summary import format_summary
from pytest_fmbench.redaction import KNOWN as KNOWN_SECRETS
from pytest_fmbench.redaction import redact_args, register_config_secrets
from pytest_fmbench.report.ci import junit_properties, write_step_summary
from pytest_fmbench.report.history import load_baseline, parse_thresholds, resolve_baseline
from pytest_fmbench.report.session import (
    ReportSettings,
    SessionReport,
    case_failure_message,
    case_violations,
    finish,
    prepare,
)
from pytest_fmbench.results_dir import set_aside_previous_run
from pytest_fmbench.run import (
    BenchmarkRun,
    CaseResult,
    SpendLimitReached,
    cleanup_orphans,
    new_run_id,
)
from pytest_fmbench.runlog import RunLog
from pytest_fmbench.safety.net import DISABLE_ENV, SafetyNet
from pytest_fmbench.safety.spend import estimate, estimate_lines, offline_prices
from pytest_fmbench.selection import check_selected, price_selected, selected_experiments
from pytest_fmbench.timeouts import case_timeout_s, parse_case_timeout

RUN_KEY = pytest.StashKey[BenchmarkRun]()
CASES_KEY = pytest.StashKey[list[Case]]()
SIGTERM_KEY = pytest.StashKey[Any]()
REPORT_SETTINGS_KEY = pytest.StashKey[ReportSettings]()
UPLOAD_KEY = pytest.StashKey[bool]()
SESSION_REPORT_KEY = pytest.StashKey[SessionReport]()
CASE_TIMEOUTS_KEY = pytest.StashKey[dict[str, float | None]]()

NO_CONFIG = (
    "no pytest-fmbench config given: pass --fmbench-config=PATH "
    "(or set FMBENCH_CONFIG, or the ini option fmbench_config), "
    "e.g. pytest benchmarks/ --fmbench-config=configs/quickstart.yml"
)
# The case summary rides on the call report (xdist ships report attributes to the controller).
REPORT_ATTRIBUTE = "fmbench"
CASE_SUMMARY_KEY = pytest.StashKey[dict[str, Any]]()
CONTROLLER = "fmbench-controller"
# A worker's log lines ride on its test reports and its workeroutput to the controller.
RUN_LOG_KEY = pytest.StashKey[RunLog]()
LOG_ATTRIBUTE = "fmbench_log"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("fmbench", "pytest-fmbench: foundation-model benchmarks")
    group.addoption("--fmbench-config", dest="fmbench_config", metavar="PATH", default=None,
                    help="benchmark config file (FMBench-compatible YAML). "
                    "Env: FMBENCH_CONFIG; ini: fmbench_config.")
    group.addoption("--fmbench-results-dir", dest="fmbench_results_dir", metavar="DIR",
                    default=None, help="where records and the report go "
                    "(default: results/<general.name>/<run id>). Env: FMBENCH_RESULTS_DIR.")
    group.addoption("--fmbench-set", dest="fmbench_set", action="append", default=[],
                    metavar="KEY=VALUE", help="fill a {KEY} placeholder of the config "
                    "(repeatable), like FMBench's -A.")
    group.addoption("--fmbench-budget", dest="fmbench_budget", action="append", default=[],
                    metavar="METRIC=VALUE", help="a budget on any metric (repeatable), winning over "
                    "the config's, e.g. --fmbench-budget latency_p95=2.0")
    group.addoption("--fmbench-gate", dest="fmbench_gate", metavar="MODE", default=None,
                    choices=["best", "every"], help="best (default): fail unless some combination "
                    "of the dataset of interest meets every budget; every: each case fails its own "
                    "test when it violates a budget. Env: FMBENCH_GATE; ini: fmbench_gate.")
    group.addoption("--fmbench-compare", dest="fmbench_compare", metavar="RUN", default=None,
                    help="compare with an earlier run: its benchmark.json, its results dir, its "
                    "run id under results/<name>/, or 'latest'.")
    group.addoption("--fmbench-compare-fail", dest="fmbench_compare_fail", action="append",
                    default=[], metavar="METRIC:+N%", help="fail on a regression against "
                    "--fmbench-compare, e.g. latency_p95:+10%,tpm:-10% (repeatable).")
    group.addoption("--fmbench-case-timeout", dest="fmbench_case_timeout", metavar="SECONDS",
                    default=None, help="pytest-timeout's limit for each benchmark case, deploy "
                    "and teardown included: 'auto' (default: derived from the config's deploy, "
                    "request and load bounds), 'none', or seconds. A suite-wide --timeout or "
                    "ini timeout never applies to cases. Env: FMBENCH_CASE_TIMEOUT; ini: "
                    "fmbench_case_timeout.")
    group.addoption("--fmbench-max-cost", dest="fmbench_max_cost", metavar="USD", default=None,
                    help="stop starting deploys and cases, and tear down, once the money spent "
                    "plus what the next one commits would exceed USD. Env: FMBENCH_MAX_COST.")
    parser.addini("fmbench_case_timeout", "timeout of each benchmark case: auto, none or seconds")
    group.addoption("--fmbench-read-dir", dest="fmbench_read_dir", metavar="DIR", default=None,
                    help="FMBench's local read layout (source_data/, prompt_template/, "
                    "<tokenizer_prefix>/, configs/) to read s3_read_data from instead of the "
                    "read bucket. Env: FMBENCH_READ_DIR; ini: fmbench_read_dir.")
    group.addoption("--fmbench-upload", dest="fmbench_upload", action="store_true", default=False,
                    help="after the report, upload the results dir to the write bucket "
                    "(aws.bucket) in FMBench's layout. Env: FMBENCH_UPLOAD=1; ini: fmbench_upload.")
    parser.addini("fmbench_config", "benchmark config file (FMBench-compatible YAML)")
    parser.addini("fmbench_upload", "upload results to the write bucket (FMBench's layout)",
                  type="bool", default=False)
    parser.addini("fmbench_read_dir", "FMBench read dir (its local layout)")
    group.addoption("--fmbench-teardown-timeout", dest="fmbench_teardown_timeout",
                    metavar="SECONDS", default=None, help="how long a failing teardown is "
                    "retried before the run fails naming what is left running (default 600). "
                    "Env: FMBENCH_TEARDOWN_TIMEOUT; ini: fmbench_teardown_timeout.")
    parser.addini("fmbench_teardown_timeout", "seconds a failing teardown is retried")
    parser.addini("fmbench_gate", "budget gate mode: best or every")
    parser.addini("fmbench_results_dir", "directory for records and the report")


def _setting(config: pytest.Config, name: str, env: str) -> str | None:
    """Command line, then environment, then ini (like pytest-timeout)."""
    value = config.getoption(name)
    if value:
        return str(value)
    if os.environ.get(env):
        return os.environ[env]
    ini = config.getini(name)
    return str(ini) if ini else None


def _read_dir(config: pytest.Config) -> Path | None:
    raw = _setting(config, "fmbench_read_dir", "FMBENCH_READ_DIR")
    return (config.invocation_params.dir / raw).resolve() if raw else None


def _upload_wanted(config: pytest.Config) -> bool:
    if config.getoption("fmbench_upload"):
        return True
    if os.environ.get("FMBENCH_UPLOAD"):
        return os.environ["FMBENCH_UPLOAD"].strip().lower() in ("1", "true", "yes", "on")
    return bool(config.getini("fmbench_upload"))


def _placeholder_values(pairs: list[str]) -> dict[str, str]:
    values = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise pytest.UsageError(
                f"--fmbench-set expects KEY=VALUE, got '{pair}'\n  fix: e.g. --fmbench-set region=us-east-1"
            )
        values[key.strip()] = value
    return values


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "fmbench: a pytest-fmbench benchmark case")
    for backend in BUILTIN_BACKENDS:
        config.addinivalue_line("markers", f"{backend}: cases served by the {backend} backend")
    raw = _setting(config, "fmbench_config", "FMBENCH_CONFIG")
    if not raw:
        return
    base = config.invocation_params.dir
    path = (base / raw).resolve()
    try:
        bench_config = load_config(path, _placeholder_values(config.getoption("fmbench_set")),
                                   known_backends=backend_names())
        # First, so nothing written from here on (logs, events, report) holds a secret.
        register_config_secrets(bench_config.model_dump(mode="json", by_alias=True),
                                placeholder_values=_placeholder_values(config.getoption("fmbench_set")))
        cases = expand_cases(bench_config)
        read_dir = _read_dir(config)
        use_read_dir_pricing(bench_config, read_dir)
        # Budgets only: preflight and prices wait for the selection (selection.py).
        report_settings = prepare(bench_config, config.getoption("fmbench_budget"),
                                  _setting(config, "fmbench_gate", "FMBENCH_GATE"), experiments=[])
        config.stash[UPLOAD_KEY] = _upload_wanted(config)
        if config.stash[UPLOAD_KEY]:
            from pytest_fmbench.report.fmbench_upload import check_upload

            check_upload(bench_config)
    except ConfigError as exc:
        raise pytest.UsageError(exc.render()) from None
    except ValueError as exc:
        raise pytest.UsageError(f"{path}: {exc}") from None
    for warning in bench_config.warnings:
        config.issue_config_time_warning(pytest.PytestConfigWarning(f"{path}: {warning}"), stacklevel=2)
    for marker in all_markers(bench_config):
        config.addinivalue_line("markers", f"{marker}: pytest-fmbench experiment marker")

    workerinput: dict[str, Any] = getattr(config, "workerinput", {})
    run_id = workerinput.get("fmbench_run_id") or new_run_id()
    results = workerinput.get("fmbench_results_dir") or _setting(
        config, "fmbench_results_dir", "FMBENCH_RESULTS_DIR")
    if results:
        results_dir = (base / results).resolve()
        payload_dir = results_dir / "payloads"
    else:
        # results/<name>/<run id>/, with payload files shared by the runs of <name>.
        results_dir = (base / "results" / bench_config.general.name / run_id).resolve()
        payload_dir = results_dir.parent / "payloads"
    if not workerinput:
        if results:
            _set_aside_previous_run(results_dir)
        _prepare_comparison(config, report_settings, bench_config.general.name,
                            results_dir if results else None)
    payload_dir = Path(workerinput.get("fmbench_payload_dir") or payload_dir)
    # Workers have no terminal: their lines go to logs/ and are shipped to the controller.
    run_log = RunLog(results_dir, workerinput.get("workerid", ""),
                     echo=None if workerinput else _logger(config))
    config.stash[RUN_LOG_KEY] = run_log
    run = BenchmarkRun(bench_config, run_id=run_id, results_dir=results_dir,
                       payload_dir=payload_dir, worker=workerinput.get("workerid", ""),
                       log=run_log, read_dir=read_dir,
                       safety=_safety_net(run_id, results_dir, workerinput, run_log),
                       teardown_deadline_s=_teardown_timeout(config))
    config.stash[RUN_KEY] = run
    config.stash[CASES_KEY] = cases
    config.stash[CASE_TIMEOUTS_KEY] = _case_timeouts(config, bench_config)
    config.stash[REPORT_SETTINGS_KEY] = report_settings
    limit = _max_cost(config)
    if limit is not None:
        run.limit_spend(limit, offline_prices(bench_config))
    if not hasattr(config, "workerinput"):
        config.pluginmanager.register(Controller(config, cases), CONTROLLER)
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(XdistHooks(run), "fmbench-xdist")
    _install_sigterm(config)


def _max_cost(config: pytest.Config) -> float | None:
    raw = config.getoption("fmbench_max_cost") or os.environ.get("FMBENCH_MAX_COST")
    if not raw:
        return None
    try:
        limit = float(raw)
    except ValueError:
        limit = -1.0
    if not limit > 0 or limit == float("inf"):
        raise pytest.UsageError(f"--fmbench-max-cost: expected a positive amount of USD, got "
                                f"'{raw}'\n  fix: e.g. --fmbench-max-cost=50")
    return limit


def _case_timeouts(config: pytest.Config, bench_config: Config) -> dict[str, float | None]:
    """Per experiment, the ``timeout`` marker value its cases carry (pytest-timeout only)."""
    if not config.pluginmanager.hasplugin("timeout"):
        return {}
    raw = _setting(config, "fmbench_case_timeout", "FMBENCH_CASE_TIMEOUT")
    try:
        chosen = parse_case_timeout(raw)
    except ValueError as exc:
        raise pytest.UsageError(f"--fmbench-case-timeout: {exc}\n  fix: e.g. "
                                "--fmbench-case-timeout=auto, =none or =7200") from None
    if isinstance(chosen, str):  # "auto"
        return {e.name: case_timeout_s(bench_config, e) for e in bench_config.experiments}
    return {e.name: chosen for e in bench_config.experiments}


def _teardown_timeout(config: pytest.Config) -> float:
    raw = _setting(config, "fmbench_teardown_timeout", "FMBENCH_TEARDOWN_TIMEOUT")
    try:
        value = float(raw) if raw else 600.0
    except ValueError:
        value = -1.0
    if value < 0:
        raise pytest.UsageError(f"--fmbench-teardown-timeout expects seconds, got '{raw}'\n"
                                "  fix: e.g. --fmbench-teardown-timeout=600")
    return value


def _safety_net(run_id: str, results_dir: Path, workerinput: dict[str, Any],
                log: Callable[[str], None]) -> SafetyNet:
    """The journal and reaper connection of this process (a worker gets the controller's)."""
    address, token = SafetyNet.address_from(workerinput)
    return SafetyNet(run_id, results_dir, worker=workerinput.get("workerid", ""),
                     reaper_address=address, reaper_token=token,
                     enabled=os.environ.get(DISABLE_ENV) != "1", log=log)


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


def _logger(config: pytest.Config) -> Callable[[str], None]:
    def log(message: str) -> None:
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is None or hasattr(config, "workerinput"):
            return
        capture = config.pluginmanager.get_plugin("capturemanager")
        # Progress lines (deploys take minutes) must reach the terminal during test setup.
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            reporter.ensure_newline()
            reporter.write_line(message)

    return log


def _install_sigterm(config: pytest.Config) -> None:
    """SIGTERM takes the Ctrl-C path, so endpoints are torn down (pytest ignores it)."""
    try:
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return

        def on_sigterm(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt("SIGTERM")

        config.stash[SIGTERM_KEY] = signal.signal(signal.SIGTERM, on_sigterm)
    except ValueError:  # not the main thread
        pass


class XdistHooks:
    """Registered only when pytest-xdist is present."""

    def __init__(self, run: BenchmarkRun) -> None:
        self.run = run

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
        left = output.get("fmbench_left_running")
        if left:
            self.run.workers_left.extend(left)
        if error:
            self.run.start_orphan_cleanup(worker)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Under ``-n``, all cases of one experiment go to one worker (one deploy)."""
    cases = config.stash.get(CASES_KEY, None)
    if not cases or config.getoption("dist", "load") == "each":
        return None
    from pytest_fmbench.xdist import ExperimentScheduling

    return ExperimentScheduling(config, log, case_experiments={c.id: c.experiment for c in cases})


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """``-n auto``: one worker per experiment, capped by the CPUs.

    Runs before ``pytest_configure``, so the config file is read here on its own.
    """
    raw = _setting(config, "fmbench_config", "FMBENCH_CONFIG")
    if not raw:
        return None
    from pytest_fmbench.xdist import auto_workers

    try:
        bench_config = load_config((config.invocation_params.dir / raw).resolve(),
                                   _placeholder_values(config.getoption("fmbench_set")),
                                   known_backends=backend_names())
    except (ConfigError, pytest.UsageError):
        return None  # pytest_configure reports the problem properly
    return auto_workers(len(bench_config.experiments))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "fmbench_case" not in metafunc.fixturenames:
        return
    cases = metafunc.config.stash.get(CASES_KEY, None)
    if cases is None:
        metafunc.parametrize("fmbench_case", [
            pytest.param(None, id="no-config", marks=pytest.mark.skip(reason=NO_CONFIG))])
        return
    timeouts = metafunc.config.stash.get(CASE_TIMEOUTS_KEY, {})
    metafunc.parametrize("fmbench_case", [
        pytest.param(case, id=case.id, marks=[
            pytest.mark.fmbench, *(getattr(pytest.mark, m) for m in case.markers),
            *_timeout_mark(timeouts, case),
            *([pytest.mark.skip(reason=case.skip_reason)] if case.skip_reason else [])])
        for case in cases
    ])


def _timeout_mark(timeouts: dict[str, float | None], case: Case) -> list[pytest.MarkDecorator]:
    """pytest-timeout reads its marker before ``--timeout`` and the ini; 0 means no timeout."""
    if case.experiment not in timeouts:
        return []
    return [pytest.mark.timeout(timeouts[case.experiment] or 0)]


def _case_of(item: pytest.Item | None) -> Case | None:
    callspec = getattr(item, "callspec", None)
    case = callspec.params.get("fmbench_case") if callspec is not None else None
    return case if isinstance(case, Case) else None


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Cases of one experiment run contiguously (one deploy), in config order."""
    positions = [i for i, item in enumerate(items) if _case_of(item) is not None]
    ordered = sorted((items[i] for i in positions), key=lambda it: _case_of(it).experiment_index)  # type: ignore[union-attr]
    for position, item in zip(positions, ordered):
        items[position] = item


def pytest_collection_finish(session: pytest.Session) -> None:
    """xdist workers price their selected experiments (the controller checked them)."""
    if not hasattr(session.config, "workerinput") or session.config.option.collectonly:
        return
    run = session.config.stash.get(RUN_KEY, None)
    settings = session.config.stash.get(REPORT_SETTINGS_KEY, None)
    if run is not None and settings is not None:
        names = [case.experiment for item in session.items if (case := _case_of(item))]
        price_selected(run.config, settings, selected_experiments(run.config, names))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    yield
    case = _case_of(item)
    run = item.config.stash.get(RUN_KEY, None)
    if case is None or run is None:
        return
    following = _case_of(nextitem)
    if following is None or following.experiment != case.experiment:
        run.release(case.experiment)


def pytest_sessionfinish(session: pytest.Session) -> None:
    run = session.config.stash.get(RUN_KEY, None)
    if run is None:
        return
    if hasattr(session.config, "workerinput"):
        failure = _finish_step("closing the run", run.close)
        if failure:
            run.log(f"[fmbench] ERROR {failure}")
        workeroutput = session.config.workeroutput  # type: ignore[attr-defined]
        workeroutput["fmbench_left_running"] = run.left_running()
        run_log = session.config.stash.get(RUN_LOG_KEY, None)
        if run_log is not None:  # its session-end lines (teardowns) go to the controller
            workeroutput[LOG_ATTRIBUTE] = run_log.take()
        run.safety.close(done=True)
        return
    # Controller: no step may raise out of this hook (pytest would print INTERNALERROR and
    # skip the rest); a step that fails is one clear line and fails the run.
    failures = [_finish_step("closing the run", run.close)]
    if session.config.option.collectonly:
        run.safety.close(done=True)
        return  # nothing ran: no report, no verdict
    # Endpoints of crashed workers were never torn down by them: those not already done
    # when the worker went down are done here.
    failures += [_finish_step("waiting for orphan cleanups", run.wait_orphan_cleanups),
                 _finish_step("orphan cleanup", lambda: cleanup_orphans(run))]
    if run.results_dir.exists():
        # The command line with --fmbench-set values masked (they may be secrets).
        args = redact_args(list(session.config.invocation_params.args))
        failures += [_finish_step("run.json", lambda: run.write_metadata({"args": args})),
                     _finish_step("the report", lambda: _finish_report(session, run))]
    failures += [_finish_step("the left-running check", lambda: _fail_if_left_running(session, run))]
    failed = [failure for failure in failures if failure]
    for line in failed:
        run.log(f"[fmbench] ERROR {line}")
    if failed and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    run.safety.close(done=True)


def _finish_step(label: str, step: Callable[[], object]) -> str:
    """Run one session-finish step; '' when it worked, else the line that says why not."""
    try:
        step()
    except Exception as exc:  # noqa: BLE001 - reported, and the run fails
        return f"{label} failed: {type(exc).__name__}: {exc}"
    return ""


def _fail_if_left_running(session: pytest.Session, run: BenchmarkRun) -> None:
    """Anything still running fails the run (exit 1), also without a report."""
    left = run.left_running()
    if not left:
        return
    if session.config.stash.get(SESSION_REPORT_KEY, None) is None:
        from pytest_fmbench.report.session import mark_left_running

        outcome = SessionReport(passed=False, ran=False)
        mark_left_running(outcome, run.results_dir, left)
        session.config.stash[SESSION_REPORT_KEY] = outcome
        _write_step_summary(outcome)
    if session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _write_step_summary(outcome: SessionReport) -> None:
    """Never INTERNALERROR at session end: a summary that cannot be written fails the run."""
    failure = _finish_step("the CI step summary", lambda: write_step_summary(outcome))
    if failure:
        outcome.lines.append(failure)
        outcome.passed = False


def _finish_report(session: pytest.Session, run: BenchmarkRun) -> None:
    """Controller only: merge every process's records, write the report, apply the gate."""
    settings = session.config.stash.get(REPORT_SETTINGS_KEY, None)
    if settings is None:
        return
    controller = session.config.pluginmanager.get_plugin(CONTROLLER)
    missing = controller.missing if controller is not None else []
    outcome = finish(run.results_dir, run.config, settings, missing_cases=missing,
                     stopped=run.spend.stop_reasons(), left_running=run.left_running())
    session.config.stash[SESSION_REPORT_KEY] = outcome
    if session.config.stash.get(UPLOAD_KEY, False):
        _upload(run, outcome)
    _write_step_summary(outcome)
    if not outcome.passed and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


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


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    outcome = config.stash.get(SESSION_REPORT_KEY, None)
    if (outcome is None or not outcome.ran and not outcome.error and outcome.passed
            and not outcome.left_running):
        return
    try:
        terminalreporter.write_sep("=", "pytest-fmbench", red=not outcome.passed, green=outcome.passed)
        for line in outcome.lines:
            terminalreporter.write_line(line)
    except Exception:  # noqa: BLE001 - never raise from the summary
        pass


def pytest_unconfigure(config: pytest.Config) -> None:
    run = config.stash.get(RUN_KEY, None)
    if run is not None:
        failure = _finish_step("closing the run", run.close)  # never raise out of a hook
        if failure:
            run.log(f"[fmbench] ERROR {failure}")
        run.safety.close(done=True)
    previous = config.stash.get(SIGTERM_KEY, None)
    if previous is not None:
        signal.signal(signal.SIGTERM, previous)
    KNOWN_SECRETS.clear()  # this run's; a later run in the same process has its own


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    summary = item.stash.get(CASE_SUMMARY_KEY, None)
    if call.when == "call" and summary is not None:
        setattr(report, REPORT_ATTRIBUTE, summary)
    run_log = item.config.stash.get(RUN_LOG_KEY, None)
    if run_log is not None and hasattr(item.config, "workerinput"):
        lines = run_log.take()  # deploy progress, warnings, teardown failures of this phase
        if lines:
            setattr(report, LOG_ATTRIBUTE, lines)
    return report


class Controller:
    """Controller-side hooks (also under xdist): one line per finished case, and which
    selected cases never completed (a crashed worker, a failed deploy)."""

    def __init__(self, config: pytest.Config, cases: list[Case]) -> None:
        self.config = config
        self.case_ids = {case.id: case.experiment for case in cases}
        # Cases skipped on purpose (a payload file no filter produces) are not missing.
        self.skipped_ids = {case.id for case in cases if case.skip_reason}
        self.expected: list[str] = []
        self.completed: set[str] = set()

    def _is_case(self, nodeid: str) -> bool:
        from pytest_fmbench.xdist import experiment_of

        return experiment_of(nodeid, self.case_ids) is not None

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.expected = [item.nodeid for item in session.items if _case_of(item) is not None]
        self._check_selected([case.experiment for item in session.items
                              if (case := _case_of(item)) is not None])
        if self.expected:
            self._print_estimate()

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        if not self.expected:
            from pytest_fmbench.xdist import experiment_of

            self.expected = [nodeid for nodeid in ids if self._is_case(nodeid)]
            self._check_selected([experiment_of(nodeid, self.case_ids) for nodeid in ids])
            self._print_estimate()

    def _check_selected(self, experiments: list[str | None]) -> None:
        """Preflight and prices of the selected experiments, once, before the first deploy."""
        run = self.config.stash.get(RUN_KEY, None)
        settings = self.config.stash.get(REPORT_SETTINGS_KEY, None)
        if self.config.option.collectonly or run is None or settings is None:
            return
        try:
            check_selected(run.config, settings, selected_experiments(run.config, experiments))
        except ConfigError as exc:
            raise pytest.UsageError(exc.render()) from None

    def _print_estimate(self) -> None:
        """Before the first deploy (also under --collect-only): what the selection may cost."""
        run = self.config.stash.get(RUN_KEY, None)
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if run is None or reporter is None:
            return
        selected = {nodeid.rsplit("[", 1)[-1].rstrip("]") for nodeid in self.expected}
        cases = [case for case in self.config.stash[CASES_KEY] if case.id in selected]
        estimates = estimate(run.config, cases, offline_prices(run.config))
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
        run = self.config.stash.get(RUN_KEY, None)
        if shipped and run is not None:  # a worker's lines, printed and logged here
            worker = getattr(getattr(report, "node", None), "gateway", None)
            prefix = f"[{worker.id}] " if worker is not None else ""
            for line in shipped:
                run.log(prefix + str(line))
        if report.when != "call" or report.skipped:  # a skipped case measured nothing
            return
        self.completed.add(report.nodeid)
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        value = getattr(report, REPORT_ATTRIBUTE, None)
        if isinstance(value, dict) and reporter is not None:
            reporter.ensure_newline()
            reporter.write_line(format_summary(value["case"], value["summary"]))


# -- fixtures ---------------------------------------------------------------------------

def _run(request: pytest.FixtureRequest) -> BenchmarkRun:
    run = request.config.stash.get(RUN_KEY, None)
    if run is None:
        pytest.skip(NO_CONFIG)
    return run


def _usage_exit(exc: ConfigError) -> None:
    pytest.exit(exc.render(), returncode=pytest.ExitCode.USAGE_ERROR)


@pytest.fixture
def fmbench_run(request: pytest.FixtureRequest) -> BenchmarkRun:
    """The benchmark run of this process (config, results dir, records)."""
    return _run(request)


@pytest.fixture
def fmbench_endpoint(fmbench_case: Case, request: pytest.FixtureRequest) -> Endpoint:
    """The deployed endpoint of this case's experiment (deployed once, before its first case)."""
    run = _run(request)
    try:
        run.payload_paths()  # inputs first: missing data must not cost a deployment
        return run.endpoint_for(fmbench_case)
    except SpendLimitReached as exc:
        pytest.skip(str(exc))
    except DeployFailed as exc:
        failure = str(exc)
    except ConfigError as exc:
        _usage_exit(exc)
        raise
    # Outside the except block, so the report shows the one message, not a chain.
    pytest.fail(failure, pytrace=False)


@pytest.fixture
def fmbench_load(fmbench_case: Case, fmbench_endpoint: Endpoint,
                 request: pytest.FixtureRequest) -> Callable[[], CaseResult]:
    """Call it to fire this case's load at the endpoint; returns the measured ``CaseResult``."""
    run = _run(request)

    def load() -> CaseResult:
        try:
            result = run.run_case(fmbench_case, fmbench_endpoint)
        except SpendLimitReached as exc:
            pytest.skip(str(exc))
        except ConfigError as exc:
            _usage_exit(exc)
            raise
        except FmbenchError as exc:
            failure = exc.render()
        else:
            request.node.stash[CASE_SUMMARY_KEY] = {"case": fmbench_case.id, "summary": result.summary}
            # Flat properties land in --junitxml as <property name="fmbench.tpm" .../>.
            request.node.user_properties.extend(junit_properties(result.summary))
            settings = request.config.stash.get(REPORT_SETTINGS_KEY, None)
            if settings is None or settings.mode != "every":
                return result
            violations = case_violations(settings, run.config, result.records)
            if not violations:
                return result
            failure = case_failure_message(violations)
        pytest.fail(failure, pytrace=False)

    return load
