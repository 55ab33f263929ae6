"""Budgets → verdicts, and the gate that fails a run.

Budgets come from, lowest precedence first:

1. FMBench's ``report`` keys: ``latency_budget`` (p95 latency, s), ``cost_per_10k_txn_budget``
   (USD), ``error_rate_budget`` (fraction);
2. ``budgets:`` at the top of the config, any metric of METRICS.md by name
   (``{ttft_p95: 0.5, transactions_per_minute: 100}``);
3. ``budgets:`` on an experiment (that experiment only);
4. ``--fmbench-budget METRIC=VALUE`` on the command line (repeatable; wins over all).

Each metric's direction comes from its definition: lower-is-better metrics (latency, cost,
errors) get a maximum, higher-is-better ones (throughput, goodput) a minimum. A metric that
is undefined for a combination (NaN: no successful request, no price) does not meet a budget.

Gate modes: ``best`` (default): the run passes when, for the dataset of interest, some
combination meets every budget; ``every``: every combination must meet its budgets (each
case's test fails with the numbers).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import pandas as pd

from pytest_fmbench.config.model import Config, Experiment
from pytest_fmbench.config.pricing import Price
from pytest_fmbench.errors import ConfigError
from pytest_fmbench.metrics import METRICS, Recommendation, recommend, slo_thresholds

GATE_MODES = ("best", "every")
# Metrics of a whole SLO search, not of a row: a budget on one holds for every search of the
# experiment (``search_violations``), and fails the run when not met, whatever the gate mode.
SEARCH_METRICS = ("max_sustainable_rate",)
GateMode = Literal["best", "every"]

# FMBench's report keys and the metric each one bounds.
FMBENCH_BUDGETS = {
    "latency_budget": "latency_p95",
    "cost_per_10k_txn_budget": "cost_per_10k_txn",
    "error_rate_budget": "error_rate",
}
# The three budgets of METRICS.md's recommendation rule.
CORE_METRICS = ("error_rate", "latency_p95", "cost_per_10k_txn")
COST_METRICS = ("cost_per_10k_txn", "price_per_txn", "price_per_token", "price_per_hour")


@dataclasses.dataclass(frozen=True)
class Budget:
    metric: str
    threshold: float
    source: str

    @property
    def direction(self) -> Literal["max", "min"]:
        return "max" if METRICS[self.metric].better == "lower" else "min"

    @property
    def unit(self) -> str:
        return METRICS[self.metric].unit

    def met_by(self, value: Any) -> bool:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return False
        return bool(value <= self.threshold if self.direction == "max" else value >= self.threshold)

    def describe(self) -> str:
        sign = "≤" if self.direction == "max" else "≥"
        return f"{self.metric} {sign} {format_value(self.threshold, self.unit)}"


def format_value(value: Any, unit: str) -> str:
    """A metric value with its unit, for one-line messages (``3.21 s``, ``12.5 %``)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "undefined"
    number = float(value)
    if unit == "fraction":
        return f"{_number(number * 100)} %"
    text = _number(number)
    if unit == "USD":
        return f"{text} USD"
    return f"{text} {unit}" if unit else text


