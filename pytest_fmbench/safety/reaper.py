"""The reaper: a small process outside pytest that deletes what a killed run left running.

Like testcontainers' Ryuk. The controller starts it (``start_reaper``) before the first
deploy, in a new session, so it survives SIGKILL of pytest, of its process group and of
xdist workers. It listens on loopback; the controller and every xdist worker hold one
connection each and send their journal lines (``journal.py``) over it, each acknowledged.

- A connection that ends with ``done`` was a normal end: nothing of it is reaped.
- A worker's connection that drops without ``done`` (a SIGKILLed worker): its entries that
  were not torn down are reaped at once.
- The controller's connection that drops without ``done`` (SIGKILL of pytest, OOM, a CI
  timeout): every entry of the run that was not torn down is reaped.

Reaping carries out each entry's plan (``reap.py``): processes by cookie and start time,
SageMaker resources by name after checking their run-id tag, waiting for an endpoint to
leave ``Creating``. What it did goes to ``journal-reaper.jsonl`` and its log to
``logs/reaper.log`` in the results dir. It exits when no connection is left and nothing is
being reaped (or when nobody connected within ``IDLE_EXIT_S``).

Run as ``python -m pytest_fmbench.safety.reaper --run-id ID --results-dir DIR``; the token
that connections must present comes in the ``FMBENCH_REAPER_TOKEN`` environment variable, and
the port it listens on is the one line it prints on stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from pytest_fmbench.safety.reap import ReapFailed, describe_plan, reap_plan

TOKEN_ENV = "FMBENCH_REAPER_TOKEN"
# Reaping deadlines (for tests; a real endpoint may sit in Creating for about an hour).
DEADLINE_ENV = "FMBENCH_REAPER_DEADLINE_S"
POLL_ENV = "FMBENCH_REAPER_POLL_S"
IDLE_EXIT_S = 60.0
START_TIMEOUT_S = 30.0


@dataclasses.dataclass
class _Connection:
    number: int
    role: str = ""
    worker: str = ""
    done: bool = False


class Reaper:
    def __init__(self, run_id: str, results_dir: Path, token: str, *,
                 deadline_s: float | None = None, poll_s: float | None = None,
                 log: IO[str] | None = None) -> None:
        self.run_id = run_id
        self.results_dir = results_dir
        self.token = token
        self.deadline_s = deadline_s
        self.poll_s = poll_s
        self._log_file = log or sys.stderr
        self._lock = threading.Lock()
        self._entries: dict[str, dict[str, Any]] = {}  # id -> intent (with "owner")
        self._connections: dict[int, _Connection] = {}
        self._reaping = 0
        self._ever_connected = False
        self._changed = threading.Condition(self._lock)
        self.server = socket.create_server(("127.0.0.1", 0))

    @property
    def port(self) -> int:
        return int(self.server.getsockname()[1])

    def log(self, message: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        try:
            self._log_file.write(f"{stamp} {message}\n")
            self._log_file.flush()
        except (OSError, ValueError):
            pass

    # -- serving -----------------------------------------------------------------------
    def serve(self) -> None:
        threading.Thread(target=self._accept, daemon=True, name="accept").start()
        started = time.monotonic()
        with self._changed:
            while True:
                idle = not self._connections and not self._reaping
                if idle and (self._ever_connected or time.monotonic() - started > IDLE_EXIT_S):
                    break
                self._changed.wait(timeout=1.0)
        self.log("no connection left: exiting")

    def _accept(self) -> None:
        number = 0
        while True:
            try:
                sock, _ = self.server.accept()
            except OSError:
                return
            number += 1
            threading.Thread(target=self._serve_connection, args=(sock, number),
                             daemon=True, name=f"conn-{number}").start()

    def _serve_connection(self, sock: socket.socket, number: int) -> None:
        connection = _Connection(number)
        reader = sock.makefile("rb")
        authenticated = False
        try:
            for raw in reader:
                try:
                    message = json.loads(raw)
                except ValueError:
                    break
                if not authenticated:
                    if message.get("op") != "hello" or message.get("token") != self.token:
                        sock.sendall(b"no\n")
                        break
                    authenticated = True
                    self._hello(connection, message)
                else:
                    self._handle(connection, message)
                sock.sendall(b"ok\n")
        except OSError:
            pass
        finally:
            sock.close()
            if authenticated:
                self._dropped(connection)

    def _hello(self, connection: _Connection, message: dict[str, Any]) -> None:
        connection.role = str(message.get("role") or "worker")
        connection.worker = str(message.get("worker") or "")
        with self._changed:
            self._connections[connection.number] = connection
            self._ever_connected = True
        self.log(f"{connection.role} {connection.worker or ''} connected (pid {message.get('pid')})")

    def _handle(self, connection: _Connection, message: dict[str, Any]) -> None:
        op, entry_id = message.get("op"), message.get("id")
        with self._lock:
            if op == "intent" and isinstance(entry_id, str):
                self._entries[entry_id] = {**message, "owner": connection.number}
            elif op == "update" and entry_id in self._entries:
                self._entries[str(entry_id)]["plan"] = message.get("plan")
            elif op == "torn_down":
                self._entries.pop(str(entry_id), None)
            elif op == "done":
                connection.done = True

    def _dropped(self, connection: _Connection) -> None:
        with self._changed:
            self._connections.pop(connection.number, None)
            if connection.done:
                victims: list[dict[str, Any]] = []
            elif connection.role == "controller":
                victims = list(self._entries.values())  # the run is dead: all of it
            else:
                victims = [e for e in self._entries.values() if e["owner"] == connection.number]
            for entry in victims:
                self._entries.pop(entry["id"], None)
            if victims:
                self._reaping += 1
            self._changed.notify_all()
        if connection.done:
            self.log(f"{connection.role} {connection.worker} finished normally")
            return
        self.log(f"{connection.role} {connection.worker} dropped without 'done': "
                 f"reaping {len(victims)} entr{'y' if len(victims) == 1 else 'ies'}")
        if victims:
            threading.Thread(target=self._reap_all, args=(victims,), daemon=False,
                             name=f"reap-{connection.number}").start()

    def _reap_all(self, victims: list[dict[str, Any]]) -> None:
        try:
            threads = [threading.Thread(target=self._reap, args=(entry,)) for entry in victims]
            for thread in threads:  # in parallel: each may wait for an endpoint to leave Creating
                thread.start()
            for thread in threads:
                thread.join()
        finally:
            with self._changed:
                self._reaping -= 1
                self._changed.notify_all()

    def _reap(self, entry: dict[str, Any]) -> None:
        plan = entry.get("plan") or {}
        started = time.monotonic()
        self.log(f"reaping {entry.get('experiment')}: {describe_plan(plan)}")
        try:
            done = reap_plan(plan, log=self.log, deadline_s=self.deadline_s, poll_s=self.poll_s)
        except (ReapFailed, Exception) as exc:  # noqa: BLE001 - log it, reap the others
            self.log(f"FAILED to reap {entry.get('experiment')}: {exc}")
            self._journal({"op": "reap_failed", "id": entry["id"], "error": str(exc),
                           "experiment": entry.get("experiment"), "time": time.time()})
            return
        self.log(f"reaped {entry.get('experiment')} in {time.monotonic() - started:.1f} s: "
                 f"{', '.join(done) or 'nothing was left'}")
        self._journal({"op": "torn_down", "id": entry["id"], "by": "reaper", "deleted": done,
                       "experiment": entry.get("experiment"), "time": time.time()})

    def _journal(self, line: dict[str, Any]) -> None:
        try:
            with open(self.results_dir / "journal-reaper.jsonl", "a", encoding="utf-8") as handle:
                handle.write(json.dumps(line, default=str) + "\n")
        except OSError as exc:
            self.log(f"cannot write the journal: {exc}")


# -- starting it ---------------------------------------------------------------------------

@dataclasses.dataclass
class ReaperHandle:
    """The controller's side: where the reaper listens, and its process."""

    address: tuple[str, int]
    token: str
    process: subprocess.Popen[bytes]


