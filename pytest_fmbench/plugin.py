"""pytest hooks and fixtures of pytest-fmbench: thin translations onto ``BenchmarkRun``.

What differs between a plain run / the xdist controller and an xdist worker is in
``pytest_fmbench.roles``: ``pytest_configure`` picks the role once and the hooks delegate.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_fmbench.cases import Case, all_markers, expand_cases
from pytest_fmbench.config.loader import load_config
from pytest_fmbench.config.model import BUILTIN_BACKENDS, Config
from pytest_fmbench.data.fmbench_read import pricing_may_be_in_bucket, use_read_dir_pricing
from pytest_fmbench.endpoints.base import Endpoint
from pytest_fmbench.endpoints.lifecycle import DeployFailed
from pytest_fmbench.endpoints.registry import backend_names
from pytest_fmbench.errors import ConfigError, FmbenchError
from pytest_fmbench.redaction import KNOWN as KNOWN_SECRETS
from pytest_fmbench.redaction import register_config_secrets
from pytest_fmbench.report.ci import junit_properties
from pytest_fmbench.report.session import (
    ReportSettings,
    case_failure_message,
    case_violations,
    prepare,
)

# CONTROLLER, LOG_ATTRIBUTE, Controller and the roles are importable from here as before
# roles.py existed (tests, users' conftest files).
from pytest_fmbench.roles import (
    CONTROLLER,  # noqa: F401
    LOG_ATTRIBUTE,  # noqa: F401
    REPORT_ATTRIBUTE,
    Controller,  # noqa: F401
    ControllerRole,  # noqa: F401
    Role,
    RunSetup,
    WorkerRole,  # noqa: F401
    XdistHooks,  # noqa: F401
    case_of,
    choose_role,
    setting,
)
from pytest_fmbench.run import BenchmarkRun, CaseResult, SpendLimitReached
from pytest_fmbench.shard import Shard, parse_shard
from pytest_fmbench.timeouts import case_timeout_s, parse_case_timeout

RUN_KEY = pytest.StashKey[BenchmarkRun]()
CASES_KEY = pytest.StashKey[list[Case]]()
SIGTERM_KEY = pytest.StashKey[Any]()
REPORT_SETTINGS_KEY = pytest.StashKey[ReportSettings]()
ROLE_KEY = pytest.StashKey[Role]()
CASE_TIMEOUTS_KEY = pytest.StashKey[dict[str, float | None]]()

NO_CONFIG = (
    "no pytest-fmbench config given: pass --fmbench-config=PATH "
    "(or set FMBENCH_CONFIG, or the ini option fmbench_config), "
    "e.g. pytest benchmarks/ --fmbench-config=configs/quickstart.yml"
)
CASE_SUMMARY_KEY = pytest.StashKey[dict[str, Any]]()
# --fmbench-rescore: (config, saved run dir) to score again instead of benchmarking; the lines.
RESCORE_KEY = pytest.StashKey[tuple[Any, Path]]()
RESCORE_LINES_KEY = pytest.StashKey[list[str]]()


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    """pytest_fmbench_* hooks for users' conftest files and plugins (``hooks.py``)."""
    from pytest_fmbench import hooks

    pluginmanager.add_hookspecs(hooks)


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
    group.addoption("--fmbench-shard", dest="fmbench_shard", metavar="K/N", default=None,
                    help="run shard K of N: a deterministic share of whole experiments (each "
                    "endpoint deployed once across the shards); merge the shards' results dirs "
                    "with 'python -m pytest_fmbench merge'. Env: FMBENCH_SHARD; ini: fmbench_shard.")
    parser.addini("fmbench_shard", "run shard K/N of the experiments")
    group.addoption("--fmbench-rescore", dest="fmbench_rescore", metavar="DIR", default=None,
                    help="score and judge the answers saved in an earlier run's results dir "
                    "again (no endpoint, no load; judge calls come from the cache when "
                    "unchanged) and apply the accuracy budgets.")


def _read_dir(config: pytest.Config) -> Path | None:
    raw = setting(config, "fmbench_read_dir", "FMBENCH_READ_DIR")
    return (config.invocation_params.dir / raw).resolve() if raw else None