def _number(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


@dataclasses.dataclass
class BudgetSet:
    common: dict[str, Budget] = dataclasses.field(default_factory=dict)
    per_experiment: dict[str, dict[str, Budget]] = dataclasses.field(default_factory=dict)

    def for_experiment(self, experiment: str) -> dict[str, Budget]:
        return {**self.common, **self.per_experiment.get(experiment, {})}

    def slos(self, experiments: Iterable[str]) -> dict[str, dict[str, float]]:
        """Per-request thresholds behind goodput, per experiment."""
        out = {}
        for name in experiments:
            thresholds = slo_thresholds({m: b.threshold for m, b in self.for_experiment(name).items()})
            if thresholds:
                out[name] = thresholds
        return out

    @property
    def empty(self) -> bool:
        return not self.common and not any(self.per_experiment.values())

    def all_budgets(self) -> list[Budget]:
        seen: dict[tuple[str, float], Budget] = {}
        for budget in [*self.common.values(), *(b for d in self.per_experiment.values() for b in d.values())]:
            seen.setdefault((budget.metric, budget.threshold), budget)
        return list(seen.values())

    def to_json(self) -> dict[str, Any]:
        def entry(b: Budget) -> dict[str, Any]:
            return {"threshold": b.threshold, "direction": b.direction, "unit": b.unit, "source": b.source}
        return {"common": {m: entry(b) for m, b in self.common.items()},
                "per_experiment": {e: {m: entry(b) for m, b in d.items()}
                                   for e, d in self.per_experiment.items() if d}}


def budgetable_metrics() -> list[str]:
    return [m for m, spec in METRICS.items() if spec.budgetable]


def budgetable_summary() -> str:
    """``error_rate, latency_{mean,p50,p90,p95,p99}, ...``: the names a budget accepts."""
    families: dict[str, list[str]] = {}
    for name in budgetable_metrics():
        head, _, tail = name.rpartition("_")
        if tail in ("mean", "max") or (tail.startswith("p") and tail[1:].isdigit()):
            families.setdefault(head, []).append(tail)
        else:
            families.setdefault(name, [])
    return ", ".join(f"{head}_{{{','.join(tails)}}}" if tails else head for head, tails in families.items())


def _metric_name(name: str, where: str, file: str | None) -> str:
    """A METRICS.md name (FMBench's report key names accepted too), or ConfigError."""
    name = str(name).strip()
    name = FMBENCH_BUDGETS.get(name, name)
    metric = METRICS.get(name)
    if metric is None:
        close = difflib.get_close_matches(name, budgetable_metrics(), n=1, cutoff=0.6)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ConfigError(f"budget on unknown metric '{name}'", file=file, key=where,
                          fix=f"{hint}metrics that take a budget: {budgetable_summary()}")
    if not metric.budgetable:
        raise ConfigError(f"'{name}' is a count, not a metric that takes a budget", file=file, key=where,
                          fix=f"metrics that take a budget: {budgetable_summary()}")
    return name


def _threshold(value: Any, metric: str, where: str, file: str | None, example: str | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        if isinstance(value, str):
            try:
                return _threshold(float(value), metric, where, file, example)
            except ValueError:
                pass
        unit = METRICS[metric].unit
        raise ConfigError(f"budget {value!r} for {metric} is not a number", file=file, key=where,
                          fix=f"give a number ({unit}), e.g. {example or f'{metric}: 2.0'}")
    if value < 0:
        raise ConfigError(f"budget {value} for {metric} is negative", file=file, key=where,
                          fix="give a value of 0 or more")
    if METRICS[metric].unit == "fraction" and value > 1:
        raise ConfigError(f"budget {value} for {metric} is a fraction above 1", file=file, key=where,
                          fix="give a fraction between 0 and 1 (0.01 = 1 %)")
    return float(value)


def parse_cli_budgets(pairs: Sequence[str]) -> dict[str, float]:
    """``["latency_p95=2.0", ...]`` → ``{"latency_p95": 2.0}``; mistakes raise ConfigError."""
    out: dict[str, float] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        where = f"--fmbench-budget {pair}"
        if not sep or not name.strip():
            raise ConfigError(f"--fmbench-budget expects METRIC=VALUE, got '{pair}'",
                              fix="e.g. --fmbench-budget latency_p95=2.0")
        metric = _metric_name(name, where, None)
        try:
            number: Any = float(value)
        except ValueError:
            number = value
        out[metric] = _threshold(number, metric, where, None, f"--fmbench-budget {metric}=2.0")
    return out


def budget_set(config: Config, cli: Sequence[str] = ()) -> BudgetSet:
    """All budgets of a run (see the module docstring for precedence)."""
    file = str(config.source_path) if config.source_path else None
    common: dict[str, Budget] = {}
    for key, metric in FMBENCH_BUDGETS.items():
        value = getattr(config.report, key, None)
        if value is not None:
            common[metric] = Budget(metric, _threshold(value, metric, f"report.{key}", file), f"report.{key}")
    for name, value in config.budgets.items():
        where = f"budgets.{name}"
        metric = _metric_name(name, where, file)
        common[metric] = Budget(metric, _threshold(value, metric, where, file), where)
    per_experiment: dict[str, dict[str, Budget]] = {}
    for index, experiment in enumerate(config.experiments):
        own: dict[str, Budget] = {}
        for name, value in experiment.budgets.items():
            where = f"experiments[{index}] ({experiment.name}).budgets.{name}"
            metric = _metric_name(name, where, file)
            own[metric] = Budget(metric, _threshold(value, metric, where, file), where)
        per_experiment[experiment.name] = own
    for metric, value in parse_cli_budgets(cli).items():
        budget = Budget(metric, value, "--fmbench-budget")
        common[metric] = budget
        for own in per_experiment.values():
            own.pop(metric, None)
    return BudgetSet(common, per_experiment)


def require_prices(config: Config, budgets: BudgetSet, prices: Mapping[str, Price | None],
                   experiments: Sequence[Experiment] | None = None) -> None:
    """A cost budget on an experiment without a price cannot be judged: say so before running."""
    chosen = config.experiments if experiments is None else experiments
    for experiment in chosen:
        index = config.experiments.index(experiment)
        if prices.get(experiment.name) is not None:
            continue
        for metric, budget in budgets.for_experiment(experiment.name).items():
            if metric in COST_METRICS:
                raise ConfigError(
                    f"budget {budget.describe()} ({budget.source}) needs a price, and experiment "
                    f"'{experiment.name}' has none",
                    key=f"experiments[{index}] ({experiment.name}).price_per_hour",
                    file=str(config.source_path) if config.source_path else None,
                    fix="set 'price_per_hour: <USD>' (or an 'instance_type' from the pricing table) "
                    "on the experiment")


# -- verdicts -------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Violation:
    experiment: str
    payload_file: str
    concurrency: int
    metric: str
    value: float | None
    threshold: float
    direction: Literal["max", "min"]
    unit: str
    # The load level (``r8``, ``slo-r9``); "" for a concurrency level.
    level: str = ""

    def line(self) -> str:
        """``latency_p95 3.21 s > 2.00 s: llama-g5-xlarge payload_en_1000-2000 c=4``."""
        sign = ">" if self.direction == "max" else "<"
        value = format_value(self.value, self.unit)
        return (f"{self.metric} {value} {sign} {format_value(self.threshold, self.unit)}: "
                f"{self.experiment} {_stem(self.payload_file)} "
                f"{self.level or f'c={self.concurrency}'}")

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "message": self.line()}


def _stem(payload_file: str) -> str:
    return payload_file.removesuffix(".jsonl")


def evaluate(metrics: pd.DataFrame, budgets: BudgetSet) -> tuple[pd.Series, list[Violation]]:
    """Per row: meets all its budgets?; and every violation, in table order."""
    meets = []
    violations: list[Violation] = []
    for row in metrics.to_dict("records"):
        ok = True
        for metric, budget in budgets.for_experiment(row["experiment"]).items():
            if metric in SEARCH_METRICS:
                continue  # judged per search (search_violations), not per row
            value = row.get(metric)
            if not budget.met_by(value):
                ok = False
                plain = None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)
                violations.append(Violation(row["experiment"], row["payload_file"], int(row["concurrency"]),
                                            metric, plain, budget.threshold, budget.direction, budget.unit,
                                            str(row.get("level") or "")))
        meets.append(ok)
    return pd.Series(meets, index=metrics.index, dtype=bool), violations


