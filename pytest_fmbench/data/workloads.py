"""Workloads: the requests of one payload file built from a ``datasets.workloads`` entry.

Each kind gives what the benchmarks of the field send (docs/workloads.md):

- ``synthetic``: prompts of exactly N tokens by the configured tokenizer, output forced to M
  tokens where the server allows it; lengths fixed, normal (mean/stddev) or a distribution;
- ``sharegpt``: a local ShareGPT-format file (the JSON vLLM's and GuideLLM's benchmarks read:
  ``[{"conversations": [{"from": "human", "value": ...}, {"from": "gpt", ...}]}]``): the first
  human message is the prompt, the first answer's length the output length;
- ``shared_prefix``: P prefixes x S suffixes of fixed token sizes, for prefix-cache effects;
- ``trace``: a Mooncake-style JSONL (``timestamp`` ms, ``input_length``, ``output_length``,
  ``hash_ids`` of shared ``block_tokens``-token blocks), each request due at its offset
  (``offset_ns``, divided by ``speed``); the ``trace`` load pattern sends it then;
- ``sessions``: multi-turn conversations (ShareGPT's human turns, or synthetic turns); the
  ``sessions`` load pattern sends each turn with the history, previous answers included.

Every request carries the experiment's inference parameters with the output length set
(the parameter set's own max-tokens key, else ``max_new_tokens``) and the forcing fields.
Built in memory, deterministic for the same seed, file and tokenizer.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pytest_fmbench.config.model import LengthDistribution, Workload
from pytest_fmbench.data.synthetic import ExactLengthText, sample_lengths
from pytest_fmbench.data.tokens import TokenCounter
from pytest_fmbench.endpoints.base import InferenceRequest
from pytest_fmbench.errors import ConfigError
from pytest_fmbench.safety.spend import (
    OUTPUT_TOKEN_KEYS,  # the first one a parameter set has is set
)

WORKLOADS_KEY = "datasets.workloads"
# Which workload kinds need their own load pattern (the rest use the configured one).
PATTERN_OF_KIND = {"trace": "trace", "sessions": "sessions"}
_DEFAULT_SYNTHETIC_REQUESTS = 100
_DEFAULT_SESSIONS = 10


def default_force_output(backend: str | None) -> list[str]:
    """``ignore_eos`` for OpenAI-compatible servers (vLLM and SGLang honour it); nothing for
    the others (``transformers serve`` answers 422 to unknown fields, and already runs to
    ``max_tokens``; TGI, SageMaker and Bedrock have no such field)."""
    return ["ignore_eos"] if backend == "openai" else []


def check_backend(workload: Workload, backend: str | None, experiment: str) -> None:
    """Sessions send chat histories: only the OpenAI-compatible clients send messages."""
    if workload.kind == "sessions" and backend not in ("openai", "local"):
        raise ConfigError(
            f"experiment '{experiment}' ({backend or 'no'} backend) cannot run the sessions "
            f"workload '{workload.payload_file}': only OpenAI-compatible backends (openai, "
            "local) send chat histories", key=WORKLOADS_KEY,
            fix="use the workload with an openai or local experiment")


def build_workload(workload: Workload, *, counter: TokenCounter, parameters: Mapping[str, Any],
                   force_output: Sequence[str], base_dir: Path) -> list[InferenceRequest]:
    """The requests of one workload for one experiment (its ``parameters``)."""
    builder = _Builder(workload, counter, parameters, force_output, base_dir)
    kinds = {"synthetic": builder.synthetic, "sharegpt": builder.sharegpt,
             "shared_prefix": builder.shared_prefix, "trace": builder.trace,
             "sessions": builder.sessions}
    requests = kinds[workload.kind]()
    if not requests:
        raise ConfigError(f"workload '{workload.payload_file}' produced no request",
                          key=WORKLOADS_KEY, fix="check its file and its sizes")
    return requests


class _Builder:
    def __init__(self, workload: Workload, counter: TokenCounter, parameters: Mapping[str, Any],
                 force_output: Sequence[str], base_dir: Path) -> None:
        self.workload = workload
        self.counter = counter
        self.parameters = dict(parameters)
        self.force = list(force_output)
        self.base_dir = base_dir
        # The payload file is in the seed: two workloads never share text by accident (a
        # prefix cache would serve one from the other).
        self.rng = random.Random(f"{workload.seed}:{workload.payload_file}")
        self._text: ExactLengthText | None = None

    @property
    def text(self) -> ExactLengthText:
        if self._text is None:
            self._text = ExactLengthText(self.counter)
        return self._text

    # -- parameters ------------------------------------------------------------------------
    def params(self, output_tokens: int | None) -> dict[str, Any]:
        """The experiment's parameters with the output length set and forced."""
        parameters = dict(self.parameters)
        if output_tokens is None:
            return parameters
        key = next((k for k in OUTPUT_TOKEN_KEYS if k in parameters), "max_new_tokens")
        parameters[key] = output_tokens
        if "ignore_eos" in self.force:
            parameters["ignore_eos"] = True
        if "min_tokens" in self.force:
            parameters["min_tokens"] = output_tokens
        return parameters

    def lengths(self, spec: int | LengthDistribution | None, count: int) -> list[int | None]:
        if spec is None:
            return [None] * count
        raw = spec if isinstance(spec, int) else spec.model_dump(exclude_none=True)
        return list(sample_lengths(raw, count, self.rng))

    def request(self, prompt: str, input_tokens: int | None, output_tokens: int | None, *,
                prompt_tokens: int | None = None, **extra: Any) -> InferenceRequest:
        counted = self.counter.count(prompt) if prompt_tokens is None else prompt_tokens
        return InferenceRequest(prompt, self.params(output_tokens), counted,
                                target_prompt_tokens=input_tokens,
                                target_completion_tokens=output_tokens, **extra)

    # -- kinds -----------------------------------------------------------------------------
    def synthetic(self) -> list[InferenceRequest]:
        count = self.workload.requests or _DEFAULT_SYNTHETIC_REQUESTS
        inputs = self.lengths(self.workload.input_tokens, count)
        outputs = self.lengths(self.workload.output_tokens, count)
        return [self.request(self.text.text(n or 1, self.rng), n, m)
                for n, m in zip(inputs, outputs)]

    def shared_prefix(self) -> list[InferenceRequest]:
        w = self.workload
        assert w.prefixes and w.suffixes and w.prefix_tokens and w.suffix_tokens
        prefixes = [self.text.text(w.prefix_tokens, self.rng) for _ in range(w.prefixes)]
        total = w.prefix_tokens + w.suffix_tokens
        outputs = self.lengths(w.output_tokens, w.prefixes * w.suffixes)
        # Suffixes interleave the prefixes (p0s0, p1s0, ..., p0s1, ...): each prefix is
        # seen once cold, then warm, whatever the concurrency.
        requests = [self.request(self.text.text(total, self.rng, prefix=prefixes[p]), total,
                                 outputs[s * w.prefixes + p])
                    for s in range(w.suffixes) for p in range(w.prefixes)]
        return requests[:w.requests] if w.requests else requests

    def sharegpt(self) -> list[InferenceRequest]:
        conversations = [c for c in self._conversations() if len(c) >= 2]
        if self.workload.requests:
            conversations = conversations[:self.workload.requests]
        prompts = [c[0]["content"] for c in conversations]
        prompt_counts = self.counter.count_many(prompts)
        if self.workload.output_tokens is not None:
            outputs = self.lengths(self.workload.output_tokens, len(prompts))
        else:  # the reference answer's length, as vLLM's ShareGPT benchmark does
            outputs = [max(1, n) for n in self.counter.count_many([c[1]["content"]
                                                                   for c in conversations])]
        return [self.request(prompt, None, output, prompt_tokens=tokens)
                for prompt, tokens, output in zip(prompts, prompt_counts, outputs)]

    def sessions(self) -> list[InferenceRequest]:
        w = self.workload
        if w.path is not None:
            turns = [[m["content"] for m in c if m["role"] == "user"] for c in self._conversations()]
            turns = [t[:w.turns] if w.turns else t for t in turns if t]
        else:
            assert w.turns
            count = w.requests or _DEFAULT_SESSIONS
            turns = [[self.text.text(n or 1, self.rng)
                      for n in self.lengths(w.input_tokens, w.turns)] for _ in range(count)]
        if w.requests:
            turns = turns[:w.requests]
        outputs = self.lengths(w.output_tokens, len(turns))
        return [self.request(user[0], None, outputs[index], session=index, turn=0,
                             messages=({"role": "user", "content": user[0]},),
                             followups=tuple(user[1:]))
                for index, user in enumerate(turns)]

    def trace(self) -> list[InferenceRequest]:
        entries = self._trace_entries()
        if self.workload.requests:
            entries = entries[:self.workload.requests]
        start = min(e["timestamp"] for e in entries)
        blocks: dict[int, list[str]] = {}
        requests = []
        for entry in entries:
            prompt = self._trace_prompt(entry["input_length"], entry["hash_ids"], blocks)
            offset = round((entry["timestamp"] - start) * 1e6 / self.workload.speed)
            requests.append(self.request(prompt, entry["input_length"], entry["output_length"],
                                         offset_ns=offset))
        return requests

    # -- files -----------------------------------------------------------------------------
    def _path(self) -> Path:
        assert self.workload.path is not None
        return (self.base_dir / self.workload.path).expanduser()

    def _error(self, problem: str, fix: str) -> ConfigError:
        return ConfigError(f"workload '{self.workload.payload_file}': {problem}",
                           file=str(self._path()), key=WORKLOADS_KEY, fix=fix)

    def _read(self) -> str:
        try:
            return self._path().read_text(encoding="utf-8")
        except OSError as exc:
            raise self._error(f"cannot read the file ({exc.strerror or exc})",
                              "give 'path' relative to the config file") from None

    def _conversations(self) -> list[list[dict[str, str]]]:
        """ShareGPT conversations as chat messages (human/user -> user, gpt/... -> assistant),
        from a JSON list or JSON lines."""
        text = self._read()
        try:
            items = json.loads(text) if text.lstrip().startswith("[") else \
                [json.loads(line) for line in text.splitlines() if line.strip()]
            out = []
            for item in items:
                turns = item["conversations"] if "conversations" in item else item["conversation"]
                out.append([{"role": _ROLES.get(str(t["from"]).lower(), "assistant"),
                             "content": str(t["value"])} for t in turns
                            if str(t["from"]).lower() != "system"])
            return out
        except (ValueError, KeyError, TypeError) as exc:
            raise self._error(f"not a ShareGPT file ({type(exc).__name__}: {exc})",
                              'give a list of {"conversations": [{"from": "human", '
                              '"value": "..."}, {"from": "gpt", "value": "..."}]}') from None

    def _trace_entries(self) -> list[dict[str, Any]]:
        entries = []
        for number, line in enumerate(self._read().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
                entries.append({"timestamp": float(raw["timestamp"]),
                                "input_length": int(raw["input_length"]),
                                "output_length": int(raw["output_length"]),
                                "hash_ids": [int(h) for h in raw.get("hash_ids") or ()]})
            except (ValueError, KeyError, TypeError) as exc:
                raise self._error(f"line {number} is not a trace record ({type(exc).__name__}: "
                                  f"{exc})", 'each line: {"timestamp": ms, "input_length": N, '
                                  '"output_length": M, "hash_ids": [...]}') from None
        if not entries:
            raise self._error("the trace is empty", "give at least one record")
        return entries

    def _trace_prompt(self, tokens: int, hash_ids: Sequence[int],
                      blocks: dict[int, list[str]]) -> str:
        """Whole blocks of ``block_tokens`` tokens, the same text for the same hash id (so
        shared blocks are shared prefixes), then fresh words up to ``tokens`` in all (the
        partial last block, which no other request shares)."""
        size = self.workload.block_tokens
        words: list[str] = []
        left = tokens
        for hash_id in hash_ids:
            if left <= 0:
                break
            block = blocks.get(hash_id)
            if block is None:
                block = blocks[hash_id] = self.text.words(
                    size, random.Random(f"{self.workload.seed}:{self.workload.payload_file}:"
                                        f"{hash_id}"))
            if left >= size:
                words += block
                left -= size
                continue
            break  # the last, partial block: filled exactly below
        prefix = " ".join(words)
        return self.text.text(tokens, self.rng, prefix=prefix) if left > 0 else prefix


_ROLES = {"human": "user", "user": "user"}
