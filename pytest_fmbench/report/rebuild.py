"""``python -m pytest_fmbench report DIR`` and ``merge DIR... --out DIR`` (no pytest here).

``report`` rebuilds a run's report, verdict and ``benchmark.json`` from its records, also
after a crash (records and the case ledger are appended as cases complete). ``merge`` does the
same for the results dirs of several runs, typically the shards of one benchmark
(``--fmbench-shard K/N`` on CI matrix jobs or hosts): their records are read where they lie
(never copied; ``merge.json`` in the output names them, so ``report`` works on a merged dir
too), one report and one verdict are written, and the exit status is a run's: 0 passed,
1 failed (budgets, missing cases, endpoints left running), 4 a usage error.

A case that any shard expected and none completed is reported missing and fails the verdict;
a case completed in two dirs is refused (its records would count twice).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pytest_fmbench.case_ledger import CasePlan, read_case_plan
from pytest_fmbench.config.model import Config
from pytest_fmbench.errors import ConfigError
from pytest_fmbench.report.session import ReportSettings, SessionReport, finish, prepare

MERGE_FILE = "merge.json"
RUN_FILE = "run.json"
RESULTS_FILE = "results.json"


@dataclasses.dataclass
class Source:
    """One results dir whose records go into the report."""

    path: Path
    plan: CasePlan | None
    run: dict[str, Any]


def expand_sources(dirs: Sequence[Path]) -> list[Path]:
    """The results dirs holding records: a merged dir stands for the dirs it merged."""
    found: list[Path] = []
    for folder in dirs:
        folder = folder.resolve()
        if not folder.is_dir():
            raise ConfigError(f"{folder}: no such results directory", key="DIR",
                              fix="pass the --fmbench-results-dir of each run (or shard)")
        merged = folder / MERGE_FILE
        if merged.is_file():
            found += expand_sources([Path(p) for p in _json(merged).get("sources", [])])
        else:
            found.append(folder)
    unique = list(dict.fromkeys(found))
    if len(unique) != len(found):
        twice = sorted({str(p) for p in found if found.count(p) > 1})
        raise ConfigError(f"results dir given twice: {', '.join(twice)}", key="DIR",
                          fix="pass each run's results dir once")
    return unique


def read_sources(dirs: Sequence[Path]) -> list[Source]:
    return [Source(path, read_case_plan(path), _json(path / RUN_FILE)) for path in dirs]


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def config_path(sources: Sequence[Source], given: str | None) -> Path:
    """``--config``, else the config file the runs named (their ledger, else run.json)."""
    if given:
        return Path(given).resolve()
    for source in sources:
        named = (source.plan.config if source.plan else None) or source.run.get("config")
        if named and Path(named).is_file():
            return Path(named)
    raise ConfigError("the benchmark config is not known: the results dirs name no config "
                      "file that exists here", key="--config",
                      fix="pass the config the runs used: --config=PATH (and --set KEY=VALUE "
                          "for its placeholders, as with --fmbench-set)")


def load_merge_config(path: Path, sets: Sequence[str]) -> Config:
    from pytest_fmbench.config.loader import load_config
    from pytest_fmbench.endpoints.registry import backend_names
    from pytest_fmbench.redaction import register_config_secrets

    values = {}
    for pair in sets:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects KEY=VALUE, got '{pair}'", key="--set",
                              fix="e.g. --set region=us-east-1")
        values[key.strip()] = value
    config = load_config(path, values, known_backends=backend_names())
    register_config_secrets(config.model_dump(mode="json", by_alias=True),
                            placeholder_values=values)
    return config


def report_settings(config: Config, budgets: Sequence[str], gate: str | None) -> ReportSettings:
    """Budgets as a run would apply them; prices from the pricing tables (offline, like the
    report of a run: an experiment without a known price has no cost)."""
    from pytest_fmbench.budgets import require_prices
    from pytest_fmbench.config.pricing import check_prices

    settings = prepare(config, budgets, gate, experiments=[])
    for experiment in config.experiments:
        try:
            settings.prices.update(check_prices(config, [experiment]))
        except ConfigError:
            settings.prices[experiment.name] = None
    require_prices(config, settings.budgets, settings.prices, config.experiments)
    return settings


@dataclasses.dataclass
class CaseAccount:
    """The cases of the merged runs: expected by any, done by none (missing)."""

    missing: list[str]
    unchecked: list[Path]  # dirs without a case ledger (older runs)
    shards: list[str]


def account_cases(sources: Sequence[Source]) -> CaseAccount:
    expected: dict[str, None] = {}
    skipped: set[str] = set()
    done: dict[str, Path] = {}
    unchecked = []
    for source in sources:
        if source.plan is None:
            unchecked.append(source.path)
            continue
        expected.update(dict.fromkeys(source.plan.expected))
        skipped.update(source.plan.skipped)
        for case in dict.fromkeys(source.plan.done):
            if case in done:
                raise ConfigError(
                    f"case {case} was measured in both {done[case]} and {source.path}: merging "
                    "would count its requests twice", key="DIR",
                    fix="merge the dirs of disjoint shards (--fmbench-shard K/N of one N), "
                        "each once")
            done[case] = source.path
    missing = [case for case in expected if case not in done and case not in skipped]
    shards = [source.plan.shard or "unsharded" for source in sources if source.plan]
    return CaseAccount(missing, unchecked, shards)


def left_running(sources: Sequence[Source]) -> list[dict[str, Any]]:
    """What any run reported still running (its results.json): it fails the merged verdict."""
    found: list[dict[str, Any]] = []
    for source in sources:
        found += list(_json(source.path / RESULTS_FILE).get("endpoints_left_running") or [])
    return found


def rebuild(out: Path, sources: Sequence[Source], config: Config,
            settings: ReportSettings) -> SessionReport:
    """One report and verdict of ``sources`` written to ``out``."""
    account = account_cases(sources)
    outcome = finish(out, config, settings, missing_cases=account.missing,
                     left_running=left_running(sources), sources=[s.path for s in sources])
    notes = [f"no case ledger (cases.jsonl) in {path}: its missing cases cannot be checked"
             for path in account.unchecked]
    if len(sources) > 1:
        notes.insert(0, f"merged {len(sources)} results dirs (shards {', '.join(account.shards)})")
    outcome.lines[:0] = notes
    return outcome


def _merged_run(out: Path, sources: Sequence[Source], config: Config) -> None:
    out.mkdir(parents=True, exist_ok=True)
    plans = [s.plan for s in sources if s.plan]
    (out / MERGE_FILE).write_text(json.dumps(
        {"sources": [str(s.path) for s in sources]}, indent=2) + "\n", encoding="utf-8")
    meta = {
        "run_id": "merged-" + time.strftime("%Y%m%dT%H%M%S", time.gmtime()),
        "name": config.general.name,
        "config": str(config.source_path) if config.source_path else None,
        "host": platform.node(),
        "merged_from": [str(s.path) for s in sources],
        "run_ids": [s.run.get("run_id") or (s.plan.run_id if s.plan else None) for s in sources],
        "shards": [p.shard for p in plans],
        "hosts": [s.run.get("host") or (s.plan.host if s.plan else None) for s in sources],
    }
    (out / RUN_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def _parser(prog: str, merge: bool) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m pytest_fmbench {prog}", description=(
        "merge the records of several results dirs (e.g. --fmbench-shard runs) into one report "
        "and one verdict" if merge else
        "rebuild a run's report and verdict from its records (also after a crash)"))
    parser.add_argument("dirs", nargs="+" if merge else 1, metavar="DIR", type=Path,
                        help="results dirs (--fmbench-results-dir)" if merge else "a results dir")
    if merge:
        parser.add_argument("--out", required=True, type=Path, help="where the merged report goes")
    parser.add_argument("--config", default=None,
                        help="the benchmark config (default: the one the run(s) named)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="fill a {KEY} placeholder of the config, as --fmbench-set did")
    parser.add_argument("--budget", action="append", default=[], metavar="METRIC=VALUE",
                        help="a budget on any metric, as --fmbench-budget")
    parser.add_argument("--gate", default=None, choices=["best", "every"],
                        help="budget gate mode, as --fmbench-gate")
    return parser


def main(argv: Sequence[str], *, merge: bool) -> int:
    args = _parser("merge" if merge else "report", merge).parse_args(list(argv))
    try:
        sources = read_sources(expand_sources(args.dirs))
        config = load_merge_config(config_path(sources, args.config), args.set)
        settings = report_settings(config, args.budget, args.gate)
        out = args.out.resolve() if merge else args.dirs[0].resolve()
        if merge:
            if out in [s.path for s in sources]:
                raise ConfigError(f"--out {out} is one of the merged dirs", key="--out",
                                  fix="write the merged report to a directory of its own")
            _merged_run(out, sources, config)
        outcome = rebuild(out, sources, config, settings)
    except ConfigError as exc:
        print(f"ERROR {exc.render()}")
        return 4
    for line in outcome.lines:
        print(line)
    return 0 if outcome.passed else 1
