"""The spend guard: what the selected cases will cost, and a limit that stops new cases.

Before the first deploy the plugin prints an estimate per experiment (also under
``--collect-only``): instance-priced endpoints as hours × price, from the expected deploy time
plus the load's bound, between the least the cases can take (deploy and duration-bound loads
only) and the most (``timeouts.case_timeout_s``); token-priced models as tokens × rates, up to
every prompt at its payload file's top token length and every answer at ``max_new_tokens``.

``--fmbench-max-cost USD`` makes a ``SpendGuard`` check, before each deploy and each case,
that the money already spent plus what the next step commits stays within the limit. Money
spent is read from a ledger of JSON lines in the results dir, one file per process (xdist
workers included), so every process sees the whole run's spend. Once the limit would be
crossed the guard stops for good: no new case starts, and the caller tears down what is live.
pytest-free.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pytest_fmbench.cases import Case
from pytest_fmbench.config.model import Config, Experiment
from pytest_fmbench.config.pricing import Price
from pytest_fmbench.load.records import RequestRecord
from pytest_fmbench.timeouts import case_timeout_s, request_bound_s

# A SageMaker real-time endpoint typically takes 5-15 minutes to reach InService.
EXPECTED_DEPLOY_S = {"sagemaker": 600.0}
# Until a request of an experiment has been seen, one is assumed to take this long.
ASSUMED_REQUEST_S = 1.0
OUTPUT_TOKEN_KEYS = ("max_new_tokens", "max_tokens", "maxTokens", "max_gen_len",
                     "max_tokens_to_sample", "max_completion_tokens")
LEDGER_GLOB = "spend*.jsonl"


@dataclasses.dataclass(frozen=True)
class ExperimentEstimate:
    experiment: str
    cases: int
    price: Price | None
    low_usd: float | None
    high_usd: float | None

    def line(self) -> str:
        if self.price is None:
            return f"  {self.experiment}: {self.cases} case(s), not priced"
        return (f"  {self.experiment}: {self.cases} case(s), {self.price.describe()}: "
                f"{usd(self.low_usd)} to {usd(self.high_usd)}")


def usd(value: float | None) -> str:
    return "unknown" if value is None or math.isnan(value) else f"${value:,.2f}"


def max_output_tokens(config: Config, experiment: Experiment) -> int | None:
    parameters = config.parameters_for(experiment)
    for key in OUTPUT_TOKEN_KEYS:
        value = parameters.get(key)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _top_prompt_tokens(config: Config, payload_file: str) -> int | None:
    for spec in config.datasets.filters:
        if spec.payload_file == payload_file and spec.max_length_in_tokens < 10**9:
            return spec.max_length_in_tokens
    return None


def _most_requests(config: Config, experiment: Experiment, case: Case) -> int:
    load = config.load_for(experiment)
    waves = (load.max_iters_per_combination or 105) * case.concurrency
    if load.pattern == "waves" or (load.requests is None and load.duration_s is None):
        return waves
    if load.requests is not None:
        return load.requests
    assert load.duration_s is not None  # rate / concurrency bounded by time
    per_s = load.rate if load.pattern == "rate" and load.rate else case.concurrency / 0.05
    return math.ceil(per_s * (load.duration_s + (load.warmup_s or 0.0)))


def estimate_experiment(config: Config, experiment: Experiment, cases: Sequence[Case],
                        price: Price | None) -> ExperimentEstimate:
    if price is None or not cases:
        return ExperimentEstimate(experiment.name, len(cases), price, None, None)
    if price.kind == "token":
        output = max_output_tokens(config, experiment)
        high: float | None = 0.0
        for case in cases:
            top = _top_prompt_tokens(config, case.payload_file)
            if top is None or output is None or high is None:
                high = None
                break
            high += _most_requests(config, experiment, case) * price.token_cost(top, output)
        return ExperimentEstimate(experiment.name, len(cases), price, 0.0, high)
    deploy_s = EXPECTED_DEPLOY_S.get(experiment.resolved_backend or "", 0.0) if experiment.deploy else 0.0
    load = config.load_for(experiment)
    least_case_s = (load.duration_s or 0.0) + (load.warmup_s or 0.0)
    most_s = (case_timeout_s(config, experiment) or 0.0) * len(cases)
    hourly = price.price_per_hour
    return ExperimentEstimate(experiment.name, len(cases), price,
                              hourly * (deploy_s + least_case_s * len(cases)) / 3600,
                              hourly * max(most_s, deploy_s) / 3600)


def offline_prices(config: Config) -> dict[str, Price | None]:
    """Each experiment's price from the pricing tables, without any AWS call; an experiment
    whose price is unknown (an error for the budget checks) is left unpriced here."""
    from pytest_fmbench.config.pricing import load_price_table, resolve_price
    from pytest_fmbench.errors import ConfigError

    try:
        table = load_price_table(config)
    except ConfigError:
        return {}
    prices: dict[str, Price | None] = {}
    for experiment in config.experiments:
        try:
            prices[experiment.name] = resolve_price(config, experiment, table)
        except ConfigError:
            prices[experiment.name] = None
    return prices


def estimate(config: Config, cases: Sequence[Case],
             prices: Mapping[str, Price | None]) -> list[ExperimentEstimate]:
    """One estimate per experiment of the selected cases, in config order."""
    by_experiment: dict[str, list[Case]] = {}
    for case in cases:
        by_experiment.setdefault(case.experiment, []).append(case)
    return [estimate_experiment(config, e, by_experiment[e.name], prices.get(e.name))
            for e in config.experiments if e.name in by_experiment]


def estimate_lines(estimates: Sequence[ExperimentEstimate], limit: float | None) -> list[str]:
    lows = [e.low_usd for e in estimates if e.price is not None]
    highs = [e.high_usd for e in estimates if e.price is not None]
    low = sum(v for v in lows if v is not None)
    high = None if any(v is None for v in highs) else sum(v for v in highs if v is not None)
    cases = sum(e.cases for e in estimates)
    head = (f"[fmbench] estimated cost of the {cases} selected case(s): {usd(low)} to "
            f"{usd(high)}" + (f"; spend limit {usd(limit)} (--fmbench-max-cost)" if limit else ""))
    return [head, *(e.line() for e in estimates)]


# -- the ledger of money spent, shared by the processes of one run ---------------------------

class SpendLedger:
    """Append-only JSON lines: endpoints up/down with their hourly price, token costs."""

    def __init__(self, results_dir: Path, worker: str = "") -> None:
        self.results_dir = results_dir
        self.path = results_dir / (f"spend-{worker}.jsonl" if worker else "spend.jsonl")

    def _append(self, row: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")

    def endpoint_up(self, experiment: str, hourly: float, at: float | None = None) -> None:
        self._append({"event": "up", "experiment": experiment, "hourly": hourly,
                      "at": time.time() if at is None else at})

    def endpoint_down(self, experiment: str, at: float | None = None) -> None:
        self._append({"event": "down", "experiment": experiment,
                      "at": time.time() if at is None else at})

    def tokens(self, experiment: str, cost: float) -> None:
        self._append({"event": "tokens", "experiment": experiment, "usd": cost})

    def stopped(self, reason: str) -> None:
        self._append({"event": "stopped", "reason": reason})

    def rows(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        for path in sorted(self.results_dir.glob(LEDGER_GLOB)):
            with open(path, encoding="utf-8") as handle:
                found += [json.loads(line) for line in handle if line.endswith("\n")]
        return found

    def spent(self, now: float | None = None) -> float:
        return spent(self.rows(), time.time() if now is None else now)

    def stop_reasons(self) -> list[str]:
        return [str(r["reason"]) for r in self.rows() if r.get("event") == "stopped"]


def spent(rows: Iterable[Mapping[str, Any]], now: float) -> float:
    """Instance-hours of every endpoint (until its teardown, or ``now``) plus token costs."""
    total = 0.0
    up: dict[str, tuple[float, float]] = {}
    for row in rows:
        event = row.get("event")
        if event == "up":
            up[str(row["experiment"])] = (float(row["at"]), float(row["hourly"]))
        elif event == "down" and row["experiment"] in up:
            start, hourly = up.pop(str(row["experiment"]))
            total += hourly * max(0.0, float(row["at"]) - start) / 3600
        elif event == "tokens":
            total += float(row["usd"])
    total += sum(hourly * max(0.0, now - start) / 3600 for start, hourly in up.values())
    return total


# -- the guard --------------------------------------------------------------------------------

class SpendGuard:
    """Refuses the next deploy or case once spent + committed would exceed ``limit``."""

    def __init__(self, limit: float, config: Config, ledger: SpendLedger,
                 prices: Mapping[str, Price | None] | None = None) -> None:
        self.limit = limit
        self.config = config
        # Given once the selected experiments are priced (before the first deploy).
        self.prices: dict[str, Price | None] = dict(prices or {})
        self.ledger = ledger
        self.reason: str | None = None
        self._request_s: dict[str, float] = {}
        self._prompt_tokens: dict[str, float] = {}

    def observe(self, experiment: str, latencies_s: Sequence[float],
                prompt_tokens: Sequence[int] = ()) -> None:
        """What requests of an experiment took (warm-up or a case), for the next commitments."""
        if latencies_s:
            self._request_s[experiment] = max(latencies_s)  # pessimistic: the slowest seen
        if prompt_tokens:
            self._prompt_tokens[experiment] = sum(prompt_tokens) / len(prompt_tokens)

    def record_case(self, experiment: str, records: Sequence[RequestRecord]) -> None:
        """A finished case: its latencies and prompts for the next commitments, and the
        tokens it spent when the experiment is token-priced."""
        ok = [r for r in records if r.ok]
        self.observe(experiment, [(r.last_byte_ns - r.sent_ns) / 1e9 for r in ok],
                     [r.prompt_tokens for r in ok if r.prompt_tokens is not None])
        price = self.prices.get(experiment)
        if price is not None and price.kind == "token":
            self.ledger.tokens(experiment, sum(
                price.token_cost(r.prompt_tokens or 0, r.completion_tokens or 0) for r in records))

    def deploy_commitment(self, experiment: Experiment) -> float:
        price = self.prices.get(experiment.name)
        if price is None or price.kind != "instance" or not experiment.deploy:
            return 0.0
        return price.price_per_hour * EXPECTED_DEPLOY_S.get(experiment.resolved_backend or "", 0.0) / 3600

    def case_commitment(self, case: Case, requests: int) -> float:
        experiment = self.config.experiment(case.experiment)
        price = self.prices.get(case.experiment)
        if price is None:
            return 0.0
        load = self.config.load_for(experiment)
        request_s = self._request_s.get(case.experiment, ASSUMED_REQUEST_S)
        if price.kind == "token":
            prompt = self._prompt_tokens.get(case.experiment) or _top_prompt_tokens(
                self.config, case.payload_file) or 0
            output = max_output_tokens(self.config, experiment) or 0
            return requests * price.token_cost(prompt, output)
        if load.duration_s is not None and load.pattern != "waves":
            seconds = load.duration_s + (load.warmup_s or 0.0) + request_s
        else:
            timeout = request_bound_s(load, None)
            seconds = math.ceil(requests / case.concurrency) * min(request_s, timeout)
        return price.price_per_hour * seconds / 3600

    def check(self, what: str, commitment: float) -> str | None:
        """None when ``what`` may start; otherwise the reason it may not (and all after it)."""
        if self.reason is not None:
            return self.reason
        spent_now = self.ledger.spent()
        if spent_now + commitment > self.limit:
            self.reason = (f"spend limit {usd(self.limit)} (--fmbench-max-cost): {usd(spent_now)} "
                           f"spent, {what} would commit {usd(commitment)} more")
            self.ledger.stopped(self.reason)
        return self.reason