@dataclasses.dataclass
class GateResult:
    mode: GateMode
    passed: bool
    summary: str
    meets: pd.Series
    violations: list[Violation]
    recommendation: Recommendation

    def to_json(self) -> dict[str, Any]:
        rec = self.recommendation
        return {
            "mode": self.mode, "passed": self.passed, "summary": self.summary,
            "violations": [v.to_json() for v in self.violations],
            "best": rec.best, "dataset_of_interest": rec.dataset_of_interest,
            "dataset_matched": rec.dataset_matched, "candidates": rec.candidates,
            "nearest_misses": rec.nearest_misses,
        }


def gate(metrics: pd.DataFrame, budgets: BudgetSet, mode: GateMode = "best",
         dataset_of_interest: str | None = None) -> GateResult:
    """Verdicts, the recommendation (METRICS.md) and whether the run passes."""
    meets, violations = evaluate(metrics, budgets)
    columns = [(b.metric, b.direction, b.threshold) for b in budgets.all_budgets()]
    rec = recommend(metrics, meets, dataset_of_interest, columns)
    if metrics.empty:
        return GateResult(mode, True, "no combination ran", meets, violations, rec)
    if mode == "every":
        passed = not violations
        summary = ("every combination meets its budgets" if passed else
                   f"{len({(v.experiment, v.payload_file, v.concurrency) for v in violations})} of "
                   f"{len(metrics)} combinations violate a budget")
    else:
        passed = rec.best is not None
        scope = (f"dataset of interest '{dataset_of_interest}'" if dataset_of_interest and rec.dataset_matched
                 else "all payload files")
        if passed:
            best = rec.best or {}
            summary = (f"{best.get('experiment')} {_stem(str(best.get('payload_file')))} "
                       f"c={best.get('concurrency')} meets every budget ({scope})")
        else:
            summary = f"no combination meets every budget ({scope}, {rec.candidates} combinations)"
    if budgets.empty:
        summary += " (no budgets configured)"
    return GateResult(mode, passed, summary, meets, violations, rec)


def search_violations(searches: Sequence[Mapping[str, Any]], budgets: BudgetSet,
                      experiments: Iterable[str]) -> list[Violation]:
    """Budgets on ``max_sustainable_rate``: each SLO search of an experiment that has one
    must reach it; an experiment with such a budget and no search result violates it."""
    out = []
    for experiment in experiments:
        for metric, budget in budgets.for_experiment(experiment).items():
            if metric not in SEARCH_METRICS:
                continue
            found = [s for s in searches if s.get("experiment") == experiment]
            for search in found or [{"payload_file": "", "level": "slo"}]:
                value = search.get(metric)
                if not budget.met_by(value):
                    out.append(Violation(experiment, str(search.get("payload_file") or ""), 0,
                                         metric, None if value is None else float(value),
                                         budget.threshold, budget.direction, budget.unit,
                                         "slo search" if found else "no slo_search ran"))
    return out


def case_violations(metrics: pd.DataFrame, budgets: BudgetSet) -> list[Violation]:
    """Violations of one case's metrics (gate mode ``every``)."""
    return evaluate(metrics, budgets)[1]
