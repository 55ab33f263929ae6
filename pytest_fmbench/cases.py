"""Expanding a config into cases: experiment × payload file × load level.

A load level is a concurrency level (``-c4``, the experiment's ``load.pattern``), an open-loop
rate (``-r8``, ``rates:``), a sweep (``-sweep``) or an SLO search (``-slo``); the last two choose
their rates at run time, inside one case (docs/load-levels.md).
"""

from __future__ import annotations

import dataclasses
import re

from pytest_fmbench.config.model import Config, Experiment

_MARKER_SAFE = re.compile(r"[^A-Za-z0-9_]+")


@dataclasses.dataclass(frozen=True)
class Case:
    """One benchmark combination; its id is stable across runs and xdist workers."""

    experiment: str
    payload_file: str
    concurrency: int
    experiment_index: int
    markers: tuple[str, ...]
    # Set when the case cannot run and FMBench would skip it too (pytest skips it).
    skip_reason: str | None = None
    # The experiment's accuracy pass (pytest_fmbench.accuracy): every prompt of its payload
    # files sent once after its load cases, answers kept; marker ``fmbench_accuracy``.
    accuracy: bool = False
    # "" (a concurrency level), "rate", "sweep" or "slo_search"; ``rate``: the rate level's.
    level_kind: str = ""
    rate: float | None = None

    @property
    def id(self) -> str:
        if self.accuracy:
            return accuracy_case_id(self.experiment)
        return case_id(self.experiment, self.payload_file, self.concurrency, self.level)

    @property
    def level(self) -> str:
        """The level's label in ids and records: "" for a concurrency level."""
        return level_label(self.level_kind, self.rate)

    @property
    def payload_name(self) -> str:
        return payload_stem(self.payload_file)


def payload_stem(payload_file: str) -> str:
    """``payload_en_1-500.jsonl`` → ``payload_en_1-500``."""
    return payload_file.removesuffix(".jsonl")


def case_id(experiment: str, payload_file: str, concurrency: int, level: str = "") -> str:
    """``exp-payload-c4``; a load level replaces the concurrency: ``exp-payload-r8``."""
    safe = re.sub(r"[^A-Za-z0-9_.\-]+", "-", experiment).strip("-")
    return f"{safe}-{payload_stem(payload_file)}-{level or f'c{concurrency}'}"


def level_label(kind: str, rate: float | None = None) -> str:
    """``r8``, ``r0.5`` for a rate; ``sweep``, ``slo`` for the cases that choose rates."""
    if kind == "rate" and rate is not None:
        return f"r{rate:g}"
    return {"sweep": "sweep", "slo_search": "slo"}.get(kind, "")


ACCURACY_MARKER = "fmbench_accuracy"


def accuracy_case_id(experiment: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.\-]+", "-", experiment).strip("-")
    return f"{safe}-accuracy"


def marker_name(text: str) -> str:
    """A valid marker name from free text (``p4d``, ``my team`` → ``my_team``)."""
    name = _MARKER_SAFE.sub("_", text).strip("_")
    if not name or name[0].isdigit():
        name = f"m_{name}"
    return name


def experiment_markers(config: Config, experiment: Experiment) -> tuple[str, ...]:
    names = [experiment.resolved_backend or "unknown"]
    if experiment.instance_family:
        names.append(experiment.instance_family)
    names += config.markers + experiment.markers
    return tuple(dict.fromkeys(marker_name(n) for n in names))


def expand_cases(config: Config) -> list[Case]:
    """All cases, grouped by experiment in config order, so each endpoint deploys once."""
    from pytest_fmbench.accuracy.settings import resolve

    with_accuracy = resolve(config).enabled
    cases = []
    for index, experiment in enumerate(config.experiments):
        markers = experiment_markers(config, experiment)
        unproduced = config.unproduced_payload_files(experiment.name)
        for payload_file in experiment.payload_files:
            skip = (f"payload file '{payload_file}' is not produced by any datasets.filters "
                    "entry (FMBench skips it too)") if payload_file in unproduced else None
            for concurrency in experiment.concurrency_levels:
                cases.append(Case(experiment.name, payload_file, concurrency, index, markers,
                                  skip))
            cases += _level_cases(config, experiment, payload_file, index, markers, skip)
        if with_accuracy:
            produced = [p for p in experiment.payload_files if p not in unproduced]
            cases.append(Case(experiment.name, (produced or experiment.payload_files)[0], 1, index,
                              (*markers, ACCURACY_MARKER), None if produced else
                              "no payload file of this experiment is produced", accuracy=True))
    ids = [c.id for c in cases]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"case ids collide: {', '.join(duplicates)}")
    return cases


def _level_cases(config: Config, experiment: Experiment, payload_file: str, index: int,
                 markers: tuple[str, ...], skip: str | None) -> list[Case]:
    """The open-loop levels of one experiment × payload file, after its concurrency levels.
    Their ``concurrency`` is the client's cap on requests in flight (``load.max_in_flight``)."""
    settings = config.load_for(experiment)
    cap = settings.max_in_flight or 1024
    out = [Case(experiment.name, payload_file, cap, index, markers, skip,
                level_kind="rate", rate=level.rate)
           for level in config.rate_levels(experiment)]
    if settings.sweep is not None:
        out.append(Case(experiment.name, payload_file, cap, index, markers, skip, level_kind="sweep"))
    if settings.slo_search is not None:
        out.append(Case(experiment.name, payload_file, cap, index, markers, skip,
                        level_kind="slo_search"))
    return out


def all_markers(config: Config) -> list[str]:
    """Every marker the cases carry, sorted, for registration."""
    found: set[str] = set()
    for experiment in config.experiments:
        found.update(experiment_markers(config, experiment))
    return sorted(found)