def _upload_wanted(config: pytest.Config) -> bool:
    if config.getoption("fmbench_upload"):
        return True
    if os.environ.get("FMBENCH_UPLOAD"):
        return os.environ["FMBENCH_UPLOAD"].strip().lower() in ("1", "true", "yes", "on")
    return bool(config.getini("fmbench_upload"))


def _check_xdist(config: pytest.Config) -> None:
    """Under ``-n``/``--tx``, only the pytest-xdist major version the experiment scheduler is
    tested on, and only workers on this host (``xdist.remote_gateways``)."""
    if not config.pluginmanager.hasplugin("xdist"):
        return
    specs = list(config.getoption("tx", None) or [])
    if not config.getoption("numprocesses", None) and not specs:
        return
    from importlib.metadata import version

    from pytest_fmbench.xdist import REMOTE_WORKERS, remote_gateways, untested_xdist

    problem = untested_xdist(version("pytest-xdist"))
    if problem:
        raise pytest.UsageError(problem)
    remote = remote_gateways(specs)
    if remote:
        raise pytest.UsageError(REMOTE_WORKERS.format(specs=", ".join(remote)))


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
    config.addinivalue_line("markers", "fmbench_accuracy: an experiment's accuracy pass "
                            "(answers kept, scored and judged at session finish)")
    for backend in BUILTIN_BACKENDS:
        config.addinivalue_line("markers", f"{backend}: cases served by the {backend} backend")
    raw = setting(config, "fmbench_config", "FMBENCH_CONFIG")
    if not raw:
        return
    _check_xdist(config)
    path = (config.invocation_params.dir / raw).resolve()
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
                                  setting(config, "fmbench_gate", "FMBENCH_GATE"), experiments=[])
        upload = _upload_wanted(config)
        if upload:
            from pytest_fmbench.report.fmbench_upload import check_upload

            check_upload(bench_config)
    except ConfigError as exc:
        raise pytest.UsageError(exc.render()) from None
    except ValueError as exc:
        raise pytest.UsageError(f"{path}: {exc}") from None
    # A pricing file that may be in the read bucket is looked up (and warned about) later.
    deferred = bench_config.pricing_fallback_warning if pricing_may_be_in_bucket(
        bench_config, read_dir) else None
    for warning in (w for w in bench_config.warnings if w != deferred):
        config.issue_config_time_warning(pytest.PytestConfigWarning(f"{path}: {warning}"), stacklevel=2)
    for marker in all_markers(bench_config):
        config.addinivalue_line("markers", f"{marker}: pytest-fmbench experiment marker")
    rescore = config.getoption("fmbench_rescore")
    if rescore:  # nothing is deployed or measured: no role, no run
        config.stash[RESCORE_KEY] = (bench_config, (config.invocation_params.dir / rescore).resolve())
        return

    setup = RunSetup(bench_config, cases, report_settings, read_dir=read_dir,
                     teardown_deadline_s=_teardown_timeout(config),
                     upload=upload, shard=_shard(config))
    # Chosen once: every duty that differs between the controller and a worker is the role's.
    role = choose_role(config).start(config, setup)
    config.stash[ROLE_KEY] = role
    run = config.stash[RUN_KEY] = role.run
    # The per-request SLOs an SLO search holds its levels to (load/levels.py).
    run.slos = report_settings.budgets.slos([e.name for e in bench_config.experiments])
    config.stash[CASES_KEY] = cases
    config.stash[CASE_TIMEOUTS_KEY] = _case_timeouts(config, bench_config)
    config.stash[REPORT_SETTINGS_KEY] = report_settings
    limit = _max_cost(config)
    if limit is not None:
        run.limit_spend(limit)  # priced once the selected experiments are checked
    role.register()
    _install_sigterm(config)


def _shard(config: pytest.Config) -> Shard | None:
    raw = setting(config, "fmbench_shard", "FMBENCH_SHARD")
    if not raw:
        return None
    try:
        return parse_shard(raw)
    except ValueError as exc:
        raise pytest.UsageError(f"--fmbench-shard: {exc}\n  fix: e.g. --fmbench-shard=1/4 "
                                "(or FMBENCH_SHARD=1/4) for the first of four shards") from None


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
    raw = setting(config, "fmbench_case_timeout", "FMBENCH_CASE_TIMEOUT")
    try:
        chosen = parse_case_timeout(raw)
    except ValueError as exc:
        raise pytest.UsageError(f"--fmbench-case-timeout: {exc}\n  fix: e.g. "
                                "--fmbench-case-timeout=auto, =none or =7200") from None
    if isinstance(chosen, str):  # "auto"
        return {e.name: case_timeout_s(bench_config, e) for e in bench_config.experiments}
    return {e.name: chosen for e in bench_config.experiments}


