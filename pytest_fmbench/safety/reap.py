"""Carry out a journaled plan: delete what it names, and only what is provably ours.

One function for every caller (the reaper, the controller's orphan cleanup, ``sweep``):

- ``process``: the processes carrying the server's cookie, and the group leader only if its
  start time still matches (``endpoints/process.py``);
- ``sagemaker``: endpoint, endpoint config and model, each only if tagged with the run id,
  waiting out ``Creating`` and retrying throttled calls (``safety/sagemaker.py``);
- ``container``: a Podman/Docker container by name, only if its ``fmbench.run-id`` label
  matches (``endpoints/container_runtime.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pytest_fmbench.endpoints import container_runtime, process
from pytest_fmbench.endpoints.container_spec import LABEL_RUN_ID
from pytest_fmbench.safety import sagemaker

Log = Callable[[str], None]


class ReapFailed(Exception):
    """Something named by a plan may still be running."""


def reap_plan(plan: dict[str, Any], *, log: Log = print, dry_run: bool = False,
              deadline_s: float | None = None, poll_s: float | None = None) -> list[str]:
    """Delete what ``plan`` names; returns what was (or, dry, would be) deleted."""
    kind = plan.get("kind")
    if kind == "process":
        identity = process.ProcessIdentity.from_json(plan.get("process") or {})
        pids = process.processes_of(identity)
        if dry_run or not pids:
            return [f"process/{pid}" for pid in pids]
        return [f"process/{pid}" for pid in process.reap(identity)]
    if kind == "sagemaker":
        if dry_run:
            return [f"{k}/{n}" for k, n in plan.get("resources") or []]
        try:
            return sagemaker.delete_plan(
                plan, deadline_s=deadline_s, log=log,
                poll_s=poll_s if poll_s is not None else float(plan.get("poll_s") or 5.0))
        except sagemaker.DeleteFailed as exc:
            raise ReapFailed(str(exc)) from exc
    if kind == "container":
        runtime = container_runtime.Runtime.from_json(plan)
        name, run_id = str(plan.get("name")), str(plan.get("run_id"))
        if dry_run:
            owner = container_runtime.label_of(runtime, name, LABEL_RUN_ID)
            return [f"container/{name}"] if owner == run_id else []
        try:
            outcome = container_runtime.remove_if_ours(runtime, name, run_id)
        except container_runtime.ContainerCommandFailed as exc:
            raise ReapFailed(str(exc)) from exc
        return [f"container/{name}"] if outcome == "removed" else []
    raise ReapFailed(f"unknown plan kind {kind!r}: nothing done")


def delete_commands(plan: dict[str, Any], run_id: str, results_dir: str | None = None) -> list[str]:
    """What a human runs to delete a plan's leftovers."""
    if plan.get("kind") == "sagemaker":
        return sagemaker.delete_commands(plan)
    where = f" --results-dir {results_dir}" if results_dir else ""
    return [f"python -m pytest_fmbench sweep --run-id {run_id}{where}"]


def describe_plan(plan: dict[str, Any]) -> str:
    if plan.get("kind") == "sagemaker":
        names = ", ".join(f"{k} {n}" for k, n in plan.get("resources") or [])
        return f"SageMaker {names} in {plan.get('region')}"
    if plan.get("kind") == "container":
        return f"container {plan.get('name')} ({plan.get('runtime')})"
    if plan.get("kind") == "process":
        info = plan.get("process") or {}
        return f"server process group {info.get('pid')} (cookie {str(info.get('cookie'))[:8]}...)"
    return str(plan)
