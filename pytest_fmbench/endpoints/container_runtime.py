"""The container runtime's command line (Podman or Docker), shared by the container backend,
the reaper and ``sweep``.

The CLI, not an SDK: Podman needs no socket service that way, and the reaper (a plain process
outside pytest) can remove a container with one command.

Which runtime: ``container.runtime`` in the config, else ``FMBENCH_CONTAINER_RUNTIME``, else
Docker when its daemon answers, else Podman when installed. Options for every command (before
the subcommand, e.g. ``--runtime runc --cgroup-manager=cgroupfs``) come from
``FMBENCH_CONTAINER_FLAGS``, and extra ``run`` options for every container (volumes, ulimits)
from ``FMBENCH_CONTAINER_RUN_ARGS`` (both split like a shell would).

Podman starts containers with higher open-file and process limits than an unprivileged host
may grant (its defaults: 1048576 / 4194304), which runc refuses ("error setting rlimit");
where this process's hard limits (for processes: also the kernel's ``pid_max``) are lower,
the container gets those instead (``default_run_args``). Docker's daemon applies its own limits, so nothing is added there.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import re
import resource
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pytest_fmbench.endpoints.container_spec import (
    CREATED_BY,
    LABEL_CREATED_BY,
    LABEL_RUN_ID,
    is_podman,
)

RUNTIME_ENV = "FMBENCH_CONTAINER_RUNTIME"
FLAGS_ENV = "FMBENCH_CONTAINER_FLAGS"
RUN_ARGS_ENV = "FMBENCH_CONTAINER_RUN_ARGS"
# Podman's limits when none are configured (what runc then fails to set on a lower host).
_PODMAN_LIMITS = {"nofile": (resource.RLIMIT_NOFILE, 1048576),
                  "nproc": (resource.RLIMIT_NPROC, 4194304)}
CLI_TIMEOUT_S = 120.0


class ContainerCommandFailed(Exception):
    """A runtime command failed (the message quotes its output)."""


@dataclasses.dataclass(frozen=True)
class Runtime:
    """One container runtime CLI and the options every invocation gets."""

    path: str
    global_flags: tuple[str, ...] = ()

    @property
    def podman(self) -> bool:
        return is_podman(self.path)

    def argv(self, *args: str) -> list[str]:
        return [self.path, *self.global_flags, *args]

    def run(self, *args: str, timeout_s: float = CLI_TIMEOUT_S, check: bool = True,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        try:
            done = subprocess.run(self.argv(*args), capture_output=True, text=True,
                                  timeout=timeout_s, env=env, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ContainerCommandFailed(f"{self.path} {args[0] if args else ''}: {exc}") from None
        if check and done.returncode != 0:
            raise ContainerCommandFailed(f"{self.path} {' '.join(args[:2])} exited {done.returncode}: "
                                f"{(done.stderr or done.stdout).strip()[-800:]}")
        return done

    def to_json(self) -> dict[str, Any]:
        return {"runtime": self.path, "global_flags": list(self.global_flags)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Runtime:
        return cls(str(data.get("runtime") or "podman"),
                   tuple(str(f) for f in data.get("global_flags") or ()))


def _env_words(name: str) -> tuple[str, ...]:
    return tuple(shlex.split(os.environ.get(name, "")))


def _docker_answers(path: str) -> bool:
    try:
        return subprocess.run([path, "version", "--format", "{{.Server.Version}}"],
                              capture_output=True, timeout=15, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def find_runtime(setting: str | None = None) -> Runtime | None:
    """The runtime to use (see the module docstring), or None when there is none."""
    flags = _env_words(FLAGS_ENV)
    chosen = setting or os.environ.get(RUNTIME_ENV)
    if chosen:
        path = shutil.which(chosen)
        return Runtime(path, flags) if path else None
    docker = shutil.which("docker")
    if docker and _docker_answers(docker):
        return Runtime(docker, flags)
    podman = shutil.which("podman")
    return Runtime(podman, flags) if podman else None


def default_run_args(runtime: Runtime) -> list[str]:
    """``run`` options every container gets: the env's, then Podman's lowered limits."""
    args = list(_env_words(RUN_ARGS_ENV))
    if runtime.podman:
        given = " ".join(args)
        for name, (limit, podman_default) in _PODMAN_LIMITS.items():
            hard = resource.getrlimit(limit)[1]
            if name == "nproc":
                # No more processes can exist than pids; some kernels refuse a higher limit.
                hard = min(hard if hard != resource.RLIM_INFINITY else podman_default, _pid_max())
            if f"{name}=" not in given and hard != resource.RLIM_INFINITY and hard < podman_default:
                args += ["--ulimit", f"{name}={hard}:{hard}"]
    return args


def _pid_max() -> int:
    try:
        return int(Path("/proc/sys/kernel/pid_max").read_text().strip())
    except (OSError, ValueError):
        return _PODMAN_LIMITS["nproc"][1]


def label_of(runtime: Runtime, name: str, label: str) -> str | None:
    """A container's label value; None when the container does not exist."""
    done = runtime.run("inspect", "--type", "container", "--format", "{{json .Config.Labels}}",
                       name, check=False)
    if done.returncode != 0:
        return None
    try:
        labels = json.loads(done.stdout.strip() or "{}") or {}
    except json.JSONDecodeError:
        return None
    return str(labels.get(label, "")) if isinstance(labels, dict) else ""


