"""FMBench's own configs, loaded and collected by pytest-fmbench, offline.

    python benchmarks/fmbench_corpus.py [--cache DIR] [--collect N] [--keys] [VERSION ...]

Downloads the FMBench wheels (``pip download``, cached), reads every benchmark config under
``fmbench/configs/`` and checks that it loads and expands into exactly
Σ over experiments of len(payload_files) × len(concurrency_levels) cases, with no network,
no AWS credentials and no SageMaker SDK. The fast check runs in-process (``load_config`` +
``expand_cases``); ``--collect N`` also runs ``pytest benchmarks/ --collect-only`` as a
subprocess on N configs per version to prove the plugin path. Prints N/M per version and
each miss with its reason; exits 1 when a version misses more than its allowance.

A file is a benchmark config when it has a top-level ``experiments:`` key: FMBench's pricing
tables (``pricing.yml``, ``pricing_fallback.yml``), ``model_eval_all_info.yml`` and the EKS
manifests under ``eks_manifests/`` have none. Decided on the text, not on parsing, so a
config that fails to parse still counts (as a miss).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from pytest_fmbench.cases import expand_cases
from pytest_fmbench.config.loader import load_config
from pytest_fmbench.config.placeholders import find_placeholders, load_filled
from pytest_fmbench.errors import ConfigError

# version → (configs the issue counted, misses allowed).
VERSIONS: dict[str, tuple[int, int]] = {"2.1.6": (233, 3), "2.0.26": (216, 3), "1.0.52": (75, 2)}
BENCHMARK_CONFIG = re.compile(r"^experiments\s*:", re.MULTILINE)

# What a user passes with --fmbench-set for the placeholders FMBench fills itself or takes
# from `fmbench -A key=value`; anything else gets a generic value.
FILL: dict[str, str] = {
    "region": "us-east-1",
    "role_arn": "arn:aws:iam::123456789012:role/fmbench",
    "write_bucket": "fmbench-write",
    "read_bucket": "fmbench-read",
    "model_id": "org/model",
    "instance_type": "ml.g5.2xlarge",
    "tp_degree": "1",
    "batch_size": "4",
    "max_model_len": "4096",
    "results_dir": "results",
}
GENERIC_FILL = "value"


@dataclasses.dataclass
class Outcome:
    config: str
    expected: int | None
    got: int | None
    reason: str = ""

    @property
    def ok(self) -> bool:
        return not self.reason and self.expected == self.got


@dataclasses.dataclass
class VersionResult:
    version: str
    outcomes: list[Outcome]
    collected: list[Outcome] = dataclasses.field(default_factory=list)

    @property
    def passed(self) -> int:
        return sum(o.ok for o in self.outcomes)

    @property
    def misses(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.ok] + [o for o in self.collected if not o.ok]


def pypi_wheel(version: str, cache: Path) -> Path:
    """The FMBench wheel of ``version`` in ``cache``, downloaded once."""
    cache.mkdir(parents=True, exist_ok=True)
    name = f"fmbench-{version}-py3-none-any.whl"
    if not (cache / name).is_file():
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
             "--python-version", "3.12", "-q", "-d", str(cache), f"fmbench=={version}"],
            check=True, capture_output=True, timeout=300)
    return cache / name


def extract_configs(wheel: Path, folder: Path) -> list[Path]:
    """The wheel's ``fmbench/configs`` tree under ``folder``; the benchmark configs in it."""
    with zipfile.ZipFile(wheel) as archive:
        for member in archive.namelist():
            if member.startswith("fmbench/configs/"):
                archive.extract(member, folder)
    configs = folder / "fmbench" / "configs"
    return sorted(path for path in configs.rglob("*") if path.suffix in (".yml", ".yaml")
                  and BENCHMARK_CONFIG.search(path.read_text(encoding="utf-8", errors="replace")))


def placeholder_values(text: str) -> dict[str, str]:
    return {name: FILL.get(name, GENERIC_FILL) for name in find_placeholders(text)}


