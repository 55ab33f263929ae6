"""A server started by a shell command (``openai.deploy.command``), stopped on teardown.

The command runs with ``sh -c`` in a new session (its own process group), so teardown stops
everything it started: SIGTERM to the group, SIGKILL after ``stop_timeout_s``. If this
process dies (even by SIGKILL), the shell gets SIGTERM (PR_SET_PDEATHSIG, Linux), but the
server the shell started does not (dash does not exec the command): the run's reaper
(``pytest_fmbench.safety.reaper``) stops it, found by the cookie in its environment (see
``process.py``). Ready means ``health_url`` answered 2xx; if the command exits first, or
``startup_timeout_s`` passes, the error quotes the log's tail.

The command's environment is ours plus ``env`` plus ``FMBENCH_PORT`` (the port the server
should listen on), so ``vllm serve MODEL --port $FMBENCH_PORT`` needs no fixed port.
"""

from __future__ import annotations

import os
import subprocess
import time
import weakref
from pathlib import Path
from typing import IO

from pytest_fmbench.endpoints import process
from pytest_fmbench.errors import EndpointError

PORT_ENV = "FMBENCH_PORT"


class CommandServer:
    def __init__(self, command: str, *, health_url: str, port: int, log_path: Path,
                 startup_timeout_s: float = 900.0, stop_timeout_s: float = 30.0,
                 env: dict[str, str] | None = None, cwd: str | None = None,
                 key: str | None = None, cookie: str | None = None) -> None:
        self.command = command
        self.health_url = health_url
        self.port = port
        self.log_path = log_path
        self.startup_timeout_s = startup_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.env = dict(env or {})
        self.cwd = cwd
        self.key = key  # the config key, for messages
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._finalizer: weakref.finalize | None = None
        # In the server's environment: what the reaper finds it by if this process dies.
        self.cookie = cookie or process.new_cookie()

    def identity(self) -> process.ProcessIdentity:
        """The cookie, and once started the shell's pid with its start time."""
        if self._proc is None:
            return process.ProcessIdentity(self.cookie)
        return process.identify(self._proc.pid, self.cookie)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Run the command and block until the health URL answers 2xx."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, **self.env, PORT_ENV: str(self.port)}
        try:
            self._proc = process.spawn(["/bin/sh", "-c", self.command], log=self._log, env=env,
                                       cookie=self.cookie, cwd=self.cwd)
        except OSError as exc:
            self.stop()
            raise EndpointError(f"cannot run the deploy command: {exc}", key=self.key,
                                fix="check deploy.cwd and that /bin/sh exists") from None
        # Last resort for a forgotten stop(): at interpreter exit or garbage collection.
        self._finalizer = weakref.finalize(self, process.kill_group, self._proc.pid)
        failure = self._wait_ready()
        if failure is not None:
            tail = self.log_tail()
            self.stop()
            raise EndpointError(
                f"the deploy command {failure}; log {self.log_path}, last lines:\n{tail}",
                key=self.key,
                fix="run the command by hand to see it come up; check deploy.health_url "
                    f"(now {self.health_url}) and deploy.startup_timeout_s")

    def _wait_ready(self) -> str | None:
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            code = self._proc.poll()
            if code is not None:
                return f"exited with code {code} before {self.health_url} answered"
            if healthy(self.health_url):
                return None
            if time.monotonic() >= deadline:
                return f"did not answer {self.health_url} within {self.startup_timeout_s:g} s"
            time.sleep(0.2)

    def stop(self) -> None:
        """Stop the whole process group; safe to call twice or after a failed start."""
        proc, self._proc = self._proc, None
        if proc is not None:
            process.stop_group(proc, self.stop_timeout_s)
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 20) -> str:
        if self._log is not None:
            self._log.flush()
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def healthy(url: str) -> bool:
    return process.url_ok(url)
