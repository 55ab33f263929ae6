"""``python -m pytest_fmbench sweep``: find what pytest-fmbench left running, by tag, and delete it.

For the machine that died with nothing to reap its leftovers (a preempted runner, a laptop
lid), and as a CI step that always runs (``if: always()``):

- SageMaker endpoints, endpoint configs and models tagged ``fmbench:created-by=pytest-fmbench``
  (and ``fmbench:run-id=<id>`` with ``--run-id``), created more than ``--older-than`` ago;
  an endpoint is deleted first, waiting out ``Creating``, then its config, then its model.
  Anything without our tags is never touched (a bring-your-own endpoint, another tool's);
- server process groups from the journals in ``--results-dir`` (searched recursively) that
  were not torn down, identified by cookie and start time (never by a bare pid);
- with ``--containers``: Podman/Docker containers labelled ``fmbench.created-by=pytest-fmbench``
  (and ``fmbench.run-id=<id>`` with ``--run-id``), running or stopped, on this machine.

Exit status: 0 nothing is left (nothing found, or all of it deleted; with ``--dry-run``:
nothing found), 1 something is left (a delete failed; with ``--dry-run``: something found),
2 usage or access error. One line per resource on stdout, then a summary line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pytest_fmbench.safety import sagemaker
from pytest_fmbench.safety.journal import open_entries, read_journal
from pytest_fmbench.safety.reap import ReapFailed, describe_plan, reap_plan

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_LIST = {"endpoint": ("list_endpoints", "Endpoints", "EndpointName", "EndpointArn"),
         "endpoint-config": ("list_endpoint_configs", "EndpointConfigs", "EndpointConfigName",
                             "EndpointConfigArn"),
         "model": ("list_models", "Models", "ModelName", "ModelArn")}


def parse_duration(text: str) -> float:
    """``90s``, ``30m``, ``2h``, ``1d``, ``0`` → seconds."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"not a duration: '{text}' (use e.g. 0, 90s, 30m, 2h, 1d)")
    return float(match.group(1)) * _UNITS[match.group(2)]


@dataclasses.dataclass
class Leftover:
    kind: str  # endpoint | endpoint-config | model | process | container
    name: str
    run_id: str
    created: float | None = None
    plan: dict[str, Any] | None = None  # processes: the journaled plan
    source: Path | None = None  # processes: the journal's directory

    def line(self) -> str:
        age = f", {(time.time() - self.created) / 3600:.1f} h old" if self.created else ""
        return f"{self.kind} {self.name} (run {self.run_id}{age})"


def find_sagemaker(sm: Any, *, run_id: str | None = None,
                   older_than_s: float = 0.0) -> list[Leftover]:
    """Everything tagged as ours (and of ``run_id``), endpoints first."""
    found: list[Leftover] = []
    cutoff = time.time() - older_than_s
    for kind in reversed(sagemaker.KINDS):  # endpoint, endpoint-config, model
        method, key, name_key, arn_key = _LIST[kind]
        kwargs: dict[str, Any] = {"MaxResults": 100}
        while True:
            page = getattr(sm, method)(**kwargs)
            for item in page.get(key) or []:
                created = _epoch(item.get("CreationTime"))
                if created is not None and created > cutoff:
                    continue
                tags = {str(t["Key"]): str(t["Value"]) for t in
                        sm.list_tags(ResourceArn=item[arn_key]).get("Tags") or []}
                if sagemaker.is_ours(tags, run_id):
                    found.append(Leftover(kind, str(item[name_key]),
                                          tags[sagemaker.RUN_ID_TAG], created))
            token = page.get("NextToken")
            if not token:
                break
            kwargs["NextToken"] = token
    return found


def _epoch(value: Any) -> float | None:
    if value is None:
        return None
    if hasattr(value, "timestamp"):
        return float(value.timestamp())
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def find_processes(results_dir: Path, *, run_id: str | None = None,
                   older_than_s: float = 0.0) -> list[Leftover]:
    """Journaled server processes not torn down that still run (cookie/start time match)."""
    from pytest_fmbench.endpoints import process

    found: list[Leftover] = []
    cutoff = time.time() - older_than_s
    directories = sorted({path.parent for path in results_dir.rglob("journal*.jsonl")})
    for directory in directories:
        lines: list[dict[str, Any]] = []
        for path in sorted(directory.glob("journal*.jsonl")):
            lines += read_journal(path)
        for entry in open_entries(lines):
            plan = entry.get("plan") or {}
            if plan.get("kind") != "process" or (run_id and entry.get("run_id") != run_id):
                continue
            if float(entry.get("time") or 0) > cutoff:
                continue
            identity = process.ProcessIdentity.from_json(plan.get("process") or {})
            if process.processes_of(identity):
                found.append(Leftover("process", describe_plan(plan), str(entry.get("run_id")),
                                      float(entry.get("time") or 0) or None,
                                      {**plan, "entry_id": entry.get("id")}, directory))
    return found


