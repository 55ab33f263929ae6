"""How late the event loop runs: the client's own overhead, measured while it sends.

A small task asks to wake every ``interval_s`` and records how late it woke (the lag). A
request's record gets the worst lag seen while it was in flight: if the loop was busy, its
timestamps may be late by that much, and a lag beyond ``load.saturation_ms`` marks the client
saturated.

The lookup is O(log n): samples are kept as a stack whose lags strictly decrease from the
oldest to the newest (a newer sample at least as large makes every older, smaller one
irrelevant to any window that ends now), so the worst lag since ``t`` is the first sample at
or after ``t``.
"""

from __future__ import annotations

import asyncio
import bisect

from pytest_fmbench.clock import now_ns


class LoopLagMonitor:
    def __init__(self, interval_s: float = 0.005, keep_s: float = 600.0) -> None:
        self.interval_ns = int(interval_s * 1e9)
        self.keep_ns = int(keep_s * 1e9)
        self._times: list[int] = []
        self._lags: list[int] = []
        self._task: asyncio.Task[None] | None = None
        self.samples = 0
        self.max_lag_ns = 0
        self.total_lag_ns = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="fmbench-loop-lag")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        interval = self.interval_ns / 1e9
        while True:
            expected = now_ns() + self.interval_ns
            await asyncio.sleep(interval)
            woke = now_ns()
            self.add(woke, max(0, woke - expected))

    def add(self, at_ns: int, lag_ns: int) -> None:
        self.samples += 1
        self.total_lag_ns += lag_ns
        self.max_lag_ns = max(self.max_lag_ns, lag_ns)
        times, lags = self._times, self._lags
        while lags and lags[-1] <= lag_ns:
            lags.pop()
            times.pop()
        times.append(at_ns)
        lags.append(lag_ns)
        if len(times) > 4096 and at_ns - times[0] > self.keep_ns:
            cut = bisect.bisect_left(times, at_ns - self.keep_ns)
            del times[:cut], lags[:cut]

    def worst_since(self, since_ns: int) -> int:
        """The worst lag (ns) sampled at or after ``since_ns``; else the latest sample's."""
        times = self._times
        if not times:
            return 0
        index = bisect.bisect_left(times, since_ns)
        return self._lags[index] if index < len(times) else self._lags[-1]

    @property
    def mean_lag_ns(self) -> float:
        return self.total_lag_ns / self.samples if self.samples else 0.0