def start_reaper(run_id: str, results_dir: Path) -> ReaperHandle:
    """Start the run's reaper, detached (a new session, no parent-death signal)."""
    token = secrets.token_hex(16)
    (results_dir / "logs").mkdir(parents=True, exist_ok=True)
    with open(results_dir / "logs" / "reaper.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pytest_fmbench.safety.reaper", "--run-id", run_id,
             "--results-dir", str(results_dir)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
            env={**os.environ, TOKEN_ENV: token}, start_new_session=True, close_fds=True)
    assert proc.stdout is not None
    line = _read_line(proc, START_TIMEOUT_S)
    proc.stdout.close()
    try:
        port = int(line)
    except ValueError:
        proc.kill()
        raise OSError(f"the reaper did not start (see {results_dir / 'logs' / 'reaper.log'})"
                      ) from None
    return ReaperHandle(("127.0.0.1", port), token, proc)


def _read_line(proc: subprocess.Popen[bytes], timeout_s: float) -> bytes:
    result: list[bytes] = []
    assert proc.stdout is not None
    reader = threading.Thread(target=lambda: result.append(proc.stdout.readline()),  # type: ignore[union-attr]
                              daemon=True)
    reader.start()
    reader.join(timeout_s)
    return result[0].strip() if result else b""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pytest_fmbench.safety.reaper")
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--results-dir", required=True, type=Path)
    args = parser.parse_args(argv)
    token = os.environ.pop(TOKEN_ENV, "")
    if not token:
        print(f"{TOKEN_ENV} is not set", file=sys.stderr)
        return 2
    # Ctrl-C in the terminal, or SIGTERM/SIGHUP to pytest's group, must not stop the reaper.
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    deadline = os.environ.get(DEADLINE_ENV)
    poll = os.environ.get(POLL_ENV)
    reaper = Reaper(args.run_id, args.results_dir, token,
                    deadline_s=float(deadline) if deadline else None,
                    poll_s=float(poll) if poll else None)
    reaper.log(f"reaper of run {args.run_id} listening on 127.0.0.1:{reaper.port} (pid {os.getpid()})")
    sys.stdout.write(f"{reaper.port}\n")
    sys.stdout.flush()
    # Nothing more goes to stdout: our parent closed its end of the pipe.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    reaper.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