def find_containers(*, run_id: str | None = None, older_than_s: float = 0.0) -> list[Leftover]:
    """Labelled containers of every runtime that answers (Podman, Docker)."""
    from pytest_fmbench.endpoints import container_runtime

    found: list[Leftover] = []
    cutoff = time.time() - older_than_s
    for runtime in container_runtime.runtimes_present():
        for item in container_runtime.list_ours(runtime, run_id):
            created = item["created"]
            if older_than_s and (created is None or created > cutoff):
                continue
            plan = {"kind": "container", "name": item["name"], "run_id": item["run_id"],
                    **runtime.to_json()}
            found.append(Leftover("container", item["name"], item["run_id"], created, plan))
    return found


def delete(leftover: Leftover, sm: Any, *, log: Callable[[str], None],
           deadline_s: float, poll_s: float) -> None:
    if leftover.kind == "container":
        assert leftover.plan is not None
        if not reap_plan(leftover.plan, log=log):
            raise ReapFailed(f"container {leftover.name} lost our label or is gone: left alone")
        return
    if leftover.kind == "process":
        assert leftover.plan is not None
        reap_plan(leftover.plan, log=log)
        if leftover.source is not None:
            with open(leftover.source / "journal-sweep.jsonl", "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"op": "torn_down", "id": leftover.plan.get("entry_id"),
                                         "by": "sweep", "time": time.time()}) + "\n")
        return
    # Tags checked again right before the delete: never delete what is not ours.
    outcome = sagemaker.delete_if_ours(sm, leftover.kind, leftover.name, leftover.run_id,
                                       deadline_s=deadline_s, poll_s=poll_s, log=log)
    if outcome == "not ours":
        raise ReapFailed(f"{leftover.kind} {leftover.name} lost our tags: left alone")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pytest_fmbench sweep",
        description="Delete what pytest-fmbench created and left running, found by its tags "
                    "(fmbench:created-by, fmbench:run-id) and by the journals of a results dir.")
    parser.add_argument("--run-id", help="only this run's resources (default: every run's)")
    parser.add_argument("--older-than", default="0", metavar="DURATION",
                        help="only resources created longer ago than this (0, 90s, 30m, 2h, 1d)")
    parser.add_argument("--dry-run", action="store_true", help="list, delete nothing")
    parser.add_argument("--region", help="AWS region (default: AWS_REGION / AWS_DEFAULT_REGION)")
    parser.add_argument("--results-dir", type=Path,
                        help="also stop server processes journaled under this directory")
    parser.add_argument("--no-sagemaker", action="store_true", help="skip SageMaker")
    parser.add_argument("--containers", action="store_true",
                        help="also remove Podman/Docker containers labelled as pytest-fmbench's")
    parser.add_argument("--wait", default="1h", metavar="DURATION",
                        help="how long to wait for an endpoint to leave Creating (default 1h)")
    args = parser.parse_args(argv)
    try:
        older_than_s = parse_duration(args.older_than)
        wait_s = parse_duration(args.wait)
    except ValueError as exc:
        print(f"sweep: {exc}", file=sys.stderr)
        return 2
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr)
    leftovers: list[Leftover] = []
    sm: Any = None
    region = args.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if not args.no_sagemaker:
        if not region and not args.results_dir and not args.containers:
            print("sweep: no AWS region: pass --region (or set AWS_REGION), or --no-sagemaker "
                  "with --results-dir", file=sys.stderr)
            return 2
        if region:
            try:
                sm = sagemaker.control_client(region)
                leftovers += find_sagemaker(sm, run_id=args.run_id, older_than_s=older_than_s)
            except Exception as exc:  # noqa: BLE001 - one clear line, no traceback
                print(f"sweep: cannot list SageMaker resources in {region}: "
                      f"{type(exc).__name__}: {exc}", file=sys.stderr)
                return 2
    if args.results_dir:
        leftovers += find_processes(args.results_dir, run_id=args.run_id,
                                    older_than_s=older_than_s)
    if args.containers:
        try:
            leftovers += find_containers(run_id=args.run_id, older_than_s=older_than_s)
        except Exception as exc:  # noqa: BLE001 - one clear line, no traceback
            print(f"sweep: cannot list containers: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 2
    failed = 0
    for leftover in leftovers:
        if args.dry_run:
            print(f"would delete {leftover.line()}")
            continue
        try:
            delete(leftover, sm, log=log, deadline_s=wait_s, poll_s=15.0)
            print(f"deleted {leftover.line()}")
        except (ReapFailed, sagemaker.DeleteFailed, Exception) as exc:  # noqa: BLE001
            failed += 1
            print(f"FAILED {leftover.line()}: {exc}")
    verb = "would delete" if args.dry_run else "deleted"
    done = len(leftovers) if args.dry_run else len(leftovers) - failed
    print(f"sweep: found {len(leftovers)}, {verb} {done}, failed {failed}"
          + (f" (run {args.run_id})" if args.run_id else ""))
    if args.dry_run:
        return 1 if leftovers else 0
    return 1 if failed else 0
