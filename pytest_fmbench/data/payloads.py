"""Payload files: rendered prompts split by token length, one JSON-lines file per filter.

Like FMBench's data step, every record is rendered through the prompt template, counted
once, and written to each ``datasets.filters`` entry whose language and token range it
matches. Files are fingerprinted so an unchanged dataset is not rebuilt, and written
atomically so xdist workers building the same files at once cannot corrupt them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pytest_fmbench.data.template import render_prompt
from pytest_fmbench.data.tokens import TokenCounter
from pytest_fmbench.errors import ConfigError

FILTERS_KEY = "datasets.filters"
META_SUFFIX = ".meta.json"
# Bump when the payload line format or the selection rule changes: old files are rebuilt.
PAYLOAD_FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class PayloadFilter:
    payload_file: str
    min_length_in_tokens: int = 1
    max_length_in_tokens: int = 10**9
    language: str | None = None

    @property
    def dataset_name(self) -> str:
        """FMBench's name for this file, as used by ``metrics.dataset_of_interest``."""
        return self.payload_file.removeprefix("payload_").removesuffix(".jsonl")

    def describe(self) -> str:
        language = f", language '{self.language}'" if self.language else ""
        return (f"payload file '{self.payload_file}' "
                f"({self.min_length_in_tokens}-{self.max_length_in_tokens} tokens{language})")

    def accepts(self, payload: Payload) -> bool:
        return ((self.language is None or payload.language == self.language)
                and self.min_length_in_tokens <= payload.prompt_tokens
                <= self.max_length_in_tokens)


@dataclasses.dataclass(frozen=True)
class Payload:
    id: str
    prompt: str
    prompt_tokens: int
    token_source: str
    language: str | None


def build_payload_files(records: Sequence[Mapping[str, Any]], *, template: str,
                        keys: Sequence[str], filters: Sequence[PayloadFilter],
                        counter: TokenCounter, out_dir: Path,
                        max_prompts_per_file: int | None = None) -> dict[str, Path]:
    """Write one payload file per filter into ``out_dir``; return payload_file -> path.

    A file whose fingerprint is unchanged is left as it is (same mtime), and when every file
    is current the prompts are not even rendered or counted.
    """
    _check_filters(filters)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    inputs_digest = _inputs_digest(records, template, keys, counter.name, max_prompts_per_file)
    paths = {f.payload_file: out_dir / f.payload_file for f in filters}
    fingerprints = {f.payload_file: _fingerprint(inputs_digest, f) for f in filters}
    stale = [f for f in filters
             if not _is_current(paths[f.payload_file], fingerprints[f.payload_file])]
    if not stale:
        return paths
    payloads = _render_payloads(records, template, keys, counter)
    for payload_filter in stale:
        selected = [p for p in payloads if payload_filter.accepts(p)]
        if not selected:
            raise _no_prompt_error(payload_filter, payloads, counter)
        _write_payload_file(paths[payload_filter.payload_file],
                            selected[:max_prompts_per_file],
                            fingerprints[payload_filter.payload_file])
    return paths


