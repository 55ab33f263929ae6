"""What accuracy does in a run, resolved once from the config (FMBench's keys and ours).

FMBench: ``run_steps: {4_get_evaluations.ipynb: yes}`` turns judging on; ``datasets.
ground_truth_col_key`` / ``question_col_key`` name the answer and question columns;
``model_evaluations: model_eval_all_info.yml`` selects its default panel (three Bedrock
judges, majority vote), or an inline mapping of the same shape (ours) gives any judges.
Ours: an ``accuracy:`` section (see docs/accuracy.md).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from pytest_fmbench.accuracy.panel import Voting
from pytest_fmbench.config.model import Config
from pytest_fmbench.errors import ConfigError

EVALUATION_STEP = "4_get_evaluations.ipynb"
FMBENCH_EVAL_FILE = "model_eval_all_info.yml"

# FMBench 2.1.6's model_eval_all_info.yml, its values (our code, its data): the panel and
# the parameters it sends its judges.
FMBENCH_PANEL: tuple[str, ...] = (
    "us.meta.llama3-3-70b-instruct-v1:0",
    "us.anthropic.claude-3-5-sonnet-20241022-v2:0",
    "cohere.command-r-plus-v1:0",
)
FMBENCH_JUDGE_PARAMETERS: dict[str, Any] = {"temperature": 0.1, "max_tokens": 300, "top_p": 0.92}
FMBENCH_PARALLEL = 5

_OURS = {"enabled", "judges", "quorum", "tie", "max_items_per_payload_file", "concurrency",
         "cache", "budget_usd", "budgets", "inference_parameters", "seed", "per_combination"}


@dataclasses.dataclass(frozen=True)
class JudgeSpec:
    """One judge as configured: a name and an experiment entry of the config model."""

    name: str
    experiment: dict[str, Any]
    parameters: dict[str, Any]
    concurrency: int
    template_file: str | None = None


@dataclasses.dataclass(frozen=True)
class AccuracySettings:
    enabled: bool
    ground_truth_key: str
    question_key: str
    judges: tuple[JudgeSpec, ...]
    voting: Voting
    max_items_per_payload_file: int | None
    concurrency: int
    cache_path: Path | None
    cache_enabled: bool
    budget_usd: float | None
    scorer_budgets: dict[str, float]
    parameters: dict[str, Any]
    source: str                  # "fmbench" (run_steps/model_evaluations), "accuracy", "off"
    notice: str | None = None    # why accuracy is off although the config asks for it
    per_combination: bool = False  # also keep and score every load case's answers


def _where(config: Config) -> str | None:
    return str(config.source_path) if config.source_path else None


def _judges_from_panel(config: Config, panel: list[Any], parameters: dict[str, Any],
                       parallel: int) -> tuple[JudgeSpec, ...]:
    judges = []
    for index, entry in enumerate(panel):
        key = f"model_evaluations.subjective_eval_info.judge_panel_list[{index}]"
        if isinstance(entry, str):
            entry = {"model_id": entry}
        if not isinstance(entry, dict) or not (entry.get("model_id") or entry.get("name")):
            raise ConfigError("a judge needs a model_id", file=_where(config), key=key,
                              fix="give {model_id: <Bedrock model id>} or "
                                  "{model_id: ..., endpoint: {backend: openai, openai: {...}}}")
        model_id = str(entry.get("model_id") or entry["name"])
        endpoint = dict(entry.get("endpoint") or {"backend": "bedrock"})
        experiment = {"name": str(entry.get("name") or model_id), "model_id": model_id,
                      "deploy": endpoint.pop("deploy", endpoint.get("backend") == "local"),
                      "payload_files": ["judge.jsonl"], "concurrency_levels": [1], **endpoint}
        if experiment.get("backend") not in ("local", "openai") and experiment["deploy"] is True:
            # Judges are started and stopped outside the run's journal and reaper: only
            # local processes are, never a paid cloud endpoint.
            raise ConfigError("a judge on this backend must be an existing endpoint",
                              file=_where(config), key=f"{key}.endpoint.deploy",
                              fix="set deploy: no and name an endpoint that is already serving")
        if experiment.get("backend") == "bedrock":
            experiment.setdefault("inference_spec", {"stream": False})
        judges.append(JudgeSpec(str(experiment["name"]), experiment,
                                {**parameters, **(entry.get("inference_parameters") or {})},
                                int(entry.get("concurrency") or parallel),
                                entry.get("template_file")))
    return tuple(judges)


def _evaluations_file(config: Config, name: str) -> str | dict[str, Any]:
    """FMBench's ``model_evaluations`` file when the user has one beside the config (with
    FMBench's ``{ground_truth}``, ``{question}``, ``{method_name}`` placeholders filled);
    otherwise the name stays and FMBench's packaged defaults apply."""
    import re

    import yaml

    base = config.source_path.parent if config.source_path else None
    path = base / name if base is not None else None
    if path is None or not path.is_file():
        return name
    values = {"ground_truth": config.datasets.ground_truth_col_key or "answers",
              "question": config.datasets.question_col_key or "input",
              "method_name": "majority_vote"}
    text = re.sub(r"\{(ground_truth|question|method_name)\}", lambda m: values[m.group(1)],
                  path.read_text(encoding="utf-8"))
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"not YAML: {exc}".splitlines()[0], file=str(path),
                          key="model_evaluations", fix="fix the file's YAML") from None
    if not isinstance(data, dict):
        raise ConfigError("a model_evaluations file must be a mapping", file=str(path),
                          key="model_evaluations",
                          fix="use FMBench's shape: model_evaluations: {subjective_eval_info: ...}")
    return data


