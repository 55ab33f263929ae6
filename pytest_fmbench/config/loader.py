"""Reading a config file: placeholders, YAML, validation, and one clear message on error."""

from __future__ import annotations

import difflib
import hashlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from pytest_fmbench.config.model import BUILTIN_BACKENDS, Config, is_import_path
from pytest_fmbench.config.placeholders import control_character_problem, load_filled
from pytest_fmbench.errors import ConfigError

# FMBench fills these from the AWS session; we take them from the environment when set.
_ENV_PLACEHOLDERS = {
    "region": ("AWS_REGION", "AWS_DEFAULT_REGION"),
    "role_arn": ("FMBENCH_ROLE_ARN",),
    "write_bucket": ("FMBENCH_WRITE_BUCKET",),
    "read_bucket": ("FMBENCH_READ_BUCKET",),
}


def load_config(
    path: Path,
    values: Mapping[str, str] | None = None,
    *,
    known_backends: Iterable[str] = BUILTIN_BACKENDS,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Load and validate a config file; every user mistake raises ``ConfigError``."""
    text = _read(path)
    filled = _values(path, dict(values or {}), os.environ if environ is None else environ)
    data = _parse(text, filled, path)
    config = _validate(data, path)
    config.source_path = path
    _check_backends(config, path, list(known_backends))
    _tolerate_missing_pricing(config)
    return config


def _tolerate_missing_pricing(config: Config) -> None:
    """FMBench falls back to its bundled prices when a custom pricing file is absent (its
    sample configs name a custom_pricing.yml they don't ship): so do we, with a warning."""
    from pytest_fmbench.config.pricing import missing_pricing_file

    missing = missing_pricing_file(config)
    if missing is None:
        return
    config.fall_back_from_pricing(missing, (
        f"pricing: the pricing file '{missing}' was not found next to the config or in the "
        "read dir's configs/; the packaged price table is used instead (as FMBench falls back "
        "to its own); add the file for your prices"))


def config_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _read(path: Path) -> str:
    if not path.is_file():
        raise ConfigError(
            "config file not found" if not path.exists() else "config path is not a file",
            file=str(path),
            fix="give an existing YAML file with --fmbench-config (relative paths are "
            "resolved against the directory pytest was started in)",
        )
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the config file: {exc}", file=str(path),
                          fix="check the file's permissions and that it is UTF-8 text") from None


def _values(path: Path, values: dict[str, str], environ: Mapping[str, str]) -> dict[str, str]:
    """The placeholder values: given ones, then the environment, then FMBench's defaults."""
    for name, variables in _ENV_PLACEHOLDERS.items():
        if name not in values:
            for variable in variables:
                if environ.get(variable):
                    values[name] = environ[variable]
                    break
    # FMBench defaults its buckets too (they only feed its S3 machinery, unused here).
    region = values.get("region", "unknown-region")
    values.setdefault("write_bucket", f"sagemaker-fmbench-write-{region}")
    values.setdefault("read_bucket", f"sagemaker-fmbench-read-{region}")
    for name, value in values.items():
        problem = control_character_problem(name, value)
        if problem:
            raise ConfigError(problem, file=str(path), key=f"--fmbench-set {name}",
                              fix="give a single-line value without tabs or other control "
                              "characters")
    return values


def _parse(text: str, values: Mapping[str, str], path: Path) -> dict[str, Any]:
    try:
        data, missing = load_filled(text, values)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"invalid YAML{where}: {problem}", file=str(path),
                          fix="fix the YAML syntax (indentation, quotes, colons)") from None
    if missing:
        names = ", ".join("{" + m + "}" for m in missing)
        example = " ".join(f"--fmbench-set {m}=VALUE" for m in missing)
        raise ConfigError(
            f"unfilled placeholder(s) {names}",
            file=str(path),
            key=missing[0],
            fix=f"pass {example} (or replace the placeholder in the file)",
        )
    if not isinstance(data, dict):
        raise ConfigError("the config must be a YAML mapping of sections", file=str(path),
                          fix="start from configs/quickstart.yml")
    return data


def _validate(data: dict[str, Any], path: Path) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        problems = [_describe(error, data) for error in exc.errors()]
        first_key, first_message, first_fix = problems[0]
        message = first_message
        if len(problems) > 1:
            message += "".join(
                f"\n  also: key '{key}': {text}" for key, text, _ in problems[1:]
            )
        raise ConfigError(message, file=str(path), key=first_key, fix=first_fix) from None


def _describe(error: Any, data: dict[str, Any]) -> tuple[str, str, str]:
    loc = [part for part in error["loc"] if part not in ("function-after[_range()]",)]
    key = _key_path(loc, data)
    message = str(error["msg"]).removeprefix("Value error, ")
    kind = error["type"]
    if kind == "missing":
        fix = f"add '{loc[-1]}'" + (f" under '{_key_path(loc[:-1], data)}'" if loc[:-1] else "")
    elif message.startswith("unknown key"):
        unknown = message.split("'")[1]
        key = f"{key}.{unknown}" if key else unknown
        fix = "rename or remove the key (see the annotated example in configs/quickstart.yml)"
    elif kind.endswith(("_parsing", "_type")):
        fix = f"give a value of the right type for '{key}' (got {error.get('input')!r})"
    elif kind == "too_short":
        fix = f"give at least one entry under '{key}'"
    else:
        fix = f"change the value of '{key}'"
    if "is not a section" in message:
        key = message.split(":", 1)[0]
        fix = "use a parameter set defined in the config, or define it"
    return key or "(top level)", message, fix


def _key_path(loc: list[Any], data: Any) -> str:
    """``experiments[0] (my-exp).concurrency_levels[1]`` from a pydantic location."""
    text = ""
    node = data
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
            node = node[part] if isinstance(node, list) and part < len(node) else None
            if isinstance(node, dict) and "name" in node:
                text += f" ({node['name']})"
        else:
            if not isinstance(part, str) or part.startswith(("function-", "dict[", "list[")):
                continue
            text += ("." if text else "") + part
            node = node.get(part) if isinstance(node, dict) else None
    return text


def _check_backends(config: Config, path: Path, known: list[str]) -> None:
    for index, experiment in enumerate(config.experiments):
        backend = experiment.resolved_backend
        key = f"experiments[{index}] ({experiment.name}).backend"
        if backend is None:
            raise ConfigError(
                "cannot tell which backend serves this experiment",
                file=str(path), key=key,
                fix=f"add 'backend:' with one of: {', '.join(known)}",
            )
        if backend not in known and not is_import_path(backend):
            close = difflib.get_close_matches(backend, known, n=1, cutoff=0.5)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise ConfigError(
                f"unknown backend '{backend}'",
                file=str(path), key=key,
                fix=f"{hint}known backends: {', '.join(known)} "
                "(third-party backends register the 'pytest_fmbench.backends' entry point)",
            )
