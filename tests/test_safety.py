"""Money safety, piece by piece: the control-plane emulator, deletes that wait out Creating,
the SageMaker backend's retries and names, the journal, the reaper and ``sweep`` by tag."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config as BotoConfig
from botocore.stub import Stubber

from pytest_fmbench.endpoints.sagemaker import SageMakerEndpoint
from pytest_fmbench.safety import sagemaker as cleanup
from pytest_fmbench.safety.journal import Journal, open_entries_in, read_journal
from pytest_fmbench.safety.reaper import start_reaper
from pytest_fmbench.safety.sweep import parse_duration
from pytest_fmbench.testing.aws_emulator import aws_environment
from pytest_fmbench.testing.sagemaker_control import SageMakerControl
from tests.aws_support import ROLE, bench_config, context, create_byo_endpoint

RUN = "20250101T000000-safety"
OTHER_RUN = "20250101T000000-other"
EMPTY = {"endpoints": [], "configs": [], "models": []}
IMAGE = "763104351884.dkr.ecr.us-east-1.amazonaws.com/tgi:2.4.0"


@pytest.fixture(scope="module")
def emulator() -> Iterator[SageMakerControl]:
    with SageMakerControl() as control:
        yield control


@pytest.fixture
def control(emulator: SageMakerControl, monkeypatch: pytest.MonkeyPatch) -> SageMakerControl:
    emulator.reset()
    emulator.creating_s, emulator.deleting_s, emulator.fail_endpoints = 0.0, 0.0, False
    for key, value in aws_environment(control_url=emulator.url).items():
        monkeypatch.setenv(key, value)
    return emulator


def client(*, retries: int = 1) -> Any:
    return boto3.client("sagemaker", config=BotoConfig(
        retries={"mode": "standard", "total_max_attempts": retries}))


def create_tagged(sm: Any, name: str, run_id: str | None) -> None:
    tags = [] if run_id is None else [{"Key": cleanup.RUN_ID_TAG, "Value": run_id},
                                      {"Key": cleanup.CREATED_BY_TAG, "Value": cleanup.CREATED_BY}]
    sm.create_model(ModelName=name, ExecutionRoleArn=ROLE, PrimaryContainer={"Image": IMAGE},
                    Tags=tags)
    sm.create_endpoint_config(EndpointConfigName=name, Tags=tags, ProductionVariants=[{
        "VariantName": "AllTraffic", "ModelName": name, "InitialInstanceCount": 1,
        "InstanceType": "ml.g5.xlarge"}])
    sm.create_endpoint(EndpointName=name, EndpointConfigName=name, Tags=tags)


# -- the emulator behaves like the service -------------------------------------------------

def test_emulator_refuses_deleting_a_creating_endpoint_and_throttles_on_demand(
        control: SageMakerControl) -> None:
    control.creating_s = 0.3
    sm = client()
    create_tagged(sm, "ep", RUN)
    assert sm.describe_endpoint(EndpointName="ep")["EndpointStatus"] == "Creating"
    with pytest.raises(Exception, match="in-progress") as refused:
        sm.delete_endpoint(EndpointName="ep")
    assert cleanup.is_in_progress(refused.value)
    control.inject("DescribeEndpoint", times=1)
    with pytest.raises(Exception, match="Rate exceeded") as throttled:
        sm.describe_endpoint(EndpointName="ep")
    assert cleanup.error_code(throttled.value) == "ThrottlingException"
    assert cleanup.is_transient(throttled.value)
    time.sleep(0.35)
    assert sm.describe_endpoint(EndpointName="ep")["EndpointStatus"] == "InService"


def test_delete_waits_out_creating_and_retries_throttling(control: SageMakerControl) -> None:
    control.creating_s = 0.5
    sm = client()
    create_tagged(sm, "ep", RUN)
    control.inject("DeleteEndpoint", times=2)
    log: list[str] = []
    assert cleanup.delete(sm, "endpoint", "ep", deadline_s=10, poll_s=0.05, log=log.append)
    assert control.names("endpoint") == []
    assert "ThrottlingException" in control.errors("DeleteEndpoint")
    assert "ValidationException" in control.errors("DeleteEndpoint")  # refused while Creating
    assert any("is Creating: waiting to delete it" in line for line in log)
    assert not cleanup.delete(sm, "endpoint", "ep", deadline_s=1, poll_s=0.05, log=log.append)


def test_delete_fails_loudly_at_its_deadline(control: SageMakerControl) -> None:
    control.creating_s = 60
    sm = client()
    create_tagged(sm, "ep", RUN)
    with pytest.raises(cleanup.DeleteFailed, match="still exists after 0 s"):
        cleanup.delete(sm, "endpoint", "ep", deadline_s=0.2, poll_s=0.05, log=lambda _: None)


def test_only_resources_tagged_with_the_run_are_deleted(control: SageMakerControl) -> None:
    sm = client()
    create_tagged(sm, "ours", RUN)
    create_tagged(sm, "other-run", OTHER_RUN)
    create_byo_endpoint(sm, "byo")
    plan = {"kind": "sagemaker", "run_id": RUN, "resources": [
        [kind, name] for name in ("ours", "other-run", "byo", "gone")
        for kind in ("endpoint", "endpoint-config", "model")]}
    deleted = cleanup.delete_plan(plan, client=sm, poll_s=0.05, log=lambda _: None)
    assert deleted == ["endpoint/ours", "endpoint-config/ours", "model/ours"]
    assert control.names("endpoint") == ["byo", "other-run"]
    assert control.names("model") == ["byo", "other-run"]


# -- the backend: retries, names, teardown -------------------------------------------------

def sagemaker_endpoint(log: list[str] | None = None, **sagemaker: Any) -> SageMakerEndpoint:
    cfg = bench_config({"name": "qwen", "backend": "sagemaker", "model_id": "Qwen/Qwen2.5",
                        "ep_name": "qwen-g5", "instance_type": "ml.g5.xlarge", "image_uri": IMAGE,
                        "deploy": True, "sagemaker": {"poll_interval_s": 0.05, **sagemaker}})
    return SageMakerEndpoint(cfg, cfg.experiments[0], context(log, run_id=RUN))


def test_control_plane_retries_and_runtime_does_not(control: SageMakerControl) -> None:
    ep = sagemaker_endpoint()
    assert ep.control().meta.config.retries == {"mode": "adaptive", "total_max_attempts": 11}
    assert ep.runtime().meta.config.retries["total_max_attempts"] == 1


def test_redeploys_of_one_experiment_never_share_names(control: SageMakerControl) -> None:
    first, second = sagemaker_endpoint(), sagemaker_endpoint()
    assert first.endpoint_name != second.endpoint_name
    assert first.endpoint_name.startswith("qwen-g5-") and len(first.endpoint_name) <= 63


def test_waiting_for_inservice_tolerates_a_throttled_describe() -> None:
    log: list[str] = []
    ep = sagemaker_endpoint(log)
    sm = boto3.client("sagemaker", region_name="us-east-1", aws_access_key_id="x",
                      aws_secret_access_key="y", endpoint_url="http://127.0.0.1:9")
    stub = Stubber(sm)
    name = ep.endpoint_name
    stub.add_client_error("describe_endpoint", "ThrottlingException", "Rate exceeded", 400)
    stub.add_response("describe_endpoint", {
        "EndpointName": name, "EndpointArn": f"arn:aws:sagemaker:us-east-1:1:endpoint/{name}",
        "EndpointStatus": "InService", "CreationTime": "2025-01-01T00:00:00Z",
        "LastModifiedTime": "2025-01-01T00:00:00Z"}, {"EndpointName": name})
    stub.activate()
    ep._control = sm
    ep._wait_in_service()
    stub.assert_no_pending_responses()
    assert any("ThrottlingException" in line and "still waiting" in line for line in log)


def test_a_deploy_that_times_out_in_creating_is_still_deleted(control: SageMakerControl) -> None:
    control.creating_s = 1.0
    ep = sagemaker_endpoint(deploy_timeout_s=0.2)
    with pytest.raises(Exception, match="still Creating"):
        ep.deploy()
    # The delete was refused while Creating, waited, and went through.
    assert control.inventory() == EMPTY
    assert "ValidationException" in control.errors("DeleteEndpoint")
    assert not ep.deployed_by_us


def test_the_reap_plan_names_all_three_resources_before_deploy(control: SageMakerControl) -> None:
    ep = sagemaker_endpoint()
    plan = ep.reap_plan()
    assert plan is not None and plan["kind"] == "sagemaker" and plan["run_id"] == RUN
    assert plan["resources"] == [["endpoint", ep.endpoint_name],
                                 ["endpoint-config", ep.endpoint_name],
                                 ["model", ep.endpoint_name]]
    assert plan["endpoint_url"] == control.url and plan["region"] == "us-east-1"
    ep.deploy()
    SageMakerEndpoint.cleanup_orphan(ep.config, ep.experiment, ep.context, ep.describe())
    assert control.inventory() == EMPTY


# -- journal and reaper --------------------------------------------------------------------

def test_journal_folds_intents_updates_and_teardowns_across_files(tmp_path: Path) -> None:
    worker = Journal(tmp_path / "journal-gw0.jsonl", run_id=RUN, worker="gw0")
    one = worker.intent("a", {"kind": "process", "process": {"cookie": "x"}})
    two = worker.intent("b", {"kind": "process", "process": {"cookie": "y"}})
    worker.update(two, {"kind": "process", "process": {"cookie": "y", "pid": 5}})
    worker.torn_down(one)
    (tmp_path / "journal-gw0.jsonl").open("a").write('{"op": "intent", "id": "partial')
    entries = open_entries_in(tmp_path)
    assert [(e["experiment"], e["plan"]["process"].get("pid")) for e in entries] == [("b", 5)]
    # A teardown journaled elsewhere (the controller, the reaper) closes it too.
    Journal(tmp_path / "journal.jsonl", run_id=RUN).torn_down(two)
    assert open_entries_in(tmp_path) == []


def test_the_reaper_reaps_a_dropped_worker_and_leaves_a_finished_one(tmp_path: Path) -> None:
    handle = start_reaper(RUN, tmp_path)
    sleepers = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                                 env={**os.environ, "FMBENCH_PROCESS_COOKIE": cookie})
                for cookie in ("crashed", "finished")]
    try:
        from pytest_fmbench.safety.journal import ReaperClient

        def journal(worker: str, cookie: str) -> Journal:
            return Journal(tmp_path / f"journal-{worker}.jsonl", run_id=RUN, worker=worker,
                           connect=lambda: ReaperClient(handle.address, handle.token,
                                                        role="worker", run_id=RUN, worker=worker))

        crashed, finished = journal("gw0", "crashed"), journal("gw1", "finished")
        crashed.intent("a", {"kind": "process", "process": {"cookie": "crashed"}})
        finished.intent("b", {"kind": "process", "process": {"cookie": "finished"}})
        finished.close(done=True)
        crashed.close(done=False)  # the connection drops without "done"
        sleepers[0].wait(timeout=15)
        assert sleepers[1].poll() is None
        handle.process.wait(timeout=15)  # no connection left: it exits
        lines = read_journal(tmp_path / "journal-reaper.jsonl")
        assert [(line["op"], line["experiment"]) for line in lines] == [("torn_down", "a")]
    finally:
        for sleeper in sleepers:
            sleeper.kill()
            sleeper.wait()
        if handle.process.poll() is None:
            handle.process.kill()


def test_a_wrong_token_is_refused(tmp_path: Path) -> None:
    from pytest_fmbench.safety.journal import ReaperClient

    handle = start_reaper(RUN, tmp_path)
    try:
        with pytest.raises(OSError, match="refused"):
            ReaperClient(handle.address, "wrong", role="controller", run_id=RUN)
        ReaperClient(handle.address, handle.token, role="controller", run_id=RUN).send(
            {"op": "done"})
        handle.process.wait(timeout=15)
    finally:
        if handle.process.poll() is None:
            handle.process.kill()


# -- sweep ---------------------------------------------------------------------------------

def sweep(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest_fmbench", "sweep", *args],
                          capture_output=True, text=True, timeout=120, env=dict(os.environ),
                          check=False)


def test_sweep_deletes_ours_by_tag_and_never_touches_a_byo_endpoint(
        control: SageMakerControl) -> None:
    sm = client()
    create_tagged(sm, "run-a", RUN)
    create_tagged(sm, "run-b", OTHER_RUN)
    create_byo_endpoint(sm, "team-llm-prod")
    dry = sweep("--dry-run")
    assert dry.returncode == 1, dry.stderr  # something found: a CI check can fail on it
    assert "would delete endpoint run-a" in dry.stdout and "team-llm-prod" not in dry.stdout
    assert control.names("endpoint") == ["run-a", "run-b", "team-llm-prod"]

    one = sweep("--run-id", RUN)
    assert one.returncode == 0, one.stdout + one.stderr
    assert "sweep: found 3, deleted 3, failed 0 (run 20250101T000000-safety)" in one.stdout
    assert control.names("endpoint") == ["run-b", "team-llm-prod"]

    everything = sweep("--region", "us-east-1")
    assert everything.returncode == 0
    assert control.inventory() == {"endpoints": ["team-llm-prod"], "configs": ["team-llm-prod"],
                                   "models": ["team-llm-prod"]}
    again = sweep("--older-than", "0")
    assert again.returncode == 0 and "sweep: found 0" in again.stdout


def test_sweep_waits_for_a_creating_endpoint_and_respects_older_than(
        control: SageMakerControl) -> None:
    control.creating_s = 1.0
    create_tagged(client(), "young", RUN)
    kept = sweep("--older-than", "1h")
    assert kept.returncode == 0 and "found 0" in kept.stdout
    gone = sweep("--older-than", "0")
    assert gone.returncode == 0, gone.stdout + gone.stderr
    assert control.inventory() == EMPTY


def test_sweep_usage_errors_are_one_line() -> None:
    bad = sweep("--older-than", "soon")
    assert bad.returncode == 2 and "not a duration: 'soon'" in bad.stderr
    assert "Traceback" not in bad.stderr
    assert parse_duration("90s") == 90 and parse_duration("2h") == 7200 and parse_duration("0") == 0


def test_sweep_stops_journaled_server_processes_of_a_dead_run(tmp_path: Path) -> None:
    from pytest_fmbench.endpoints import process

    run_dir = tmp_path / "results" / "x" / RUN
    cookie = process.new_cookie()
    server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                              env={**os.environ, process.COOKIE_ENV: cookie})
    try:
        journal = Journal(run_dir / "journal.jsonl", run_id=RUN)
        journal.intent("served", {"kind": "process",
                                  "process": process.identify(server.pid, cookie).to_json()})
        result = sweep("--no-sagemaker", "--results-dir", str(tmp_path))
        assert result.returncode == 0, result.stdout + result.stderr
        assert "deleted process" in result.stdout
        server.wait(timeout=15)
        assert sweep("--no-sagemaker", "--results-dir", str(tmp_path)).stdout.startswith(
            "sweep: found 0")
    finally:
        server.kill()
        server.wait()


def test_python_m_pytest_fmbench_keeps_the_pricing_command() -> None:
    result = subprocess.run([sys.executable, "-m", "pytest_fmbench", "pricing", "--help"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0 and "refresh" in result.stdout
