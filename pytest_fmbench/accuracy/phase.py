"""Session finish, on the controller: score the answers, ask the judges, write the results,
apply the accuracy budgets. Runs after every load case and every endpoint teardown.

Outputs (in ``<results dir>/accuracy/``; FMBench's names where FMBench has the file):
``scores.csv`` (per experiment × payload file × scorer: value, CI, n), FMBench's
``PoLL_per_model_accuracy.csv``, ``majority_vote_accuracy_per_payload_file.csv``,
``per_model_per_eval_judge_accuracy.csv``, ``eval_cost_per_llm_evaluator.csv``,
``judge_calls.jsonl`` (every judge call), and the plots
``accuracy_trajectory_per_payload.png`` and
``overall_candidate_model_majority_voting_accuracy.png`` (with 95 % intervals).
"""

from __future__ import annotations

import csv
import dataclasses
import json
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pytest_fmbench.accuracy import stats
from pytest_fmbench.accuracy.answers import ANSWERS_DIR, read_answers
from pytest_fmbench.accuracy.cache import JudgeCache
from pytest_fmbench.accuracy.combination import read_combinations
from pytest_fmbench.accuracy.judging import Judge, JudgeItem, JudgePrice, run_judges
from pytest_fmbench.accuracy.panel import PanelSummary, compare_models, summarize
from pytest_fmbench.accuracy.scorers import DEFAULT_SCORERS, score_answer, strip_reasoning
from pytest_fmbench.accuracy.settings import AccuracySettings, JudgeSpec
from pytest_fmbench.config.model import Config

BINARY_SCORERS = ("exact_match", "contains")
# The local backend's built-in random-weight models (endpoints/local_model.py PRESETS).
EMBEDDED_PRESETS = ("tiny", "small")


@dataclasses.dataclass
class AccuracyOutcome:
    lines: list[str]
    markdown: list[str]
    passed: bool
    judge_calls: int = 0
    cache_hits: int = 0
    judge_cost: float | None = 0.0
    unpriced_judges: list[str] = dataclasses.field(default_factory=list)
    panel: dict[str, PanelSummary] = dataclasses.field(default_factory=dict)
    scores: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    # Share of correct answers per (experiment, payload file), and what decided it
    # ("judge panel" or "exact_match"): the basis of "cost per 10k correct answers".
    correct_share: dict[tuple[str, str], float] = dataclasses.field(default_factory=dict)
    correct_by: str = "exact_match"


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _interval(i: stats.Interval) -> str:
    if i.value is None:
        return "n/a (n=0)"
    return f"{i.value:.3f} [{i.low:.3f}, {i.high:.3f}] n={i.n}"


def judge_price(config: Config, model_id: str) -> JudgePrice | None:
    """Token rates for a judge model from the run's pricing tables; None = unpriced."""
    from pytest_fmbench.config.pricing import load_price_table

    table = load_price_table(config)
    for key in (model_id, model_id.split(".", 1)[1] if model_id[:3] in ("us.", "eu.") else None,
                model_id.removeprefix("apac.")):
        if key and key in table.token_based:
            rates = table.token_based[key]
            return JudgePrice(rates.input_per_1k, rates.output_per_1k)
    return None


