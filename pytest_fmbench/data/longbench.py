"""Loading LongBench datasets: JSON lines, one record per line (``input``, ``context``,
``answers``, ``length``, ``dataset``, ``language``, ``_id``), as FMBench reads them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pytest_fmbench.errors import ConfigError

DATASET_KEY = "s3_read_data.source_data_files"


def load_longbench_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every record of a LongBench JSONL file, in file order (blank lines are skipped)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            "dataset file not found", file=str(path), key=DATASET_KEY,
            fix="check the path under 'source_data_files' (relative paths are resolved "
                "against the directory pytest was started from), or leave datasets unset "
                "to use the built-in synthetic dataset",
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read dataset file: {exc}", file=str(path), key=DATASET_KEY,
                          fix="give a readable UTF-8 JSON-lines file") from None
    records = [_parse_record(line, path, number)
               for number, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if not records:
        raise ConfigError("dataset file has no records", file=str(path), key=DATASET_KEY,
                          fix="give a JSON-lines file with one LongBench record per line")
    return records


def _parse_record(line: str, path: Path, number: int) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"line {number} is not valid JSON ({exc.msg} at column {exc.colno})",
            file=str(path), key=DATASET_KEY,
            fix=f"fix or remove line {number}: each line must be one JSON object",
        ) from None
    if not isinstance(record, dict):
        raise ConfigError(
            f"line {number} is a JSON {type(record).__name__}, not an object",
            file=str(path), key=DATASET_KEY,
            fix=f"make line {number} one JSON object such as "
                '{"input": "...", "context": "...", "answers": ["..."]}',
        )
    return record
