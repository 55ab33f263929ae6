"""Load levels inside one case: repeats, open-loop rates, a sweep and an SLO search.

A case is experiment × payload file × load level (``cases.py``). A concurrency level or a
rate level (``rates: [...]``) is one load, run ``load.repeats`` times. A sweep and an SLO
search choose their rates at run time, so each is one case whose levels are decided here:

- **probe**: a closed loop at ``probe_concurrency`` measures the endpoint's most throughput
  (successful requests / duration);
- **sweep**: ``levels`` rates evenly spaced from a light load (``min_rate``, else
  ``light_fraction`` × the maximum) to the maximum;
- **SLO search**: the highest rate at which every per-request SLO holds for at least
  ``goodput_share`` of the level's requests, by bisection between a rate that met (the light
  load) and one that did not (the maximum), until the bracket is narrower than ``precision``
  of its upper end or the next level would take the search past ``max_requests`` requests.

Every level's records carry the level's label, offered rate and repeat, so metrics keep one
row per level; each level's outcome (throughput, share meeting the SLOs, saturated or not,
its step in the search) is one line of ``levels*.jsonl`` for the report.

A **saturation stop** (``SaturationWatch``) ends an open-loop level early once its backlog
(requests sent or waiting, not yet answered) keeps growing: such a level has no steady state,
so it is marked saturated instead of being averaged.

Nothing here imports pytest; the statistics take plain sequences of values.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from pytest_fmbench.errors import FmbenchError
from pytest_fmbench.load.records import RequestRecord

# The saturation stop: the backlog's mean over this many consecutive windows must rise
# every time, and the last window's mean be at least GROWTH × (the first's + 1).
WINDOWS = 5
GROWTH = 3.0
MIN_WINDOW = 10


class SaturationWatch:
    """Decides, arrival by arrival, whether an open-loop level's backlog keeps growing.

    ``observe(backlog)`` is called at each arrival with the requests in flight plus those
    waiting for a slot. Arrivals are grouped into windows of ``window`` arrivals; the level is
    saturated when the window means rose ``WINDOWS − 1`` times in a row and the last is at
    least ``GROWTH`` times the first (plus one request). A stable queue, even a long one,
    wanders up and down; an overloaded one grows about linearly and trips this within
    ``WINDOWS`` windows.
    """

    def __init__(self, arrivals: int) -> None:
        self.window = max(MIN_WINDOW, arrivals // 25)
        self._sum = 0
        self._count = 0
        self.means: list[float] = []
        self.reason = ""

    def observe(self, backlog: int) -> bool:
        if self.reason:
            return True
        self._sum += backlog
        self._count += 1
        if self._count < self.window:
            return False
        self.means.append(self._sum / self._count)
        self._sum = self._count = 0
        last = self.means[-WINDOWS:]
        if len(last) == WINDOWS and all(b > a for a, b in itertools.pairwise(last)) \
                and last[-1] >= GROWTH * (last[0] + 1):
            self.reason = (f"backlog kept growing: {' → '.join(f'{m:.0f}' for m in last)} "
                           f"requests (means of {self.window} arrivals)")
            return True
        return False


@dataclasses.dataclass
class LevelOutcome:
    """One level of a case as it ran: what it offered, achieved, and whether it held."""

    case_id: str
    experiment: str
    payload_file: str
    kind: str               # "probe", "concurrency", "rate", "sweep", "slo_search"
    level: str              # the records' level label
    rate: float | None      # offered requests/s (open loop); None for closed loops
    concurrency: int
    repeat: int = 0
    requests: int = 0
    successes: int = 0
    good: int = 0           # successful and meeting every per-request SLO
    duration_s: float = 0.0
    saturated: bool = False
    saturation_reason: str = ""
    step: int = 0           # order within the case
    meets: bool | None = None  # SLO search: share ≥ goodput_share

    @property
    def throughput(self) -> float:
        """Successful requests per second over the level."""
        return self.successes / self.duration_s if self.duration_s > 0 else math.nan

    @property
    def share(self) -> float:
        """Share of the level's requests (failed ones included) meeting every SLO."""
        return self.good / self.requests if self.requests else math.nan

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["throughput"] = None if math.isnan(self.throughput) else self.throughput
        out["share"] = None if math.isnan(self.share) else self.share
        out["record"] = "level"
        return out