def expected_cases(data: Any) -> int:
    """FMBench's combinations, counted on the raw YAML (independent of our model), plus one
    accuracy pass per experiment where FMBench runs its evaluations with a ground truth."""
    experiments = [e for e in data.get("experiments") or [] if isinstance(e, dict)]
    combinations = sum(len(e.get("payload_files") or []) * len(e.get("concurrency_levels") or [])
                       for e in experiments)
    step = (data.get("run_steps") or {}).get("4_get_evaluations.ipynb")
    evaluations = (step not in (None, False, "no") and data.get("model_evaluations")
                   and (data.get("datasets") or {}).get("ground_truth_col_key"))
    return combinations + (len(experiments) if evaluations else 0)


def check_config(path: Path, base: Path) -> Outcome:
    name = str(path.relative_to(base))
    text = path.read_text(encoding="utf-8")
    try:
        values = placeholder_values(text)
        expected = expected_cases(load_filled(text, values)[0])
    except Exception as exc:  # noqa: BLE001 - a config that isn't YAML is a miss, with why
        return Outcome(name, None, None, f"not YAML: {exc}".splitlines()[0])
    try:
        got = len(expand_cases(load_config(path, values, environ={})))
    except (ConfigError, ValueError) as exc:
        return Outcome(name, expected, None, str(exc).replace(str(path), name).splitlines()[0])
    reason = "" if got == expected else f"{got} cases, FMBench runs {expected}"
    return Outcome(name, expected, got, reason)


