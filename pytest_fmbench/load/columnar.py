"""A columnar copy of the records, for reading a million of them in well under a second.

The JSON-lines file stays the record of truth: every record is appended and flushed as it
completes, so a crash loses nothing finished. ``ColumnarRecordWriter`` also appends, every
1,024 records and at each checkpoint (the end of a case, and close), the lines written since
its last batch as one Arrow record batch to a side file next to the JSON lines (parsed from
those lines on a background thread). Each batch carries the byte range of the JSON-lines file it copies, so a reader takes the batches for the
ranges they cover and parses JSON only for what no batch covers (a crash mid-case, an old run
without side files). Merging stays a concatenation.

Side file: ``<records file name>.<writer id>.arrows`` (an Arrow IPC stream, batches appended
and flushed one by one); one per writer, so several writers never share one.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import secrets
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.json as pa_json

from pytest_fmbench.load.records import RecordWriter, RequestRecord

SIDE_SUFFIX = ".arrows"
# Records per side-file batch (parsed off the event loop; see ColumnarRecordWriter).
BATCH_RECORDS = 1024
_START, _END = b"fmbench.jsonl_start", b"fmbench.jsonl_end"

RECORD_SCHEMA = pa.schema([
    ("run_id", pa.string()),
    ("experiment", pa.string()),
    ("payload_file", pa.string()),
    ("concurrency", pa.int64()),
    ("case_id", pa.string()),
    ("request_id", pa.int64()),
    ("scheduled_ns", pa.int64()),
    ("sent_ns", pa.int64()),
    ("last_byte_ns", pa.int64()),
    ("first_token_ns", pa.int64()),
    ("first_reasoning_ns", pa.int64()),
    ("prompt_tokens", pa.int64()),
    ("completion_tokens", pa.int64()),
    ("token_source", pa.string()),
    ("error", pa.string()),
    ("error_detail", pa.string()),
    ("status", pa.int64()),
    ("wave", pa.int64()),
    ("retries", pa.int64()),
    ("retry_wait_ns", pa.int64()),
    ("worker", pa.string()),
    ("itl_us", pa.list_(pa.int64())),
    ("queued", pa.bool_()),
    ("loop_lag_us", pa.int64()),
    ("saturated", pa.bool_()),
    ("shard", pa.string()),
    ("host", pa.string()),
    ("clock_anchor_ns", pa.int64()),
    ("clock_offset_ns", pa.int64()),
    ("clock_uncertainty_ns", pa.int64()),
    ("session", pa.int64()),
    ("turn", pa.int64()),
    ("target_prompt_tokens", pa.int64()),
    ("target_completion_tokens", pa.int64()),
    ("cached_tokens", pa.int64()),
    ("client_prompt_tokens", pa.int64()),
    ("client_completion_tokens", pa.int64()),
    ("level", pa.string()),
    ("rate", pa.float64()),
    ("repeat", pa.int64()),
])



def records_to_table(records: Sequence[RequestRecord]) -> pa.Table:
    """An Arrow table of records (the columns of ``RECORD_SCHEMA``; a field the schema does
    not know yet stays in the JSON lines only)."""
    # from_pylist over the records' fields: ~10x faster than a Python list per column.
    return pa.Table.from_pylist([vars(r) for r in records], schema=RECORD_SCHEMA)


def unmapped_fields() -> list[str]:
    """``RequestRecord`` fields without an Arrow column (a test keeps this empty)."""
    return [f.name for f in dataclasses.fields(RequestRecord) if f.name not in RECORD_SCHEMA.names]


class ColumnarRecordWriter(RecordWriter):
    """A ``RecordWriter`` that also keeps an Arrow copy, appended in batches.

    Every ``batch_records`` records, and at each ``checkpoint``, the byte range of the JSON
    lines written since the last batch goes to a background thread, which parses it with
    Arrow's JSON reader (native code, without the GIL) and appends it to the side file. The
    load's event loop does no conversion at all (it was ~1.7 µs a record with
    ``Table.from_pylist``), nothing is kept per record, and the copy is of the very bytes
    on disk. ``checkpoint`` returns once every batch asked for is written.
    """

    def __init__(self, path: Path, batch_records: int = BATCH_RECORDS) -> None:
        super().__init__(path)
        self.side_path = path.with_name(f"{path.name}.{os.getpid()}-{secrets.token_hex(3)}{SIDE_SUFFIX}")
        self.batch_records = batch_records
        # Records written since the last batch, and the byte offset where the first starts.
        self._unbatched = 0
        self._pending_start = path.stat().st_size if path.exists() else 0
        self._jobs: queue.Queue[tuple[int, int] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._side: IO[bytes] | None = None
        self._stream: pa.ipc.RecordBatchStreamWriter | None = None

    def _opened(self) -> None:
        if not self._unbatched:
            self._pending_start = self.size

    def _added(self, record: RequestRecord) -> None:
        self._unbatched += 1
        if self._unbatched >= self.batch_records:
            self._submit()

    def _submit(self) -> None:
        """Hand the unbatched range to the batch thread (called under ``_lock``)."""
        if self.size > self._pending_start:
            if self._thread is None:
                self._thread = threading.Thread(target=self._batches, name="fmbench-columnar", daemon=True)
                self._thread.start()
            self._jobs.put((self._pending_start, self.size))
        self._pending_start, self._unbatched = self.size, 0

    def checkpoint(self) -> None:
        """Append the records written since the last batch to the side file; wait for it."""
        with self._lock:
            self._submit()
        if self._thread is not None:
            self._jobs.join()

    def _batches(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                if job is None:
                    return
                self._write_batch(*job)
            finally:
                self._jobs.task_done()

    def _write_batch(self, start: int, end: int) -> None:
        try:
            table = _json_range(self.path, start, end)
            if table is None or not table.num_rows:
                return
            batch = table.combine_chunks().to_batches()[0]
            if self._stream is None:
                self._side = open(self.side_path, "wb")  # noqa: SIM115
                self._stream = pa.ipc.new_stream(self._side, RECORD_SCHEMA)
            self._stream.write_batch(batch, custom_metadata={_START: str(start), _END: str(end)})
            assert self._side is not None
            self._side.flush()
        except Exception:  # noqa: BLE001 - the JSON lines hold every record anyway
            return

    def close(self) -> None:
        self.checkpoint()
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join()
            self._thread = None
        if self._stream is not None:
            try:
                self._stream.close()
            finally:
                assert self._side is not None
                self._side.close()
                self._stream = self._side = None
        super().close()


# -- reading ------------------------------------------------------------------------------

def _side_batches(jsonl: Path) -> list[tuple[int, int, pa.RecordBatch]]:
    found: list[tuple[int, int, pa.RecordBatch]] = []
    for side in sorted(jsonl.parent.glob(f"{jsonl.name}.*{SIDE_SUFFIX}")):
        try:
            reader = pa.ipc.open_stream(pa.memory_map(str(side)))
        except (OSError, pa.ArrowInvalid):
            continue
        if not reader.schema.equals(RECORD_SCHEMA):
            continue
        while True:
            try:
                batch, meta = reader.read_next_batch_with_custom_metadata()
            except StopIteration:
                break
            except (OSError, pa.ArrowInvalid):  # torn by a crash: keep what was whole
                break
            try:
                found.append((int(meta[_START]), int(meta[_END]), batch))
            except (KeyError, TypeError, ValueError):
                break
    found.sort(key=lambda item: (item[0], -item[1]))
    return found


def _parse_jsonl(data: bytes) -> pa.Table | None:
    """Records from JSON-lines bytes; a torn last line (crash) is dropped."""
    end = data.rfind(b"\n")
    if end < 0:
        return None
    data = data[: end + 1]
    if not data.strip():
        return None
    options = pa_json.ParseOptions(explicit_schema=RECORD_SCHEMA, unexpected_field_behavior="ignore")
    read = pa_json.ReadOptions(block_size=max(1 << 20, min(len(data) + 1, 64 << 20)))
    table = pa_json.read_json(pa.BufferReader(data), read_options=read, parse_options=options)
    return table.select(RECORD_SCHEMA.names).cast(RECORD_SCHEMA)


def _json_range(path: Path, start: int, end: int) -> pa.Table | None:
    with open(path, "rb") as handle:
        handle.seek(start)
        return _parse_jsonl(handle.read(end - start))


def _read_one(path: Path, start: int = 0, end: int | None = None) -> list[pa.Table]:
    """One JSON-lines file (or its bytes ``start:end``, on line boundaries): side-file
    batches for the ranges they cover, JSON for the rest."""
    parts: list[pa.Table] = []
    size = path.stat().st_size if end is None else min(end, path.stat().st_size)
    position = start
    batches: list[pa.RecordBatch] = []

    def flush(json_upto: int) -> None:
        if batches:
            parts.append(pa.Table.from_batches(list(batches), schema=RECORD_SCHEMA))
            batches.clear()
        table = _json_range(path, position, json_upto) if json_upto > position else None
        if table is not None:
            parts.append(table)

    for first, last, batch in _side_batches(path):
        if first < position or last > size:
            continue  # a duplicate, out of range, or a copy of lines the file lost
        if first > position:
            flush(first)
        batches.append(batch)
        position = last
    flush(size)
    return parts


def read_records_table(paths: Iterable[Path]) -> pa.Table:
    """All records of the given JSON-lines files, merged (a concatenation), as one table."""
    parts = [part for path in paths for part in _read_one(path)]
    if not parts:
        return RECORD_SCHEMA.empty_table()
    # Chunks stay as read: the side files' batches are memory-mapped, not copied.
    return pa.concat_tables(parts)


def read_range_table(path: Path, start: int, end: int) -> pa.Table:
    """The records whose lines lie in bytes ``start:end`` of one JSON-lines file."""
    parts = _read_one(path, start, end)
    return pa.concat_tables(parts) if parts else RECORD_SCHEMA.empty_table()


def records_files(results_dir: Path) -> list[Path]:
    """The JSON-lines record files of a results directory (one per process)."""
    return sorted(p for p in results_dir.glob("records*.jsonl") if p.is_file())


def table_to_records(table: pa.Table) -> list[RequestRecord]:
    """Back to ``RequestRecord`` objects (small tables only: tests, gate checks)."""
    rows: list[dict[str, Any]] = table.to_pylist()
    return [RequestRecord.from_dict(row) for row in rows]