def _teardown_timeout(config: pytest.Config) -> float:
    raw = setting(config, "fmbench_teardown_timeout", "FMBENCH_TEARDOWN_TIMEOUT")
    try:
        value = float(raw) if raw else 600.0
    except ValueError:
        value = -1.0
    if value < 0:
        raise pytest.UsageError(f"--fmbench-teardown-timeout expects seconds, got '{raw}'\n"
                                "  fix: e.g. --fmbench-teardown-timeout=600")
    return value


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
    raw = setting(config, "fmbench_config", "FMBENCH_CONFIG")
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
    if RESCORE_KEY in metafunc.config.stash:
        metafunc.parametrize("fmbench_case", [pytest.param(None, id="rescore", marks=pytest.mark.skip(
            reason="--fmbench-rescore: no benchmark case runs"))])
        return
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


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Cases of one experiment run contiguously (one deploy), in config order; with
    ``--fmbench-shard``, only the shard's experiments (after ``-k``/``-m``)."""
    role = config.stash.get(ROLE_KEY, None)
    if role is not None:
        role.select_shard(items)
    positions = [i for i, item in enumerate(items) if case_of(item) is not None]
    ordered = sorted((items[i] for i in positions), key=lambda it: case_of(it).experiment_index)  # type: ignore[union-attr]
    for position, item in zip(positions, ordered):
        items[position] = item


def pytest_collection_finish(session: pytest.Session) -> None:
    role = session.config.stash.get(ROLE_KEY, None)
    if role is not None:
        role.collection_finish(session.items)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    yield
    case = case_of(item)
    run = item.config.stash.get(RUN_KEY, None)
    if case is None or run is None:
        return
    following = case_of(nextitem)
    if following is None or following.experiment != case.experiment:
        run.release(case.experiment)


def pytest_sessionfinish(session: pytest.Session) -> None:
    rescore = session.config.stash.get(RESCORE_KEY, None)
    if rescore is not None and not hasattr(session.config, "workerinput"):
        from pytest_fmbench.accuracy.session import rescore_run

        try:
            lines, passed = rescore_run(*rescore, session.config.rootpath)
        except ConfigError as exc:
            lines, passed = [exc.render()], False
        session.config.stash[RESCORE_LINES_KEY] = lines
        session.exitstatus = pytest.ExitCode.OK if passed else pytest.ExitCode.TESTS_FAILED
    role = session.config.stash.get(ROLE_KEY, None)
    if role is not None:
        session.exitstatus = role.session_finish(session.exitstatus)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    rescored = config.stash.get(RESCORE_LINES_KEY, None)
    if rescored is not None:
        terminalreporter.write_sep("=", "pytest-fmbench rescore")
        for line in rescored:
            terminalreporter.write_line(line)
    role = config.stash.get(ROLE_KEY, None)
    outcome = role.outcome if role is not None else None
    if (outcome is None or not outcome.ran and not outcome.error and outcome.passed
            and not outcome.left_running):
        return
    try:
        terminalreporter.write_sep("=", "pytest-fmbench", red=not outcome.passed, green=outcome.passed)
        for line in outcome.lines:
            terminalreporter.write_line(line)
    except Exception:  # noqa: BLE001, S110 - never raise from the summary
        pass


def pytest_unconfigure(config: pytest.Config) -> None:
    role = config.stash.get(ROLE_KEY, None)
    if role is not None:
        role.close()
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
    role = item.config.stash.get(ROLE_KEY, None)
    if role is not None:
        role.ship_log_lines(report)
    return report


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
            # The accuracy pass measures nothing: its requests face the accuracy budgets only.
            if settings is None or settings.mode != "every" or fmbench_case.accuracy:
                return result
            violations = case_violations(settings, run.config, result.records, result.telemetry)
            if not violations:
                return result
            failure = case_failure_message(violations)
        pytest.fail(failure, pytrace=False)

    return load