def load_payloads(path: Path) -> list[Payload]:
    """The payloads of one payload file, in file order."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ConfigError("payload file not found", file=str(path), key=FILTERS_KEY,
                          fix="build payload files first (build_payload_files) and check that "
                              "the experiment's payload_files match a datasets filter") from None
    payloads = [_parse_payload(line, path, number)
                for number, line in enumerate(lines, start=1) if line.strip()]
    if not payloads:
        raise ConfigError("payload file has no prompts", file=str(path), key=FILTERS_KEY,
                          fix="delete it so it is rebuilt, or widen the filter's token range")
    return payloads


def _check_filters(filters: Sequence[PayloadFilter]) -> None:
    seen: set[str] = set()
    for payload_filter in filters:
        name = payload_filter.payload_file
        if not name or Path(name).name != name:
            raise ConfigError(f"payload_file '{name}' must be a plain file name",
                              key=FILTERS_KEY, fix="use a name like 'payload_en_1-500.jsonl'")
        if name in seen:
            raise ConfigError(f"payload_file '{name}' is used by two filters", key=FILTERS_KEY,
                              fix="give every filter its own payload_file name")
        if payload_filter.min_length_in_tokens > payload_filter.max_length_in_tokens:
            raise ConfigError(
                f"{payload_filter.describe()}: min_length_in_tokens is above "
                "max_length_in_tokens", key=FILTERS_KEY,
                fix="swap min_length_in_tokens and max_length_in_tokens")
        seen.add(name)


def _render_payloads(records: Sequence[Mapping[str, Any]], template: str,
                     keys: Sequence[str], counter: TokenCounter) -> list[Payload]:
    prompts = [render_prompt(template, record, keys) for record in records]
    token_counts = counter.count_many(prompts)  # one batch: fast tokenizers parallelise it
    return [
        Payload(id=str(record.get("_id", index)), prompt=prompt, prompt_tokens=tokens,
                token_source=counter.source, language=_language(record))
        for index, (record, prompt, tokens) in enumerate(zip(records, prompts, token_counts))
    ]


def _language(record: Mapping[str, Any]) -> str | None:
    language = record.get("language")
    return None if language is None else str(language)


def _no_prompt_error(payload_filter: PayloadFilter, payloads: Sequence[Payload],
                     counter: TokenCounter) -> ConfigError:
    in_language = [p for p in payloads
                   if payload_filter.language is None or p.language == payload_filter.language]
    if not in_language:
        languages = sorted({str(p.language) for p in payloads})
        observed = f"no prompt is in language '{payload_filter.language}' " \
                   f"(the dataset has: {', '.join(languages)})"
    else:
        counts = [p.prompt_tokens for p in in_language]
        observed = (f"the {len(counts)} prompts have {min(counts)}-{max(counts)} tokens "
                    f"(counted by {counter.name})")
    return ConfigError(
        f"{payload_filter.describe()} matches no prompt: {observed}",
        key=FILTERS_KEY,
        fix="widen this filter's min_length_in_tokens/max_length_in_tokens (or fix its "
            "language), or give a dataset with longer or shorter prompts",
    )


def _inputs_digest(records: Sequence[Mapping[str, Any]], template: str, keys: Sequence[str],
                   counter_name: str, max_prompts_per_file: int | None) -> str:
    """What every payload file depends on besides its own filter, hashed once."""
    digest = hashlib.sha256()
    for part in (PAYLOAD_FORMAT_VERSION, template, list(keys), counter_name,
                 max_prompts_per_file):
        digest.update(json.dumps(part).encode())
        digest.update(b"\0")
    for record in records:
        digest.update(json.dumps(record, sort_keys=True, default=str).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def _fingerprint(inputs_digest: str, payload_filter: PayloadFilter) -> str:
    filter_json = json.dumps(dataclasses.asdict(payload_filter), sort_keys=True)
    return hashlib.sha256(f"{inputs_digest}\0{filter_json}".encode()).hexdigest()


def _meta_path(path: Path) -> Path:
    return path.with_name(path.name + META_SUFFIX)


def _is_current(path: Path, fingerprint: str) -> bool:
    try:
        meta = json.loads(_meta_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return path.is_file() and isinstance(meta, dict) and meta.get("fingerprint") == fingerprint


def _write_payload_file(path: Path, payloads: Sequence[Payload], fingerprint: str) -> None:
    lines = "".join(json.dumps(dataclasses.asdict(p), ensure_ascii=False) + "\n"
                    for p in payloads)
    _write_atomically(path, lines)
    tokens = [p.prompt_tokens for p in payloads]
    meta = {"fingerprint": fingerprint, "prompts": len(payloads),
            "min_prompt_tokens": min(tokens), "max_prompt_tokens": max(tokens)}
    # The meta file goes last: a crash in between leaves a file that is simply rebuilt.
    _write_atomically(_meta_path(path), json.dumps(meta, indent=2) + "\n")


def _write_atomically(path: Path, text: str) -> None:
    """Temp file in the same directory + os.replace: readers see the old or the new file,
    never half of one, even with several xdist workers writing the same path."""
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as temp_file:
            temp_file.write(text)
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def _parse_payload(line: str, path: Path, number: int) -> Payload:
    try:
        fields = json.loads(line)
        return Payload(id=str(fields["id"]), prompt=str(fields["prompt"]),
                       prompt_tokens=int(fields["prompt_tokens"]),
                       token_source=str(fields.get("token_source", "")),
                       language=fields.get("language"))
    except (ValueError, TypeError, KeyError) as exc:
        raise ConfigError(
            f"line {number} is not a payload ({type(exc).__name__}: {exc})",
            file=str(path), key=FILTERS_KEY,
            fix="delete the file so it is rebuilt from the dataset") from None

