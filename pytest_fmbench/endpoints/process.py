"""Process control for server backends, in one place: spawn, health, stop, reap.

Used by the local backend (``transformers serve``) and the command backend
(``openai.deploy.command``). Every server runs in its own session (its own process group),
so stopping it stops everything it started.

Three layers keep a server from outliving the run:

- ``stop_group``: the normal teardown (SIGTERM to the group, SIGKILL after a timeout);
- ``die_with_parent_fn``: PR_SET_PDEATHSIG on the process we fork (Linux), which reaches
  only that process: ``/bin/sh -c`` (dash) does not exec the command, so the real server
  is a grandchild that PDEATHSIG never reaches;
- the reaper (``pytest_fmbench.safety.reaper``), which outlives pytest and kills what the
  journal names: every process carrying the server's cookie in its environment, and the
  group leader only if its start time still matches (a pid can be reused, REVIEW M11).
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

# Set in every server's environment; inherited by whatever the server starts.
COOKIE_ENV = "FMBENCH_PROCESS_COOKIE"

# Loopback only: an http_proxy in the environment must never see these requests.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def new_cookie() -> str:
    return secrets.token_hex(12)


@dataclasses.dataclass(frozen=True)
class ProcessIdentity:
    """What tells a server's processes apart from anything that reuses their pids later."""

    cookie: str
    pid: int | None = None
    start_time: int | None = None  # clock ticks after boot (/proc/<pid>/stat field 22)

    def to_json(self) -> dict[str, Any]:
        return {"cookie": self.cookie, "pid": self.pid, "start_time": self.start_time}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProcessIdentity:
        pid, start = data.get("pid"), data.get("start_time")
        return cls(str(data.get("cookie") or ""), pid if isinstance(pid, int) else None,
                   start if isinstance(start, int) else None)


# -- /proc -----------------------------------------------------------------------------

def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces or parentheses: fields resume after the last ")".
    return text[text.rfind(")") + 2:].split()


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks after boot, None if it is gone (or not Linux)."""
    fields = _stat_fields(pid)
    if fields is None or len(fields) < 20 or fields[0] == "Z":
        return None
    return int(fields[19])  # field 22 of stat; the list starts at field 3


def identify(pid: int, cookie: str) -> ProcessIdentity:
    return ProcessIdentity(cookie, pid, start_time(pid))


def _has_cookie(pid: int, cookie: str) -> bool:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return f"{COOKIE_ENV}={cookie}".encode() in environ.split(b"\0")


def processes_of(identity: ProcessIdentity) -> list[int]:
    """Live pids that belong to the server: its cookie, or the leader with its start time."""
    found: set[int] = set()
    if identity.pid is not None and identity.start_time is not None \
            and start_time(identity.pid) == identity.start_time:
        found.add(identity.pid)
    if identity.cookie:
        try:
            entries = os.listdir("/proc")
        except OSError:
            entries = []
        me = os.getpid()
        for entry in entries:
            if entry.isdigit() and int(entry) != me and _has_cookie(int(entry), identity.cookie):
                fields = _stat_fields(int(entry))
                if fields is not None and fields[0] != "Z":
                    found.add(int(entry))
    return sorted(found)


def reap(identity: ProcessIdentity, timeout_s: float = 10.0) -> list[int]:
    """SIGTERM every process of the server, SIGKILL what is left after ``timeout_s``.

    Never signals a bare pid: only the leader whose start time matches, and processes that
    carry the cookie. Returns the pids that were signalled.
    """
    pids = processes_of(identity)
    if not pids:
        return []
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and processes_of(identity):
        time.sleep(0.1)
    for pid in processes_of(identity):
        _signal(pid, signal.SIGKILL)
    return pids


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


# -- spawning --------------------------------------------------------------------------

def spawn(argv: list[str], *, log: Any, env: dict[str, str], cookie: str,
          cwd: str | None = None) -> subprocess.Popen[bytes]:
    """Start a server in its own session, with the cookie in its environment."""
    return subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        env={**env, COOKIE_ENV: cookie}, cwd=cwd, start_new_session=True,
        preexec_fn=die_with_parent_fn())  # noqa: PLW1509 - only prctl and getppid


def die_with_parent_fn() -> Any:
    """A preexec_fn making the forked process get SIGTERM if we die, even by SIGKILL (Linux).

    It reaches only the forked process, not what that one forks (see the module docstring).
    """
    # PDEATHSIG fires when the *thread* that forked exits, so it is only safe from the main
    # thread; a server started from a pool thread would die with that thread.
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    parent = os.getpid()
    # Resolved before fork: the child of a threaded parent must not take loader locks.
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def preexec() -> None:
        prctl(1, signal.SIGTERM, 0, 0, 0)  # 1 == PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


# -- health ----------------------------------------------------------------------------

def url_ok(url: str, timeout_s: float = 2.0) -> bool:
    """Whether ``url`` answers 2xx (loopback: no proxy)."""
    try:
        with _OPENER.open(url, timeout=timeout_s) as response:
            return 200 <= int(response.status) < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


# -- stopping --------------------------------------------------------------------------

def stop_group(proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Stop our child's process group: SIGTERM, SIGKILL after ``timeout_s``, then strays."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        signal_group(proc.pid, sig)
        try:
            proc.wait(timeout=timeout_s)
            break
        except subprocess.TimeoutExpired:
            continue
    else:
        proc.wait()
    # The leader may exit before stray children of its group: sweep them too.
    signal_group(proc.pid, signal.SIGKILL)


def signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def kill_group(pgid: int) -> None:
    signal_group(pgid, signal.SIGKILL)


def stop_process_group(pgid: int, timeout_s: float = 10.0) -> None:
    """SIGTERM a process group that is not our child, then SIGKILL what remains.

    Only for a group we know is ours right now (see ``reap`` for one logged earlier).
    """
    signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.1)
    kill_group(pgid)


class StopsOrphanedServer:
    """For backends whose server is a process group described at deploy (``process``):
    the controller stops it when the worker that deployed it died (``cleanup_orphans``).

    Only what the description identifies (cookie, or pid with its start time) is signalled.
    """

    @classmethod
    def cleanup_orphan(cls, config: Any, experiment: Any, context: Any,
                       description: dict[str, Any]) -> None:
        process = description.get("process")
        if isinstance(process, dict):
            reap(ProcessIdentity.from_json(process))