def meeting_slos(records: Sequence[RequestRecord], slos: Mapping[str, float]) -> int:
    """How many records succeeded and meet every per-request threshold (metrics.SLO_FAMILIES)."""
    good = 0
    for record in records:
        if not record.ok:
            continue
        values = {"latency": record.latency_s, "response_time": record.response_time_s,
                  "ttft": record.ttft_s, "tpot": _tpot(record)}
        if all(_meets(family, values.get(family), threshold) for family, threshold in slos.items()):
            good += 1
    return good


def _tpot(record: RequestRecord) -> float | None:
    if record.first_token_ns is None or (record.completion_tokens or 0) < 2:
        return None
    return (record.last_byte_ns - record.first_token_ns) / 1e9 / (record.completion_tokens - 1)  # type: ignore[operator]


def _meets(family: str, value: float | None, threshold: float) -> bool:
    if value is None:
        return family == "tpot"  # a one-token answer has no TPOT: nothing to miss
    return value <= threshold


def outcome_of(records: Sequence[RequestRecord], slos: Mapping[str, float], **fields: Any) -> LevelOutcome:
    """A level's outcome from its records (``fields``: the level's identity)."""
    outcome = LevelOutcome(**fields)
    outcome.requests = len(records)
    outcome.successes = sum(1 for r in records if r.ok)
    outcome.good = meeting_slos(records, slos)
    if records:
        outcome.duration_s = (max(r.last_byte_ns for r in records)
                              - min(r.sent_ns for r in records)) / 1e9
    return outcome


def sweep_rates(light: float, most: float, levels: int) -> list[float]:
    """``levels`` rates evenly spaced from ``light`` to ``most`` (both included), rounded to
    4 significant digits so labels stay readable."""
    if most <= light:
        return [_round(most)]
    return [_round(float(r)) for r in np.linspace(light, most, levels)]


def _round(rate: float) -> float:
    return float(f"{rate:.4g}")


class SloSearch:
    """Bisection for the most requests/s that meets the SLOs; pure, driven by ``observe``.

    First the maximum (a closed-loop probe's throughput: if it meets, that is the answer),
    then the light load (if it fails, nothing is sustainable), then midpoints between the
    highest rate that met and the lowest that failed. Stops when the bracket is within
    ``precision`` of its upper end, or when another level of ``per_level`` requests would take
    the search past ``max_requests``.
    """

    def __init__(self, light: float, most: float, *, precision: float, max_requests: int,
                 per_level: int) -> None:
        self.light, self.most = light, most
        self.precision = precision
        self.max_requests = max_requests
        self.per_level = per_level
        self.met: float | None = None
        self.failed: float | None = None
        self.spent = 0
        self.path: list[tuple[float, bool]] = []
        self.stopped = ""

    def next_rate(self) -> float | None:
        if self.spent + self.per_level > self.max_requests:
            self.stopped = f"the next level would pass max_requests ({self.max_requests})"
            return None
        if not self.path:
            return _round(self.most)
        if self.met is None and self.failed is not None and self.failed > self.light \
                and all(rate != self.light for rate, _ in self.path):
            return _round(self.light)
        if self.met is None:
            self.stopped = "even the light load missed the SLOs"
            return None
        if self.failed is None:
            self.stopped = "the maximum met the SLOs"
            return None
        if self.failed - self.met <= self.precision * self.failed:
            self.stopped = (f"bracket {self.met:g}..{self.failed:g} requests/s within "
                            f"{self.precision:.0%}")
            return None
        return _round((self.met + self.failed) / 2)

    def observe(self, rate: float, meets: bool, requests: int) -> None:
        self.spent += requests
        self.path.append((rate, meets))
        if meets:
            self.met = rate if self.met is None else max(self.met, rate)
        else:
            self.failed = rate if self.failed is None else min(self.failed, rate)

    @property
    def result(self) -> float | None:
        """The max sustainable rate: the highest rate that met (None: none did)."""
        return self.met


