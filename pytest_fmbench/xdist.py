"""pytest-xdist integration: one experiment per worker, and ``-n auto`` sized by experiments.

``--dist loadgroup`` is broken on pytest 9.2 + xdist 3.8 (every worker deploys every
endpoint), so cases are scheduled by a ``LoadScopeScheduling`` whose scope is the experiment:
all cases of one experiment run on one worker (one deploy, one teardown), and different
experiments run on different workers. Only imported when xdist is installed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from xdist.scheduler import LoadScopeScheduling

SCOPE_PREFIX = "fmbench-experiment::"
# The scheduler relies on LoadScopeScheduling's internals (its work queue, rescheduling after
# a crash): a major release may change them silently and deploy an endpoint twice.
TESTED_MAJOR = 3


def untested_xdist(version: str) -> str | None:
    """Why ``-n`` is refused with this pytest-xdist version, or None when it is tested."""
    major = version.split(".", 1)[0]
    if major.isdigit() and int(major) == TESTED_MAJOR:
        return None
    return (f"pytest-fmbench schedules experiments with pytest-xdist {TESTED_MAJOR}.x, and "
            f"pytest-xdist {version} is installed: its scheduler internals may differ, which "
            "could deploy an endpoint once per worker\n  fix: pip install "
            f"'pytest-xdist>={TESTED_MAJOR}.6,<{TESTED_MAJOR + 1}' (or pytest-fmbench[xdist]), "
            "or run without -n")


def remote_gateways(specs: list[str]) -> list[str]:
    """The ``--tx`` specs whose workers may run on another host (ssh=, socket=, via a proxy).

    Such a worker's records, endpoint events and journal would land on that host's disk and
    its reaper connection could not reach this one: refused until they travel over xdist's
    channel (the report would otherwise be silently empty).
    """
    import execnet

    remote = []
    for spec in specs:
        raw = spec.split("*", 1)[1] if spec.split("*", 1)[0].isdigit() else spec
        try:
            parsed = execnet.XSpec(raw)
        except Exception:  # noqa: BLE001, S112 - xdist reports a malformed spec itself
            continue
        if not parsed.popen or parsed.via:
            remote.append(spec)
    return remote


REMOTE_WORKERS = (
    "--tx {specs}: workers on other hosts are not supported yet: their records, endpoint "
    "events and journal would stay on those hosts (an empty or partial report) and a killed "
    "worker's endpoints could not be reaped from here\n  fix: run whole experiments per host "
    "with --fmbench-shard K/N and combine them with 'python -m pytest_fmbench merge DIR... "
    "--out DIR', or spread one case's load over hosts with load.executor: ray; locally, "
    "use -n N (popen workers)")


def param_id(nodeid: str) -> str | None:
    """``path::test[alpha-payload_x-c2]`` → ``alpha-payload_x-c2``."""
    if not nodeid.endswith("]") or "[" not in nodeid:
        return None
    return nodeid[nodeid.index("[") + 1 : -1]


def experiment_of(nodeid: str, case_experiments: Mapping[str, str]) -> str | None:
    """The experiment of a case's node id, also when other parameters join the case id."""
    param = param_id(nodeid)
    if param is None:
        return None
    if param in case_experiments:
        return case_experiments[param]
    # ``pytest.mark.parametrize`` on the same test joins ids with "-": find the case id part.
    parts = param.split("-")
    for start in range(len(parts)):
        for end in range(len(parts), start, -1):
            candidate = "-".join(parts[start:end])
            if candidate in case_experiments:
                return case_experiments[candidate]
    return None


class ExperimentScheduling(LoadScopeScheduling):
    """Scope = experiment for benchmark cases; xdist's default (module) for other tests."""

    def __init__(self, config: Any, log: Any = None, *,
                 case_experiments: Mapping[str, str]) -> None:
        super().__init__(config, log)
        self.case_experiments = dict(case_experiments)

    def remove_node(self, node: Any) -> str | None:
        """A crashed worker: re-queue only its unfinished work, never the case it died in.

        xdist 3.8's version re-queues completed work units too; a replacement worker then
        receives an empty unit and the run hangs. The case running at the crash is reported
        as crashed by xdist and counted as missing by the report, not re-run.
        """
        workload = self.assigned_work.pop(node)
        pending = [(scope, nodeid) for scope, unit in workload.items()
                   for nodeid, done in unit.items() if not done]
        if not pending:
            return None
        scope, crashed = pending[0]
        workload[scope][crashed] = True
        for unit_scope, unit in workload.items():
            if not all(unit.values()):
                self.workqueue[unit_scope] = unit
        for other in self.assigned_work:
            self._reschedule(other)
        return crashed

    def _split_scope(self, nodeid: str) -> str:
        experiment = experiment_of(nodeid, self.case_experiments)
        if experiment is None:
            return str(super()._split_scope(nodeid))
        return SCOPE_PREFIX + experiment


def auto_workers(experiments: int, cpus: int | None = None) -> int:
    """``-n auto``: one worker per experiment, capped by the CPUs (at least one)."""
    return max(1, min(experiments, cpus or os.cpu_count() or 1))