def remove_if_ours(runtime: Runtime, name: str, run_id: str, *, stop_timeout_s: float = 0.0) -> str:
    """Remove the container ``name`` if it carries ``run_id``'s label: "removed", "gone" or
    "not ours" (left alone). ``stop_timeout_s`` 0 (the reaper, sweep): killed at once.
    Raises ``ContainerCommandFailed`` when the removal fails."""
    owner = label_of(runtime, name, LABEL_RUN_ID)
    if owner is None:
        return "gone"
    if owner != run_id:
        return "not ours"
    if stop_timeout_s > 0:
        # SIGTERM first, SIGKILL after the timeout: the server may flush its logs.
        runtime.run("stop", "-t", str(max(1, round(stop_timeout_s))), name, check=False,
                    timeout_s=stop_timeout_s + CLI_TIMEOUT_S)
    runtime.run("rm", "-f", name)
    return "removed"


def list_ours(runtime: Runtime, run_id: str | None = None) -> list[dict[str, Any]]:
    """Containers labelled as pytest-fmbench's (of ``run_id`` if given), running or not:
    ``[{"name", "run_id", "created"}]`` (created: epoch seconds, or None)."""
    filters = ["--filter", f"label={LABEL_CREATED_BY}={CREATED_BY}"]
    if run_id:
        filters += ["--filter", f"label={LABEL_RUN_ID}={run_id}"]
    done = runtime.run("ps", "-a", *filters, "--format", "{{.Names}}")
    found: list[dict[str, Any]] = []
    for name in (line.strip() for line in done.stdout.splitlines()):
        if not name:
            continue
        facts = runtime.run("inspect", "--type", "container", "--format",
                            "{{json .Config.Labels}}\t{{json .Created}}", name, check=False)
        if facts.returncode != 0:
            continue  # removed meanwhile
        labels_text, _, created_text = facts.stdout.strip().partition("\t")
        try:
            labels = json.loads(labels_text or "{}") or {}
            created = _epoch(json.loads(created_text or "null"))
        except json.JSONDecodeError:
            continue
        # The filter matched, but the label is checked again: never remove what is not ours.
        if labels.get(LABEL_CREATED_BY) == CREATED_BY and labels.get(LABEL_RUN_ID):
            found.append({"name": name, "run_id": str(labels[LABEL_RUN_ID]), "created": created})
    return found


def _epoch(value: Any) -> float | None:
    """``2026-12-01T08:14:20.972035927Z`` (Podman and Docker) → epoch seconds."""
    if not isinstance(value, str) or not value:
        return None
    text = re.sub(r"(\.\d{6})\d+", r"\1", value.strip()).replace("Z", "+00:00")
    text = re.sub(r" [A-Z]{3,4}$", "", text)
    try:
        return datetime.datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def runtimes_present(paths: Sequence[str] = ("podman", "docker")) -> list[Runtime]:
    """Every installed runtime that answers (for ``sweep``)."""
    flags = _env_words(FLAGS_ENV)
    found = []
    for name in paths:
        path = shutil.which(name)
        if not path:
            continue
        if not is_podman(path) and not _docker_answers(path):
            continue
        found.append(Runtime(path, flags))
    return found
