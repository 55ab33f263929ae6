"""The controller and worker roles (``pytest_fmbench.roles``) on their own, without pytest runs.

End-to-end, the same duties are covered by ``test_plugin``, ``test_worker_logs``,
``test_orphans`` and ``test_safety_e2e``; here each finish step is driven directly, so a
failing step is seen to be one line and exit 1, never an exception out of the hook.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pytest_fmbench import roles
from pytest_fmbench.cases import Case
from pytest_fmbench.progress import Tracker
from pytest_fmbench.report.session import SessionReport
from pytest_fmbench.roles import (
    LEFT_RUNNING_OUTPUT,
    LOG_ATTRIBUTE,
    ControllerRole,
    RunSetup,
    WorkerRole,
    choose_role,
    run_place,
)
from pytest_fmbench.runlog import RunLog

OK = pytest.ExitCode.OK
FAILED = pytest.ExitCode.TESTS_FAILED
LEFT = {"experiment": "alpha", "resources": "endpoint ep-alpha", "error": "ThrottlingException",
        "commands": ["aws sagemaker delete-endpoint --endpoint-name ep-alpha"]}


class FakeSafety:
    def __init__(self) -> None:
        self.closed: list[bool] = []

    def close(self, *, done: bool = True) -> None:
        self.closed.append(done)


class FakeRun:
    """The parts of ``BenchmarkRun`` the roles call; each step can be made to fail."""

    def __init__(self, results_dir: Path, log: RunLog, *, fail: str = "",
                 left: list[dict[str, Any]] | None = None) -> None:
        self.results_dir = results_dir
        self.run_id = "run"
        self.log = log
        self.fail = fail
        self.left = left or []
        self.safety = FakeSafety()
        self.config = SimpleNamespace(general=SimpleNamespace(name="bench"))
        self.spend = SimpleNamespace(stop_reasons=list)
        self.progress = Tracker()
        self.calls: list[str] = []

    def _step(self, name: str) -> None:
        self.calls.append(name)
        if self.fail == name:
            raise RuntimeError(f"{name} broke")

    def close(self) -> None:
        self._step("close")

    def wait_orphan_cleanups(self) -> None:
        self._step("wait_orphan_cleanups")

    def write_metadata(self, extra: dict[str, Any] | None = None) -> None:
        self._step("write_metadata")
        self.metadata = extra

    def left_running(self) -> list[dict[str, Any]]:
        return list(self.left)

    def pricing_from_read_bucket(self, *, quiet: bool = False) -> None:
        self.calls.append("pricing_from_read_bucket")

    def price_spend(self, prices: dict[str, Any]) -> None:
        self.calls.append("price_spend")


def fake_config(tmp_path: Path, *, collectonly: bool = False, worker: str = "") -> Any:
    config = SimpleNamespace(
        option=SimpleNamespace(collectonly=collectonly),
        invocation_params=SimpleNamespace(args=("--fmbench-set", "key=s3cr3t", "bench"),
                                          dir=tmp_path),
        pluginmanager=SimpleNamespace(get_plugin=lambda name: None),
        rootpath=tmp_path,
        # No conftest implements the pytest_fmbench_* hooks (hooks.py).
        stash=pytest.Stash(),
        hook=SimpleNamespace(pytest_fmbench_session_report=lambda **kwargs: [],
                             pytest_fmbench_case_finished=lambda **kwargs: []),
    )
    if worker:
        config.workerinput = {"workerid": worker}
        config.workeroutput = {}
    return config


def setup_of(run: FakeRun, cases: list[Case] | None = None) -> RunSetup:
    return RunSetup(run.config, cases or [], settings=SimpleNamespace(prices={}),  # type: ignore[arg-type]
                    read_dir=None, teardown_deadline_s=1.0)


@pytest.fixture(autouse=True)
def _steps_stubbed(monkeypatch: pytest.MonkeyPatch) -> None:
    """No CI step summary, and an orphan cleanup that finds nothing."""
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    monkeypatch.setattr(roles, "cleanup_orphans", lambda run: [])
    monkeypatch.setattr(roles, "finish", lambda *a, **k: SessionReport(passed=True, ran=True))
    monkeypatch.setattr(roles, "evaluate_accuracy", lambda *a, **k: None)  # no accuracy asked


def controller(tmp_path: Path, **kwargs: Any) -> tuple[ControllerRole, FakeRun, list[str]]:
    printed: list[str] = []
    log = RunLog(tmp_path, echo=printed.append)
    run = FakeRun(tmp_path, log, **kwargs)
    config = fake_config(tmp_path)
    return ControllerRole(config, run, log, setup_of(run)), run, printed  # type: ignore[arg-type]


def worker(tmp_path: Path, **kwargs: Any) -> tuple[WorkerRole, FakeRun, Any]:
    log = RunLog(tmp_path, "gw1")  # no echo: lines are kept for the controller
    run = FakeRun(tmp_path, log, **kwargs)
    config = fake_config(tmp_path, worker="gw1")
    return WorkerRole(config, run, log, setup_of(run)), run, config  # type: ignore[arg-type]


# -- choosing ---------------------------------------------------------------------------

def test_a_process_with_workerinput_is_a_worker_and_any_other_the_controller(
        tmp_path: Path) -> None:
    assert choose_role(fake_config(tmp_path, worker="gw0")) is WorkerRole
    assert choose_role(fake_config(tmp_path)) is ControllerRole


def test_a_worker_writes_where_its_controller_told_it(tmp_path: Path) -> None:
    config = fake_config(tmp_path, worker="gw0")
    config.getoption = lambda name: None
    place = run_place(config, "bench", {"fmbench_run_id": "r1",
                                        "fmbench_results_dir": str(tmp_path / "out"),
                                        "fmbench_payload_dir": str(tmp_path / "pl")})
    assert (place.run_id, place.results_dir, place.payload_dir) == (
        "r1", tmp_path / "out", tmp_path / "pl")


def test_a_controller_without_a_results_dir_writes_under_results_name_run_id(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FMBENCH_RESULTS_DIR", raising=False)
    config = fake_config(tmp_path)
    config.getoption = lambda name: None
    config.getini = lambda name: ""
    place = run_place(config, "bench", {})
    assert place.results_dir == tmp_path / "results" / "bench" / place.run_id
    assert place.payload_dir == tmp_path / "results" / "bench" / "payloads"
    assert not place.chosen  # nothing to set aside


# -- the controller's session finish ----------------------------------------------------------

def test_a_clean_finish_keeps_the_exit_status_and_closes_the_safety_net(tmp_path: Path) -> None:
    role, run, printed = controller(tmp_path)
    assert role.session_finish(OK) == OK
    assert run.calls == ["close", "wait_orphan_cleanups", "write_metadata"]
    # --fmbench-set values may be secrets: masked in run.json
    assert run.metadata == {"args": ["--fmbench-set", "key=***redacted***", "bench"]}
    assert run.safety.closed == [True]
    assert role.outcome is not None and role.outcome.passed
    assert printed == []


@pytest.mark.parametrize("step, label", [
    ("close", "closing the run"),
    ("wait_orphan_cleanups", "waiting for orphan cleanups"),
    ("write_metadata", "run.json"),
])
def test_a_failing_finish_step_is_one_line_and_exit_1(tmp_path: Path, step: str,
                                                        label: str) -> None:
    role, run, printed = controller(tmp_path, fail=step)
    assert role.session_finish(OK) == FAILED  # returned, not raised
    assert printed == [f"[fmbench] ERROR {label} failed: RuntimeError: {step} broke"]
    assert run.safety.closed == [True]  # the later steps still ran
    assert "the report" not in "".join(printed)


def test_a_report_that_cannot_be_built_fails_the_run_without_internalerror(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> SessionReport:
        raise KeyError("old-name")

    monkeypatch.setattr(roles, "finish", broken)
    role, run, printed = controller(tmp_path)
    assert role.session_finish(OK) == FAILED
    assert printed == ["[fmbench] ERROR the report failed: KeyError: 'old-name'"]
    assert run.safety.closed == [True]


def test_an_orphan_cleanup_that_raises_is_one_line(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(run: Any) -> list[str]:
        raise OSError("journal unreadable")

    monkeypatch.setattr(roles, "cleanup_orphans", broken)
    role, _, printed = controller(tmp_path)
    assert role.session_finish(OK) == FAILED
    assert printed == ["[fmbench] ERROR orphan cleanup failed: OSError: journal unreadable"]


def test_a_failing_report_gate_fails_the_run(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(roles, "finish", lambda *a, **k: SessionReport(passed=False, ran=True))
    role, _, printed = controller(tmp_path)
    assert role.session_finish(OK) == FAILED
    assert printed == []  # the gate's verdict is the report's, not an error line


def test_an_exit_status_that_already_fails_is_kept(tmp_path: Path) -> None:
    role, _, _ = controller(tmp_path, fail="close")
    interrupted = pytest.ExitCode.INTERRUPTED
    assert role.session_finish(interrupted) == interrupted


def test_endpoints_left_running_fail_even_a_run_that_collected_nothing(tmp_path: Path) -> None:
    tmp_path.rmdir()  # no results dir: no report, so the left-running block is the outcome
    role, _, _ = controller(tmp_path, left=[LEFT])
    assert role.session_finish(pytest.ExitCode.NO_TESTS_COLLECTED) == FAILED
    assert role.outcome is not None and not role.outcome.passed
    assert role.outcome.left_running == [LEFT]
    assert any("ep-alpha" in line for line in role.outcome.lines)


def test_collect_only_writes_no_report_and_gives_no_verdict(tmp_path: Path) -> None:
    role, run, _ = controller(tmp_path, left=[LEFT])
    role.config.option.collectonly = True
    assert role.session_finish(OK) == OK
    assert run.calls == ["close"]
    assert role.outcome is None
    assert run.safety.closed == [True]


def test_the_controller_ships_no_log_lines(tmp_path: Path) -> None:
    role, run, printed = controller(tmp_path)
    run.log("[fmbench] deploying endpoint of 'alpha'")
    report = SimpleNamespace()
    role.ship_log_lines(report)  # type: ignore[arg-type]
    assert not hasattr(report, LOG_ATTRIBUTE)
    assert printed == ["[fmbench] deploying endpoint of 'alpha'"]


# -- the worker ---------------------------------------------------------------------------

def test_a_worker_ships_what_is_left_running_and_its_last_lines(tmp_path: Path) -> None:
    role, run, config = worker(tmp_path, left=[LEFT])
    run.log("[fmbench] teardown of 'alpha' failed: ClientError: throttled")
    assert role.session_finish(OK) == OK  # the controller gives the verdict
    assert config.workeroutput[LEFT_RUNNING_OUTPUT] == [LEFT]
    assert config.workeroutput[LOG_ATTRIBUTE] == [
        "[fmbench] teardown of 'alpha' failed: ClientError: throttled"]
    assert run.safety.closed == [True]


def test_a_worker_whose_close_fails_ships_the_line_instead_of_raising(tmp_path: Path) -> None:
    role, run, config = worker(tmp_path, fail="close")
    assert role.session_finish(OK) == OK
    assert config.workeroutput[LOG_ATTRIBUTE] == [
        "[fmbench] ERROR closing the run failed: RuntimeError: close broke"]
    assert config.workeroutput[LEFT_RUNNING_OUTPUT] == []
    assert run.calls == ["close"]  # orphans, run.json and the report are the controller's


def test_a_worker_attaches_each_phases_lines_to_its_report_once(tmp_path: Path) -> None:
    role, run, _ = worker(tmp_path)
    quiet = SimpleNamespace()
    role.ship_log_lines(quiet)  # type: ignore[arg-type]
    assert not hasattr(quiet, LOG_ATTRIBUTE)
    run.log("[fmbench] deploying endpoint of 'alpha'")
    report = SimpleNamespace()
    role.ship_log_lines(report)  # type: ignore[arg-type]
    assert getattr(report, LOG_ATTRIBUTE) == ["[fmbench] deploying endpoint of 'alpha'"]
    role.ship_log_lines(later := SimpleNamespace())  # type: ignore[arg-type]
    assert not hasattr(later, LOG_ATTRIBUTE)


def test_unconfigure_closes_the_run_and_the_safety_net_without_raising(tmp_path: Path) -> None:
    role, run, printed = controller(tmp_path, fail="close")
    role.close()
    assert printed == ["[fmbench] ERROR closing the run failed: RuntimeError: close broke"]
    assert run.safety.closed == [True]


def test_the_names_tests_and_conftests_import_from_the_plugin_are_still_there() -> None:
    from pytest_fmbench import plugin

    for name in ("LOG_ATTRIBUTE", "XdistHooks", "Controller", "CONTROLLER", "REPORT_ATTRIBUTE",
                 "ControllerRole", "WorkerRole", "RUN_KEY", "CASES_KEY"):
        assert hasattr(plugin, name), name


def test_a_worker_prices_only_its_own_selection_and_not_under_collect_only(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    priced: list[list[str | None]] = []
    monkeypatch.setattr(roles, "selected_experiments", lambda config, names: list(names))
    monkeypatch.setattr(roles, "price_selected",
                        lambda config, settings, names: priced.append(names))
    role, _, config = worker(tmp_path)
    case = Case("beta", "payload_en_1-500.jsonl", 1, experiment_index=0, markers=())
    items = [SimpleNamespace(callspec=SimpleNamespace(params={"fmbench_case": case})),
             SimpleNamespace()]  # another test: not a case
    role.collection_finish(items)  # type: ignore[arg-type]
    assert priced == [["beta"]]
    config.option.collectonly = True
    role.collection_finish(items)  # type: ignore[arg-type]
    assert priced == [["beta"]]


def test_a_failed_accuracy_budget_fails_the_run_and_joins_the_summary(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_fmbench.accuracy.phase import AccuracyOutcome

    line = "[fmbench] accuracy budget FAIL: m majority accuracy 0.500 vs accuracy_budget 0.900"
    monkeypatch.setattr(roles, "evaluate_accuracy",
                        lambda *a, **k: AccuracyOutcome([line], ["### Model evaluations"], False))
    role, _, _ = controller(tmp_path)
    assert role.session_finish(OK) == FAILED
    assert role.outcome is not None and line in role.outcome.lines
