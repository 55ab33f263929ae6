"""Workload figures over plain sequences of records: requested vs actual lengths, per turn and
per session (multi-turn), for the report's workload section.

Grouped per combination (experiment × payload file × concurrency) like the metrics table;
only records that carry the figure count (a target length, a session).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from pytest_fmbench.load.records import RequestRecord

Key = tuple[str, str, int]


def _key(record: RequestRecord) -> Key:
    return (record.experiment, record.payload_file, record.concurrency)


def _percentile(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


def _mean(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def length_summary(records: Iterable[RequestRecord]) -> list[dict[str, Any]]:
    """Requested vs actual lengths per combination, for records with a requested length.

    Actual prompt length: the server's count when it reported one, else ours; the server's
    may include a BOS token or a chat template, so ``prompt_off_max`` is read with that in mind.
    """
    groups: dict[Key, list[RequestRecord]] = defaultdict(list)
    for record in records:
        if record.ok and (record.target_prompt_tokens is not None
                          or record.target_completion_tokens is not None):
            groups[_key(record)].append(record)
    out = []
    for key in sorted(groups):
        rows = groups[key]
        prompt = [r for r in rows if r.target_prompt_tokens is not None and r.prompt_tokens is not None]
        completion = [r for r in rows if r.target_completion_tokens is not None
                      and r.completion_tokens is not None]
        out.append({
            "experiment": key[0], "payload_file": key[1], "concurrency": key[2],
            "requests": len(rows),
            "prompt_requested_mean": _mean(r.target_prompt_tokens for r in prompt),
            "prompt_actual_mean": _mean(r.prompt_tokens for r in prompt),
            "prompt_off_max": max((abs((r.prompt_tokens or 0) - (r.target_prompt_tokens or 0))
                                   for r in prompt), default=None),
            "completion_requested_mean": _mean(r.target_completion_tokens for r in completion),
            "completion_actual_mean": _mean(r.completion_tokens for r in completion),
            "completion_exact": sum(r.completion_tokens == r.target_completion_tokens
                                    for r in completion),
            "completion_counted": len(completion),
        })
    return out


def turn_summary(records: Iterable[RequestRecord]) -> list[dict[str, Any]]:
    """Per combination and turn of multi-turn sessions: requests, errors, TTFT and latency
    (p50, p95; successful requests), mean prompt and cached tokens (the history grows)."""
    groups: dict[tuple[Key, int], list[RequestRecord]] = defaultdict(list)
    for record in records:
        if record.turn is not None and record.turn >= 0:
            groups[(_key(record), record.turn)].append(record)
    out = []
    for (key, turn) in sorted(groups):
        rows = groups[(key, turn)]
        ok = [r for r in rows if r.ok]
        ttft = [t for t in (r.ttft_s for r in ok) if t is not None]
        latency = [r.latency_s for r in ok]
        out.append({
            "experiment": key[0], "payload_file": key[1], "concurrency": key[2], "turn": turn,
            "requests": len(rows), "errors": len(rows) - len(ok),
            "ttft_p50": _percentile(ttft, 50), "ttft_p95": _percentile(ttft, 95),
            "latency_p50": _percentile(latency, 50), "latency_p95": _percentile(latency, 95),
            "prompt_tokens_mean": _mean(r.prompt_tokens for r in ok),
            "cached_tokens_mean": _mean(r.cached_tokens for r in ok),
        })
    return out


def session_summary(records: Iterable[RequestRecord]) -> list[dict[str, Any]]:
    """Per combination: sessions, those with every turn successful, turns per session, and
    session duration (first send to last byte of its last turn; p50, p95, completed ones)."""
    sessions: dict[Key, dict[int, list[RequestRecord]]] = defaultdict(lambda: defaultdict(list))
    for record in records:
        if record.session is not None and record.session >= 0:
            sessions[_key(record)][record.session].append(record)
    out = []
    for key in sorted(sessions):
        by_session = sessions[key]
        completed = [rows for rows in by_session.values() if all(r.ok for r in rows)]
        durations = [(max(r.last_byte_ns for r in rows) - min(r.sent_ns for r in rows)) / 1e9
                     for rows in completed]
        out.append({
            "experiment": key[0], "payload_file": key[1], "concurrency": key[2],
            "sessions": len(by_session), "completed": len(completed),
            "turns_mean": float(np.mean([len(rows) for rows in by_session.values()])),
            "duration_p50": _percentile(durations, 50), "duration_p95": _percentile(durations, 95),
        })
    return out
