"""The sampler process: scrapes /metrics and samples the host while a case runs.

It runs apart from the process that sends the requests (``python -m
pytest_fmbench.telemetry.child``), so parsing a large exposition or a slow NVML call never
holds that process's GIL or event loop. It speaks JSON lines: commands on stdin, replies on
stdout, and exits when stdin closes (its parent ended, however it ended).

- ``{"cmd": "start", "interval_s", "prometheus_url", "server_metrics", "host"}`` → probes the
  sources, answers ``{"reply": "started", "available": {...}, "unavailable": {...}}``, then
  samples every ``interval_s`` (a first sample at once);
- ``{"cmd": "stop"}`` → one last sample, then ``{"reply": "samples", "samples": [...],
  "failures": {...}}``.

Timestamps are on the run's timeline (``pytest_fmbench.clock``); a scrape is stamped at the
middle of its request, the best estimate of when the server read its own counters.
"""

from __future__ import annotations

import json
import select
import sys
import time
from typing import Any

from pytest_fmbench.clock import now_ns
from pytest_fmbench.telemetry import host as host_sources
from pytest_fmbench.telemetry import prometheus


class Sampling:
    """One case's sampling: the sources that answered, the samples taken."""

    def __init__(self, command: dict[str, Any], hosts: list[host_sources.HostSource]) -> None:
        self.interval_s = float(command.get("interval_s") or 1.0)
        self.url: str | None = command.get("prometheus_url")
        self.extra: list[str] = list(command.get("server_metrics") or [])
        self.hosts = hosts
        self.samples: list[dict[str, Any]] = []
        self.failures: dict[str, str] = {}
        self.failed_scrapes = 0
        self.timeout_s = min(10.0, max(1.0, 2 * self.interval_s))

    def tick(self) -> None:
        if self.url is not None:
            self._scrape(self.url)
        for source in self.hosts:
            taken = now_ns()
            try:
                values = source.sample()
            except Exception as exc:  # noqa: BLE001 - a source that broke leaves gaps
                self.failures[source.name] = f"{type(exc).__name__}: {exc}"
                continue
            if values:
                self.samples.append({"t_ns": taken, "source": source.name, "values": values})

    def _scrape(self, url: str) -> None:
        sent = now_ns()
        try:
            text = prometheus.fetch(url, self.timeout_s)
            received = now_ns()
            values = prometheus.signals_from(prometheus.samples_of(text), self.extra)
        except (OSError, ValueError) as exc:
            self.failed_scrapes += 1
            self.failures["prometheus"] = (f"{self.failed_scrapes} scrape(s) failed, last: "
                                           f"{type(exc).__name__}: {exc}")
            return
        self.samples.append({"t_ns": (sent + received) // 2, "source": "prometheus",
                             "values": values, "scrape_ms": (received - sent) / 1e6})


def _reply(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def _read_command(timeout_s: float | None) -> dict[str, Any] | None:
    """The next command, {} when none came within ``timeout_s``; None when stdin closed."""
    if timeout_s is not None:
        ready, _, _ = select.select([sys.stdin], [], [], max(0.0, timeout_s))
        if not ready:
            return {}
    line = sys.stdin.readline()
    if not line:
        return None
    parsed: dict[str, Any] = json.loads(line)
    return parsed


def _start(command: dict[str, Any], hosts: list[host_sources.HostSource] | None,
           missing: dict[str, str]) -> tuple[Sampling, list[host_sources.HostSource] | None,
                                              dict[str, str]]:
    available: dict[str, str] = {}
    unavailable: dict[str, str] = {}
    url = command.get("prometheus_url")
    if url:
        ok, detail = prometheus.probe(url)
        (available if ok else unavailable)["prometheus"] = detail
        if not ok:
            command = {**command, "prometheus_url": None}
    if command.get("host"):
        if hosts is None:  # opened once: NVML init and neuron-monitor start cost time
            hosts, missing = host_sources.open_host_sources(float(command.get("interval_s") or 1.0))
        available.update({source.name: _describe(source.name) for source in hosts})
        unavailable.update(missing)
    sampling = Sampling(command, (hosts or []) if command.get("host") else [])
    _reply({"reply": "started", "available": available, "unavailable": unavailable})
    return sampling, hosts, missing


def _describe(name: str) -> str:
    return {"host": "psutil: CPU and memory of this machine", "nvml": "NVIDIA GPUs through NVML",
            "neuron": "Neuron devices through neuron-monitor"}.get(name, name)


def main() -> None:
    hosts: list[host_sources.HostSource] | None = None
    missing: dict[str, str] = {}
    _reply({"reply": "ready"})
    try:
        while True:
            command = _read_command(None)
            if command is None:
                return
            if command.get("cmd") != "start":
                continue
            sampling, hosts, missing = _start(command, hosts, missing)
            if _sample_until_stopped(sampling):
                return
    finally:
        for source in hosts or []:
            source.close()


def _sample_until_stopped(sampling: Sampling) -> bool:
    """Sample on a fixed grid until ``stop``; True when stdin closed instead."""
    next_tick = time.monotonic()
    while True:
        sampling.tick()
        next_tick += sampling.interval_s
        now = time.monotonic()
        if next_tick < now:  # a slow scrape: skip the ticks it overran, keep the grid
            next_tick += (int((now - next_tick) / sampling.interval_s) + 1) * sampling.interval_s
        command = _read_command(next_tick - time.monotonic())
        if command is None:
            return True
        if command.get("cmd") == "stop":
            sampling.tick()
            _reply({"reply": "samples", "samples": sampling.samples, "failures": sampling.failures})
            return False


if __name__ == "__main__":
    main()
