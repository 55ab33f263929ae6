"""RequestRecord: one row per request, appended to a JSON-lines file as it completes.

Records are written from the load's event loop, one write call each, so that a crash loses
nothing finished; serializing is the costly part, so it uses orjson when installed (the
``fast`` extra): about 1 µs a record instead of about 7 µs with ``json``.

Field meanings are fixed by METRICS.md. Timestamps are nanoseconds on the shared timeline
(see ``pytest_fmbench.clock``); durations are differences of timestamps from one process.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any


def _json_loads() -> Callable[[bytes], Any]:
    try:
        import orjson

        return orjson.loads
    except ImportError:
        return json.loads


def _json_dumps() -> Callable[[dict[str, Any]], bytes]:
    try:
        import orjson

        return orjson.dumps
    except ImportError:
        def dumps(data: dict[str, Any]) -> bytes:
            return json.dumps(data, separators=(",", ":")).encode()

        return dumps


_DUMPS = _json_dumps()
_LOADS = _json_loads()

ERROR_CLASSES = (
    "timeout",
    "throttled",
    "http_4xx",
    "http_5xx",
    "connection",
    "stream_truncated",
    "bad_response",
    "client",
)

TOKEN_SOURCES = ("server", "tokenizer", "estimate", "")


@dataclasses.dataclass
class RequestRecord:
    run_id: str
    experiment: str
    payload_file: str
    concurrency: int
    case_id: str
    request_id: int
    scheduled_ns: int
    sent_ns: int
    last_byte_ns: int
    first_token_ns: int | None = None
    first_reasoning_ns: int | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    token_source: str = ""
    error: str = ""
    error_detail: str = ""
    status: int | None = None
    wave: int = -1
    retries: int = 0
    # Retried after throttling: first send -> final send (``sent``), earlier attempts and
    # back-off. The server's doing, not the client's: never counted as client queue.
    retry_wait_ns: int = 0
    worker: str = ""
    # Gaps between consecutive content chunks, in microseconds (ITL, pooled later).
    itl_us: list[int] = dataclasses.field(default_factory=list)
    # The client's own overhead (pytest_fmbench.load): rate pattern only, the arrival found
    # the in-flight bound reached and waited for a slot (its wait is sent - scheduled);
    # the worst event-loop lag seen while it was in flight; and whether the client was
    # saturated for it (first sent late, or loop lag, beyond load.saturation_ms).
    queued: bool = False
    loop_lag_us: int | None = None
    saturated: bool = False
    # Where the record was measured, so results dirs of several runs can be merged later
    # (``python -m pytest_fmbench merge``): the shard (``--fmbench-shard``, "K/N"), the host,
    # and the measuring process's clock anchor (``clock.anchor()``'s wall time: records of one
    # process share it). A process on another host (``load.executor: ray``) writes its
    # timestamps on the driver's timeline: ``clock_offset_ns`` (its clock minus the driver's,
    # already subtracted) and ``clock_uncertainty_ns`` (half the best ping's round trip).
    shard: str = ""
    host: str = ""
    clock_anchor_ns: int = 0
    clock_offset_ns: int = 0
    clock_uncertainty_ns: int = 0
    # Workloads (data/workloads.py): the session and turn of a multi-turn request (-1: none);
    # the lengths the workload asked for; the server's prefix-cache hits
    # (usage.prompt_tokens_details.cached_tokens); our tokenizer's counts next to the
    # server's usage (token-count mismatch).
    session: int = -1
    turn: int = -1
    target_prompt_tokens: int | None = None
    target_completion_tokens: int | None = None
    cached_tokens: int | None = None
    client_prompt_tokens: int | None = None
    client_completion_tokens: int | None = None
    # The load level (docs/load-levels.md): "" for a concurrency level, else ``r8`` (a rate
    # level), or the level a sweep or SLO search chose (``sweep-r12.5``, ``probe``); the
    # offered rate (requests/s) of an open-loop level; which repeat of the level (0-based).
    level: str = ""
    rate: float | None = None
    repeat: int = 0

    @property
    def ok(self) -> bool:
        return not self.error

    @property
    def latency_s(self) -> float:
        return (self.last_byte_ns - self.sent_ns) / 1e9

    @property
    def first_sent_ns(self) -> int:
        """When the first attempt was sent (``sent_ns`` unless the request was retried)."""
        return self.sent_ns - (self.retry_wait_ns or 0)

    @property
    def response_time_s(self) -> float:
        """``last_byte − scheduled``: latency plus any wait before sending (open-loop queueing)."""
        return (self.last_byte_ns - self.scheduled_ns) / 1e9

    @property
    def ttft_s(self) -> float | None:
        """To the first generated token of any kind (a reasoning model's reasoning too)."""
        firsts = [t for t in (self.first_token_ns, self.first_reasoning_ns) if t is not None]
        if not firsts:
            return None
        return (min(firsts) - self.sent_ns) / 1e9

    @property
    def ttfat_s(self) -> float | None:
        """To the first answer token (after a reasoning model's reasoning)."""
        if self.first_token_ns is None:
            return None
        return (self.first_token_ns - self.sent_ns) / 1e9

    def to_json(self) -> bytes:
        """One compact JSON object (UTF-8)."""
        # vars(), not dataclasses.asdict(): same output, 6x faster (asdict deep-copies), and
        # this runs on the load engine's event loop for every request.
        return _DUMPS(vars(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RequestRecord:
        names = _FIELD_NAMES.get(cls)
        if names is None:
            names = _FIELD_NAMES[cls] = frozenset(f.name for f in dataclasses.fields(cls))
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def from_json(cls, line: bytes) -> RequestRecord:
        """A record from one JSON line (``to_json``'s output)."""
        return cls.from_dict(_LOADS(line))


# Field names per record class, looked up once (from_dict runs per record read back).
_FIELD_NAMES: dict[type, frozenset[str]] = {}


class RecordWriter:
    """Appends records to a JSON-lines file, one line per record, flushed at once.

    Appending (never rewriting) means a crash loses nothing already finished, and merging the
    files of several processes is a concatenation. Safe to call from several threads.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[bytes] | None = None
        self._lock = threading.Lock()
        self.count = 0
        # The file's size after the last write: where the next record's line starts.
        self.size = 0

    def write(self, record: RequestRecord) -> int:
        """Append and flush one record; returns the byte offset its line starts at."""
        line = record.to_json() + b"\n"
        with self._lock:
            if self._file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = open(self.path, "ab")  # noqa: SIM115
                self.size = os.fstat(self._file.fileno()).st_size
                self._opened()
            start = self.size
            self._file.write(line)
            self._file.flush()
            self.size = start + len(line)
            self.count += 1
            self._added(record)
            return start

    def _opened(self) -> None:
        """Called under the lock when the file is (re)opened for appending."""

    def _added(self, record: RequestRecord) -> None:
        """Called under the lock after each record is written and flushed (``size`` is the
        file's new end): subclasses' bookkeeping."""

    def write_many(self, records: Iterable[RequestRecord]) -> None:
        for record in records:
            self.write(record)

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.flush()
                os.fsync(self._file.fileno())
                self._file.close()
                self._file = None


def read_records(paths: Iterable[Path]) -> Iterator[RequestRecord]:
    """Records from one or more JSON-lines files; a torn last line (crash) is skipped."""
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                if not line.endswith("\n"):
                    break
                yield RequestRecord.from_dict(json.loads(line))