@dataclasses.dataclass
class LevelPlanner:
    """Runs one case's levels. ``run_level(kind, label, rate, concurrency, repeat)`` runs one
    load and returns its records (they are already written); ``log`` prints a line."""

    case_id: str
    experiment: str
    payload_file: str
    concurrency: int
    slos: Mapping[str, float]
    repeats: int
    run_level: Callable[[str, str, float | None, int, int], tuple[list[RequestRecord], str]]
    log: Callable[[str], Any] = print
    outcomes: list[LevelOutcome] = dataclasses.field(default_factory=list)
    search: dict[str, Any] | None = None

    def level(self, kind: str, label: str, rate: float | None, concurrency: int
              ) -> list[LevelOutcome]:
        """One level, ``repeats`` times (a probe once)."""
        done = []
        for repeat in range(1 if kind == "probe" else self.repeats):
            records, saturation = self.run_level(kind, label, rate, concurrency, repeat)
            outcome = outcome_of(records, self.slos, case_id=self.case_id,
                                 experiment=self.experiment, payload_file=self.payload_file,
                                 kind=kind, level=label, rate=rate, concurrency=concurrency,
                                 repeat=repeat, step=len(self.outcomes))
            outcome.saturated = bool(saturation)
            outcome.saturation_reason = saturation
            self.outcomes.append(outcome)
            done.append(outcome)
            self.log(_line(self.case_id, outcome))
        return done

    def probe(self, concurrency: int) -> float:
        (outcome,) = self.level("probe", "probe", None, concurrency)
        if not outcome.successes or math.isnan(outcome.throughput):
            raise LevelError(f"{self.case_id}: the throughput probe had no successful request")
        return outcome.throughput

    def sweep(self, *, levels: int, probe_concurrency: int, min_rate: float | None,
              light_fraction: float) -> None:
        most = self.probe(probe_concurrency)
        light = min(min_rate, most) if min_rate else most * light_fraction
        for rate in sweep_rates(light, most, levels):
            self.level("sweep", f"sweep-r{rate:g}", rate, self.concurrency)

    def slo_search(self, *, probe_concurrency: int, min_rate: float | None,
                   light_fraction: float, goodput_share: float, precision: float,
                   max_requests: int, per_level: int) -> dict[str, Any]:
        most = self.probe(probe_concurrency)
        light = min(min_rate, most) if min_rate else most * light_fraction
        search = SloSearch(light, most, precision=precision, max_requests=max_requests,
                           per_level=per_level * self.repeats)
        while (rate := search.next_rate()) is not None:
            runs = self.level("slo_search", f"slo-r{rate:g}", rate, self.concurrency)
            good = sum(o.good for o in runs)
            total = sum(o.requests for o in runs)
            meets = not any(o.saturated for o in runs) and total > 0 \
                and good / total >= goodput_share
            for run in runs:
                run.meets = meets
            search.observe(rate, meets, total)
        self.search = {
            "record": "search", "case_id": self.case_id, "experiment": self.experiment,
            "payload_file": self.payload_file, "max_sustainable_rate": search.result,
            "level": f"slo-r{search.result:g}" if search.result is not None else None,
            "max_throughput": most, "light_rate": light, "goodput_share": goodput_share,
            "slos": dict(self.slos), "stopped": search.stopped, "requests": search.spent,
            "path": [{"rate": r, "meets": m} for r, m in search.path],
        }
        self.log(f"[fmbench] {self.case_id}: max sustainable rate "
                 + (f"{search.result:g} requests/s" if search.result is not None else "none")
                 + f" (goodput ≥ {goodput_share:.0%}; {search.stopped})")
        return self.search


class LevelError(FmbenchError):
    """A level could not be measured (e.g. a probe without one successful request): the
    case fails with this message."""


def _line(case_id: str, outcome: LevelOutcome) -> str:
    offered = f"offered {outcome.rate:g}/s" if outcome.rate is not None \
        else f"closed loop c={outcome.concurrency}"
    repeat = f" repeat {outcome.repeat + 1}" if outcome.repeat else ""
    text = (f"[fmbench] {case_id} {outcome.level}{repeat}: {offered}, {outcome.requests} "
            f"requests, achieved {outcome.throughput:.2f}/s, {outcome.share:.0%} meet the SLOs")
    if outcome.saturated:
        text += f", SATURATED (stopped early: {outcome.saturation_reason})"
    return text


def knee(rates: Sequence[float], throughputs: Sequence[float], tolerance: float = 0.9) -> int | None:
    """Index of the knee of a throughput-vs-offered-rate curve: the last level whose
    throughput still keeps up with its offered rate (≥ ``tolerance`` of it); None if none."""
    found = None
    for index, (rate, achieved) in enumerate(zip(rates, throughputs)):
        if rate and not math.isnan(achieved) and achieved >= tolerance * rate:
            found = index
    return found


def read_levels(lines: Iterable[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(level outcomes, search results) from the lines of ``levels*.jsonl``."""
    levels = [dict(line) for line in lines if line.get("record") == "level"]
    searches = [dict(line) for line in lines if line.get("record") == "search"]
    return levels, searches