def resolve(config: Config, cache_dir: Path | None = None) -> AccuracySettings:
    """The run's accuracy settings; ``enabled`` False when nothing asks for accuracy."""
    ours = dict(config.accuracy or {})
    unknown = sorted(set(ours) - _OURS)
    if unknown:
        raise ConfigError(f"unknown key 'accuracy.{unknown[0]}'", file=_where(config),
                          key=f"accuracy.{unknown[0]}", fix=f"use one of: {', '.join(sorted(_OURS))}")
    step = (config.run_steps or {}).get(EVALUATION_STEP)
    evaluations = config.model_evaluations
    fmbench_on = bool(step) and step not in ("no", False) and evaluations is not None
    notice = None
    if fmbench_on and not ours and not config.datasets.ground_truth_col_key:
        # Two FMBench configs turn evaluations on without any ground truth (FMBench then
        # raises in its notebook): skipped here, with one line.
        fmbench_on = False
        notice = ("accuracy skipped: run_steps turns on 4_get_evaluations.ipynb but "
                  "datasets.ground_truth_col_key is not set (no reference answers)")
    enabled = bool(ours.get("enabled", bool(ours) or fmbench_on))
    parameters = dict(FMBENCH_JUDGE_PARAMETERS)
    parallel = FMBENCH_PARALLEL
    judges: tuple[JudgeSpec, ...] = ()
    voting = Voting(quorum=int(ours.get("quorum", 2)), tie=ours.get("tie", "incorrect"))
    if isinstance(evaluations, str) and fmbench_on:
        evaluations = _evaluations_file(config, evaluations)
    if isinstance(evaluations, dict):
        body = evaluations.get("model_evaluations", evaluations)
        subjective = body.get("subjective_eval_info") or {}
        parameters.update(subjective.get("inference_parameters") or {})
        parameters.pop("caching", None)
        parallel = int(subjective.get("run_parallel_inference_count") or parallel)
        judges = _judges_from_panel(config, list(subjective.get("judge_panel_list") or []),
                                    parameters, parallel)
    elif isinstance(evaluations, str) and fmbench_on:
        # FMBench's file name: its default panel (our copy of its values).
        judges = _judges_from_panel(config, list(FMBENCH_PANEL), parameters, parallel)
    if "judges" in ours:
        judges = _judges_from_panel(config, list(ours["judges"] or []), parameters, parallel)
    if voting.tie not in ("incorrect", "correct", "undecided"):
        raise ConfigError(f"accuracy.tie '{voting.tie}' is not a tie policy", file=_where(config),
                          key="accuracy.tie", fix="use incorrect, correct or undecided")
    cache = ours.get("cache", True)
    cache_path = Path(cache) if isinstance(cache, str) else (
        cache_dir / "judge-cache.sqlite" if cache_dir is not None else None)
    budgets = {str(k): float(v) for k, v in (ours.get("budgets") or {}).items()}
    return AccuracySettings(
        enabled=enabled,
        ground_truth_key=config.datasets.ground_truth_col_key or "answers",
        question_key=config.datasets.question_col_key or "input",
        judges=judges, voting=voting,
        max_items_per_payload_file=ours.get("max_items_per_payload_file"),
        concurrency=int(ours.get("concurrency", 4)),
        cache_path=cache_path, cache_enabled=cache is not False,
        budget_usd=ours.get("budget_usd"), scorer_budgets=budgets,
        parameters=dict(ours.get("inference_parameters") or {}),
        source="accuracy" if ours else ("fmbench" if fmbench_on else "off"), notice=notice,
        per_combination=bool(ours.get("per_combination", False)))