def offline_env() -> dict[str, str]:
    """No credentials, no AWS config, no endpoint that answers."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "FMBENCH_")) and k != "PYTEST_ADDOPTS"}
    env.update(AWS_CONFIG_FILE="/dev/null", AWS_SHARED_CREDENTIALS_FILE="/dev/null",
               AWS_EC2_METADATA_DISABLED="true", AWS_ENDPOINT_URL="http://127.0.0.1:9",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    return env


def collect_subprocess(path: Path, base: Path) -> Outcome:
    """``pytest benchmarks/ --fmbench-config=F --collect-only -q``, as a user runs it."""
    name = str(path.relative_to(base))
    text = path.read_text(encoding="utf-8")
    values = placeholder_values(text)
    expected = expected_cases(load_filled(text, values)[0])
    sets = [arg for key, value in values.items() for arg in ("--fmbench-set", f"{key}={value}")]
    with tempfile.TemporaryDirectory() as results:
        process = subprocess.run(
            [sys.executable, "-m", "pytest", str(ROOT / "benchmarks"), f"--fmbench-config={path}",
             "--collect-only", "-q", "-p", "no:randomly", "-p", "no:cacheprovider",
             f"--fmbench-results-dir={results}", *sets],
            capture_output=True, text=True, timeout=120, env=offline_env(), cwd=results,
            check=False)
    got = sum("::test_benchmark[" in line for line in process.stdout.splitlines())
    if process.returncode != 0:
        last = (process.stderr.strip() or process.stdout.strip()).splitlines()[-1:]
        return Outcome(name + " (collect-only)", expected, got,
                       f"exit {process.returncode}: {' '.join(last)}")
    reason = "" if got == expected else f"collected {got}, FMBench runs {expected}"
    return Outcome(name + " (collect-only)", expected, got, reason)


def run_version(version: str, cache: Path, collect: int = 0) -> VersionResult:
    folder = cache / f"configs-{version}"
    configs = extract_configs(pypi_wheel(version, cache), folder)
    base = folder / "fmbench" / "configs"
    result = VersionResult(version, [check_config(path, base) for path in configs])
    # A spread of configs (SageMaker, Bedrock, EC2, JumpStart...) through the real plugin.
    step = max(1, len(configs) // collect) if collect else 0
    for path in configs[::step][:collect] if collect else []:
        result.collected.append(collect_subprocess(path, base))
    return result


def report(result: VersionResult) -> list[str]:
    lines = [f"fmbench {result.version}: {result.passed}/{len(result.outcomes)} benchmark configs "
             f"load and expand into FMBench's case count"
             + (f"; {sum(o.ok for o in result.collected)}/{len(result.collected)} collected by "
                "pytest --collect-only" if result.collected else "")]
    lines += [f"  miss: {o.config}: {o.reason}" for o in result.misses]
    return lines


def missing_keys(cache: Path, versions: list[str]) -> dict[str, set[str]]:
    """Keys in these corpora (configs and code) that fmbench_keys.FMBENCH_KEYS lacks."""
    from pytest_fmbench.config.fmbench_keys import FMBENCH_KEYS, OPAQUE_SECTIONS

    found: dict[str, set[str]] = {}

    def note(section: str, mapping: Any) -> None:
        if isinstance(mapping, dict):
            unknown = {str(k) for k in mapping} - FMBENCH_KEYS.get(section, frozenset())
            if unknown:
                found.setdefault(section, set()).update(unknown)

    for version in versions:
        for path in extract_configs_in(cache / f"configs-{version}"):
            text = path.read_text(encoding="utf-8")
            try:
                data = load_filled(text, placeholder_values(text))[0]
            except Exception:  # noqa: BLE001, S112 - reported by the main check
                continue
            note("", data)
            for section, value in data.items():
                if section in FMBENCH_KEYS and section not in OPAQUE_SECTIONS:
                    note(section, value)
            for dataset_filter in (data.get("datasets") or {}).get("filters") or []:
                note("datasets.filters", dataset_filter)
            for experiment in data.get("experiments") or []:
                note("experiments", experiment)
    for version in versions:
        for section, keys in source_keys(pypi_wheel(version, cache)).items():
            unknown = keys - FMBENCH_KEYS.get(section, frozenset())
            if unknown:
                found.setdefault(section, set()).update(unknown)
    return found


# config['section']['key'] / config['section'].get('key') in FMBench's code and notebooks
# (notebook JSON escapes the quotes), and its predictors' inference_spec.get('key').
_SECTION_READ = re.compile(
    r"""config\[\\?['"](\w+)\\?['"]\](?:\[\\?['"]([\w.]+)\\?['"]\]|\.get\(\\?['"]([\w.]+)\\?['"])""")
_SPEC_READ = re.compile(r"""inference_spec(?:\[\\?['"]|\.get\(\\?['"])(\w+)""")
CODE_SECTIONS = ("general", "aws", "datasets", "metrics", "report")


def source_keys(wheel: Path) -> dict[str, set[str]]:
    """Keys FMBench's own code reads, by section (sections we validate only)."""
    found: dict[str, set[str]] = {}
    with zipfile.ZipFile(wheel) as archive:
        for member in archive.namelist():
            if not member.endswith((".py", ".ipynb")):
                continue
            code = archive.read(member).decode("utf-8", errors="replace")
            for section, key, got in _SECTION_READ.findall(code):
                if section in CODE_SECTIONS:
                    found.setdefault(section, set()).add(key or got)
            for key in _SPEC_READ.findall(code):
                found.setdefault("experiments.inference_spec", set()).add(key)
    return found


def extract_configs_in(folder: Path) -> list[Path]:
    configs = folder / "fmbench" / "configs"
    return sorted(path for path in configs.rglob("*") if path.suffix in (".yml", ".yaml")
                  and BENCHMARK_CONFIG.search(path.read_text(encoding="utf-8", errors="replace")))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("versions", nargs="*", default=list(VERSIONS))
    parser.add_argument("--cache", type=Path,
                        default=Path(tempfile.gettempdir()) / "pytest-fmbench-corpus")
    parser.add_argument("--collect", type=int, default=3, metavar="N",
                        help="also run pytest --collect-only on N configs per version")
    parser.add_argument("--keys", action="store_true",
                        help="print corpus keys missing from fmbench_keys.py")
    args = parser.parse_args(argv)
    failed = False
    for version in args.versions:
        result = run_version(version, args.cache, args.collect)
        print("\n".join(report(result)))
        failed |= len(result.misses) > VERSIONS.get(version, (0, 0))[1]
    if args.keys:
        for section, keys in sorted(missing_keys(args.cache, args.versions).items()):
            print(f"keys missing from FMBENCH_KEYS[{section!r}]: {', '.join(sorted(keys))}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
