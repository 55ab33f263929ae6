"""A server started by a shell command (``openai.deploy.command``), stopped on teardown.

The command runs with ``sh -c`` in a new session (its own process group), so teardown stops
everything it started: SIGTERM to the group, SIGKILL after ``stop_timeout_s``. On Linux the
server also gets SIGTERM if this process dies. Ready means ``health_url`` answered 2xx; if
the command exits first, or ``startup_timeout_s`` passes, the error quotes the log's tail.

The command's environment is ours plus ``env`` plus ``FMBENCH_PORT`` (the port the server
should listen on), so ``vllm serve MODEL --port $FMBENCH_PORT`` needs no fixed port.
"""

from __future__ import annotations

import os
import subprocess
import time
import urllib.error
import urllib.request
import weakref
from pathlib import Path
from typing import IO

from pytest_fmbench.endpoints.local_model import (
    _die_with_parent_fn,
    _kill_group,
    _terminate_group,
)
from pytest_fmbench.errors import EndpointError

PORT_ENV = "FMBENCH_PORT"


class CommandServer:
    def __init__(self, command: str, *, health_url: str, port: int, log_path: Path,
                 startup_timeout_s: float = 900.0, stop_timeout_s: float = 30.0,
                 env: dict[str, str] | None = None, cwd: str | None = None,
                 key: str | None = None) -> None:
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
            self._proc = subprocess.Popen(
                ["/bin/sh", "-c", self.command], stdin=subprocess.DEVNULL, stdout=self._log,
                stderr=subprocess.STDOUT, env=env, cwd=self.cwd, start_new_session=True,
                preexec_fn=_die_with_parent_fn())  # noqa: PLW1509 - only set on the main thread
        except OSError as exc:
            self.stop()
            raise EndpointError(f"cannot run the deploy command: {exc}", key=self.key,
                                fix="check deploy.cwd and that /bin/sh exists") from None
        # Last resort for a forgotten stop(): at interpreter exit or garbage collection.
        self._finalizer = weakref.finalize(self, _kill_group, self._proc.pid)
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
            _terminate_group(proc, self.stop_timeout_s)
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
    try:
        with urllib.request.urlopen(url, timeout=2.0) as response:
            return 200 <= int(response.status) < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False