def build_judges(config: Config, specs: tuple[JudgeSpec, ...], results_dir: Path,
                 run_id: str, log: Callable[[str], None]) -> list[Judge]:
    from pytest_fmbench.config.model import Experiment
    from pytest_fmbench.endpoints.registry import EndpointContext, create_endpoint

    judges = []
    for spec in specs:
        experiment = Experiment.model_validate(spec.experiment)
        endpoint = create_endpoint(config, experiment, EndpointContext(run_id, results_dir, log))
        backend = experiment.resolved_backend or ""
        where = {"bedrock": config.aws.region, "openai": (experiment.openai.base_url
                                                          if experiment.openai else None)}
        template = None
        if spec.template_file:
            base = config.source_path.parent if config.source_path else Path.cwd()
            template = (base / spec.template_file).read_text(encoding="utf-8")
        judge = Judge(spec.name, endpoint,
                      # Everything that decides the answer: two judges on one model id
                      # served differently (seed, base_url, region) never share verdicts.
                      identity={"backend": backend, "model": experiment.model_id,
                                "where": where.get(backend),
                                "endpoint": {k: v for k, v in spec.experiment.items()
                                             if k != "name"}},
                      parameters=spec.parameters, price=judge_price(config, experiment.model_id or ""),
                      concurrency=spec.concurrency,
                      deploys=experiment.deploy and backend in ("local", "openai"))
        if template is not None:
            judge.template, judge.template_id = template, f"file:{spec.template_file}"
        judges.append(judge)
    return judges


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def evaluate(config: Config, settings: AccuracySettings, results_dir: Path, *, run_id: str = "",
             log: Callable[[str], None] = print,
             judges: list[Judge] | None = None) -> AccuracyOutcome | None:
    """Everything accuracy does at session finish; None when the run saved no answers."""
    answers = read_answers(results_dir)
    combinations = read_combinations(results_dir)
    if not answers and not combinations:
        return None
    out = results_dir / ANSWERS_DIR
    lines: list[str] = []
    markdown = ["### Model evaluations", ""]
    failures: list[str] = []

    # -- deterministic scorers, per experiment × payload file ---------------------------
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in answers:
        groups[(row["experiment"], row["payload_file"])].append(row)
    score_rows: list[dict[str, Any]] = []
    per_item: dict[tuple[str, str, str], dict[str, float]] = {}
    for (experiment, payload_file), rows in sorted(groups.items()):
        ok = [r for r in rows if not r["error"] and r["references"]]
        errored = sum(1 for r in rows if r["error"])
        truncated = sum(1 for r in ok if r.get("truncated"))
        values: dict[str, list[float]] = defaultdict(list)
        for r in ok:
            item = score_answer(r["answer"], r["references"], scorers=DEFAULT_SCORERS,
                                dataset=r.get("dataset") or payload_file,
                                all_classes=r.get("all_classes") or ())
            per_item[(experiment, payload_file, r["item"])] = item.scores
            for name, value in item.scores.items():
                values[name].append(value)
        for name, vals in values.items():
            interval = (stats.wilson(int(sum(vals)), len(vals)) if name in BINARY_SCORERS
                        else stats.bootstrap_mean(vals))
            score_rows.append({"experiment": experiment, "payload_file": payload_file,
                               "scorer": name, "value": interval.value, "ci_low": interval.low,
                               "ci_high": interval.high, "n": interval.n, "errored": errored,
                               "truncated": truncated, "no_reference": len(rows) - errored - len(ok)})
    _write_csv(out / "scores.csv", score_rows)
    markdown += ["| experiment | payload file | scorer | value [95 % CI] | n | errored | truncated |",
                 "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in score_rows:
        ci = (f"{_fmt(row['value'])} [{_fmt(row['ci_low'])}, {_fmt(row['ci_high'])}]")
        markdown.append(f"| {row['experiment']} | {row['payload_file']} | {row['scorer']} | {ci} "
                        f"| {row['n']} | {row['errored']} | {row['truncated']} |")
    markdown.append("")

    if combinations:
        markdown += _combination_scores(combinations, out)
    outcome = AccuracyOutcome(lines, markdown, True, scores=score_rows)
    outcome.correct_share = {(r["experiment"], r["payload_file"]): r["value"] for r in score_rows
                             if r["scorer"] == "exact_match" and r["value"] is not None}

    # -- the judge panel -----------------------------------------------------------------
    if judges is None and settings.judges:
        judges = build_judges(config, settings.judges, results_dir, run_id, log)
    if judges:
        _judge(config, settings, answers, judges, out, outcome, log)

    # -- budgets ---------------------------------------------------------------------------
    _gate(config, settings, score_rows, outcome, failures)
    outcome.passed = not failures
    lines[:0] = [(f"[fmbench] accuracy: {len(answers)} answers from "
                 f"{len({r['experiment'] for r in answers})} experiment(s) scored")]
    lines += failures
    markdown += ["", *[f"- {f.removeprefix('[fmbench] ')}" for f in failures]]
    (out / "accuracy.md").write_text("\n".join(markdown) + "\n", encoding="utf-8")
    return outcome


def _combination_scores(rows: list[dict[str, Any]], out: Path) -> list[str]:
    """Exact match and token F1 of every load case's answers, per combination, with the
    number of distinct answers per prompt (answers that change with load)."""
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["experiment"], row["payload_file"], int(row["concurrency"]))].append(row)
    table: list[dict[str, Any]] = []
    for (experiment, payload_file, concurrency), items in sorted(groups.items()):
        exact: list[float] = []
        f1: list[float] = []
        distinct: list[int] = []
        for item in items:
            if not item["references"] or not item["answers"]:
                continue
            distinct.append(len(item["answers"]))
            for text, count in item["answers"].items():
                scores = score_answer(text, item["references"], scorers=("exact_match", "qa_f1"))
                exact += [scores.scores["exact_match"]] * count
                f1 += [scores.scores["qa_f1"]] * count
        em = stats.wilson(int(sum(exact)), len(exact))
        qa = stats.bootstrap_mean(f1)
        table.append({"experiment": experiment, "payload_file": payload_file,
                      "concurrency": concurrency, "n_scored": len(exact),
                      "errored": sum(int(i["errors"]) for i in items),
                      "exact_match": em.value, "exact_match_ci_low": em.low,
                      "exact_match_ci_high": em.high, "qa_f1": qa.value, "qa_f1_ci_low": qa.low,
                      "qa_f1_ci_high": qa.high,
                      "distinct_answers_per_prompt": (sum(distinct) / len(distinct)
                                                      if distinct else None)})
    _write_csv(out / "scores_per_combination.csv", table)
    lines = ["#### Accuracy per combination (the load cases' own answers)", "",
             ("| experiment | payload file | c | n | errored | exact match [95 % CI] | token F1 [95 % CI] "
             "| distinct answers / prompt |"),
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in table:
        lines.append(
            f"| {r['experiment']} | {r['payload_file']} | {r['concurrency']} | {r['n_scored']} | "
            f"{r['errored']} | {_fmt(r['exact_match'])} [{_fmt(r['exact_match_ci_low'])}, "
            f"{_fmt(r['exact_match_ci_high'])}] | {_fmt(r['qa_f1'])} [{_fmt(r['qa_f1_ci_low'])}, "
            f"{_fmt(r['qa_f1_ci_high'])}] | {_fmt(r['distinct_answers_per_prompt'], 2)} |")
    return [*lines, ""]


def _judge(config: Config, settings: AccuracySettings, answers: list[dict[str, Any]],
           judges: list[Judge], out: Path, outcome: AccuracyOutcome,
           log: Callable[[str], None]) -> None:
    items: list[JudgeItem] = []
    keys: dict[str, tuple[str, str]] = {}
    for row in answers:
        if row["error"] or not row["references"]:
            continue  # failed requests are counted apart, never judged (FMBench's A9)
        key = f"{row['experiment']}|{row['payload_file']}|{row['item']}"
        items.append(JudgeItem(key, row.get("question") or "", tuple(row["references"]),
                               strip_reasoning(row["answer"])))
        keys[key] = (row["experiment"], row["payload_file"])
    log(_estimate_line(judges, items, settings.budget_usd))
    cache = (JudgeCache(settings.cache_path) if settings.cache_enabled
             and settings.cache_path is not None else None)
    try:
        calls = run_judges(judges, items, cache=cache, spend_limit_usd=settings.budget_usd, log=log)
    finally:
        if cache is not None:
            cache.close()
    names = [j.name for j in judges]
    with open(out / "judge_calls.jsonl", "w", encoding="utf-8") as handle:
        for name in names:
            handle.writelines(json.dumps(dataclasses.asdict(call), ensure_ascii=False) + "\n" for call in calls[name])
    made = [c for n in names for c in calls[n] if not c.cached and c.status != "skipped"]
    outcome.judge_calls = len(made)
    outcome.cache_hits = sum(c.cached for n in names for c in calls[n])
    outcome.unpriced_judges = [j.name for j in judges if j.price is None]
    cost_rows = []
    for judge in judges:
        own = calls[judge.name]
        cost = None if judge.price is None else sum(c.cost or 0.0 for c in own)
        cost_rows.append({"judge_model_id": judge.name,
                          "total_cost": "unpriced" if cost is None else round(cost, 9),
                          "prompt_token_count": sum(c.prompt_tokens or 0 for c in own if not c.cached),
                          "completion_token_count": sum(c.completion_tokens or 0 for c in own if not c.cached),
                          "calls": sum(not c.cached and c.status != "skipped" for c in own),
                          "cache_hits": sum(c.cached for c in own),
                          "parse_failed": sum(c.status == "parse_failed" for c in own),
                          "errors": sum(c.status == "error" for c in own),
                          "skipped_spend_limit": sum(c.status == "skipped" for c in own)})
    _write_csv(out / "eval_cost_per_llm_evaluator.csv", cost_rows)
    priced = [float(r["total_cost"]) for r in cost_rows if r["total_cost"] != "unpriced"]
    outcome.judge_cost = sum(priced) if priced else (None if outcome.unpriced_judges else 0.0)

    by_key = {name: {c.item: c for c in calls[name]} for name in names}
    groups: dict[tuple[str, str | None], list[str]] = defaultdict(list)
    for item in items:
        candidate, payload = keys[item.key]
        groups[(candidate, payload)].append(item.key)
        groups[(candidate, None)].append(item.key)
    model_rows: list[dict[str, Any]] = []
    per_model: dict[str, dict[str, bool]] = {}
    payload_rows: list[dict[str, Any]] = []
    judge_rows: list[dict[str, Any]] = []
    md = outcome.markdown
    md += ["#### Judge panel", "",
           (f"Judges: {', '.join(names)}; quorum {settings.voting.quorum}, ties → "
           f"{settings.voting.tie}."), "",
           ("| experiment | payload file | majority accuracy (strict) [95 % CI] | decided accuracy "
           "| undecided | ties | Fleiss κ (n) | Krippendorff α |"),
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for (experiment, payload_file), item_keys in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
        votes = [[by_key[n][k].verdict for k in item_keys] for n in names]
        statuses = [[by_key[n][k].status for k in item_keys] for n in names]
        summary = summarize(names, votes, statuses, settings.voting)
        row = {"candidate_model": experiment, "correct_count": summary.correct,
               "incorrect_count": summary.incorrect,
               "majority_voting_accuracy": round(100 * (summary.decided.value or 0.0), 2),
               "n": summary.items, "strict_accuracy": summary.strict.value,
               "ci_low": summary.strict.low, "ci_high": summary.strict.high,
               "undecided": summary.undecided, "ties": summary.ties}
        if payload_file is None:
            outcome.panel[experiment] = summary
            # Items identified across candidates by payload file and prompt id.
            per_model[experiment] = {k.split("|", 1)[1]: d.verdict == "correct"
                                     for k, d in zip(item_keys, summary.decisions)}
            model_rows.append(row)
            for vote in summary.judges:
                judge_rows.append({"judge_model_id": vote.judge, "candidate_model": experiment,
                                   "correct": vote.correct, "incorrect": vote.votes - vote.correct,
                                   "accuracy": vote.accuracy, "parse_failed": vote.parse_failed,
                                   "errors": vote.errors, "skipped": vote.skipped,
                                   "parse_failure_rate": vote.parse_failure_rate})
        else:
            payload_rows.append({"payload_file": payload_file, **row})
            if summary.strict.value is not None:
                outcome.correct_share[(experiment, payload_file)] = summary.strict.value
                outcome.correct_by = "judge panel"
        md.append(f"| {experiment} | {payload_file or '(all)'} | {_interval(summary.strict)} | "
                  f"{_interval(summary.decided)} | {summary.undecided} | {summary.ties} | "
                  f"{_fmt(summary.fleiss[0])} ({summary.fleiss[1]}) | "
                  f"{_fmt(summary.krippendorff[0])} |")
    comparison = compare_models(per_model)
    if comparison:
        _write_csv(out / "model_comparison.csv", comparison)
        md += ["", "Paired comparison on the same items (exact McNemar test):", "",
               "| model A | model B | n | accuracy A | accuracy B | Δ | only A right | only B right | p |",
               "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        md += [f"| {r['model_a']} | {r['model_b']} | {r['n']} | {r['accuracy_a']:.3f} | "
               f"{r['accuracy_b']:.3f} | {r['difference']:+.3f} | {r['only_a_correct']} | "
               f"{r['only_b_correct']} | {r['mcnemar_p']:.4g} |" for r in comparison]
    md += ["", "Per judge (accuracy = leniency: the share of its valid votes that say correct):", "",
           "| experiment | judge | votes | accuracy | parse failures (rate) | errors | skipped |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
    md += [f"| {r['candidate_model']} | {r['judge_model_id']} | {r['correct'] + r['incorrect']} | "
           f"{_fmt(r['accuracy'])} | {r['parse_failed']} ({r['parse_failure_rate']:.2f}) | "
           f"{r['errors']} | {r['skipped']} |" for r in judge_rows]
    kappas = [(experiment, pair, value) for experiment, summary in sorted(outcome.panel.items())
              for pair, value in summary.cohen.items()]
    if kappas:
        md += ["", "| experiment | judges | Cohen κ | n |", "| --- | --- | --- | --- |"]
        md += [f"| {e} | {a} – {b} | {_fmt(k)} | {n} |" for e, (a, b), (k, n) in kappas]
    notes = [j.name for j in judges if j.identity.get("backend") == "local"
             and str((j.identity.get("endpoint") or {}).get("local", {}).get("model", "tiny"))
             in EMBEDDED_PRESETS]
    if notes:
        note = (f"Judges {', '.join(notes)} serve the embedded random-weight model: not a "
                "competent judge; their verdicts check the plumbing only.")
        md += ["", f"**Note:** {note}"]
        outcome.lines.append(f"[fmbench] accuracy: NOTE {note}")
    _write_csv(out / "PoLL_per_model_accuracy.csv", model_rows)
    _write_csv(out / "majority_vote_accuracy_per_payload_file.csv", payload_rows)
    _write_csv(out / "per_model_per_eval_judge_accuracy.csv", judge_rows)
    cost_text = ("unpriced" if outcome.judge_cost is None else f"${outcome.judge_cost:.6f}")
    if outcome.unpriced_judges and outcome.judge_cost is not None:
        cost_text += f" + unpriced judges: {', '.join(outcome.unpriced_judges)}"
    md += ["", "#### Model Evaluation Cost", "",
           (f"{outcome.judge_calls} judge calls made, {outcome.cache_hits} answered from the "
           f"cache; judge cost {cost_text}."), ""]
    md += ["| judge | calls | cache hits | cost | parse failures | errors |",
           "| --- | --- | --- | --- | --- | --- |"]
    md += [f"| {r['judge_model_id']} | {r['calls']} | {r['cache_hits']} | {r['total_cost']} | "
           f"{r['parse_failed']} | {r['errors']} |" for r in cost_rows]
    outcome.lines.append(f"[fmbench] accuracy: judges made {outcome.judge_calls} calls "
                         f"({outcome.cache_hits} from the cache), cost {cost_text}")
    for experiment, summary in sorted(outcome.panel.items()):
        outcome.lines.append(f"[fmbench] accuracy: {experiment}: majority accuracy "
                             f"{_interval(summary.strict)}, undecided {summary.undecided}, "
                             f"Krippendorff α {_fmt(summary.krippendorff[0])}")
    from pytest_fmbench.accuracy.plots import plot_accuracy

    budget = _accuracy_budget(config)
    try:
        plot_accuracy(out, outcome.panel, payload_rows, budget)
    except ImportError:
        outcome.lines.append("[fmbench] accuracy: plots skipped (matplotlib not installed)")
    except Exception as exc:  # noqa: BLE001 - a plot never costs the numbers
        outcome.lines.append(f"[fmbench] accuracy: plots failed: {type(exc).__name__}: {exc}")


def _estimate_line(judges: list[Judge], items: list[JudgeItem], limit: float | None) -> str:
    """Before the first judge call: what judging may cost at most (cache hits are free)."""
    from pytest_fmbench.accuracy.judging import estimate_cost, render_prompt

    priced = [j for j in judges if j.price is not None]
    total = sum(estimate_cost(j, render_prompt(j.template, i.question, i.references, i.answer))
                for j in priced for i in items)
    unpriced = [j.name for j in judges if j.price is None]
    return (f"[fmbench] accuracy: judging {len(items)} answers with {len(judges)} judge(s): "
            f"at most ${total:.4f} before cache hits"
            + (f", plus unpriced judges {', '.join(unpriced)}" if unpriced else "")
            + (f" (judge spend limit ${limit:g})" if limit is not None else ""))


def _accuracy_budget(config: Config) -> float | None:
    budget = config.report.accuracy_budget
    if budget is None:
        return None
    return budget / 100 if budget > 1 else budget


def _gate(config: Config, settings: AccuracySettings, score_rows: list[dict[str, Any]],
          outcome: AccuracyOutcome, failures: list[str]) -> None:
    budget = _accuracy_budget(config)
    error_budget = config.report.accuracy_error_rate_budget
    for experiment, summary in sorted(outcome.panel.items()):
        value = summary.strict.value
        if budget is not None and value is not None:
            verdict = "PASS" if value >= budget else "FAIL"
            if summary.strict.low is not None and summary.strict.high is not None \
                    and summary.strict.low < budget <= summary.strict.high:
                verdict += " (inconclusive: the 95 % interval contains the budget)"
            line = (f"[fmbench] accuracy budget {verdict}: {experiment} majority accuracy "
                    f"{value:.3f} vs accuracy_budget {budget:.3f} (n={summary.items})")
            (failures if value < budget else outcome.lines).append(line)
        if error_budget is not None and summary.items:
            rate = summary.undecided / summary.items
            if rate > error_budget:
                failures.append(f"[fmbench] accuracy error-rate budget FAIL: {experiment} "
                                f"{summary.undecided}/{summary.items} items without a decided "
                                f"verdict ({rate:.3f} > accuracy_error_rate_budget {error_budget})")
    if budget is not None and not outcome.panel:
        outcome.lines.append("[fmbench] accuracy_budget not checked: no judge panel ran")
    if config.report.cosine_similarity_budget is not None:
        outcome.lines.append("[fmbench] cosine_similarity_budget not checked: no embedding "
                             "model is configured (FMBench's cosine step needs a download)")
    for name, minimum in sorted(settings.scorer_budgets.items()):
        for row in score_rows:
            if row["scorer"] == name and row["value"] is not None and row["value"] < minimum:
                failures.append(f"[fmbench] accuracy budget FAIL: {row['experiment']} "
                                f"{row['payload_file']} {name} {row['value']:.3f} < {minimum}")
