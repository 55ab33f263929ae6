"""Unit tests of pytest_fmbench.load.records and load.summary."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from pytest_fmbench.load import records as records_module
from pytest_fmbench.load.records import (
    ERROR_CLASSES,
    RecordWriter,
    RequestRecord,
    read_records,
)
from pytest_fmbench.load.summary import case_summary, format_summary

T0 = 1_700_000_000_000_000_000  # a wall-clock-like origin, in ns
S = 1_000_000_000


def rec(request_id: int = 0, *, sent: float = 0.0, last: float = 1.0,
        first: float | None = None, **fields: Any) -> RequestRecord:
    """A record with times given in seconds after T0."""
    base: dict[str, Any] = {
        "run_id": "run-1", "experiment": "exp", "payload_file": "p.jsonl", "concurrency": 2,
        "case_id": "exp-p-c2", "request_id": request_id, "scheduled_ns": T0 + int(sent * S),
        "sent_ns": T0 + int(sent * S), "last_byte_ns": T0 + int(last * S),
        "first_token_ns": None if first is None else T0 + int(first * S),
    }
    base.update(fields)
    return RequestRecord(**base)


# --- the record ---------------------------------------------------------------------------

def test_round_trip_every_field() -> None:
    record = rec(7, sent=1.0, last=3.5, first=1.25, first_reasoning_ns=T0 + S,
                 prompt_tokens=420, completion_tokens=32, token_source="server",
                 error="", error_detail="", status=200, wave=3, retries=1, worker="gw1",
                 itl_us=[1000, 1200, 900])
    line = record.to_json()
    assert b"\n" not in line
    back = RequestRecord.from_dict(json.loads(line))
    assert back == record
    assert back.itl_us == [1000, 1200, 900]


def test_from_dict_ignores_unknown_fields() -> None:
    data = json.loads(rec().to_json())
    data["added_in_a_later_version"] = 1
    assert RequestRecord.from_dict(data) == rec()


def test_derived_latency_and_ttft() -> None:
    record = rec(sent=2.0, last=3.5, first=2.25)
    assert record.ok
    assert record.latency_s == pytest.approx(1.5)
    assert record.ttft_s == pytest.approx(0.25)
    assert rec(first=None).ttft_s is None
    failed = rec(error="timeout")
    assert not failed.ok
    assert "timeout" in ERROR_CLASSES


# --- the writer and reader ----------------------------------------------------------------

def test_writer_appends_and_reader_reads(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "records.jsonl"
    writer = RecordWriter(path)
    writer.write(rec(0))
    writer.write_many([rec(1), rec(2)])
    # Flushed at once: readable before close.
    assert [r.request_id for r in read_records([path])] == [0, 1, 2]
    writer.close()
    writer.close()  # idempotent
    assert writer.count == 3

    again = RecordWriter(path)  # appends, never truncates
    again.write(rec(3))
    again.close()
    assert [r.request_id for r in read_records([path])] == [0, 1, 2, 3]


def test_serialization_without_orjson_is_the_same_json(monkeypatch: pytest.MonkeyPatch) -> None:
    record = rec(1, itl_us=[1, 2], error_detail="caf\u00e9 \"quoted\"")
    with_default = json.loads(record.to_json())
    monkeypatch.setitem(sys.modules, "orjson", None)
    fallback = records_module._json_dumps()
    assert json.loads(fallback(vars(record))) == with_default == json.loads(json.dumps(vars(record)))


def test_two_writers_appending_to_one_file_from_threads(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    per_thread = 300
    writers = [RecordWriter(path), RecordWriter(path)]
    barrier = threading.Barrier(4)

    def work(writer: RecordWriter, worker: str, start: int) -> None:
        barrier.wait()
        for i in range(start, per_thread, 2):
            writer.write(rec(i, worker=worker, error_detail="x" * (i % 50)))

    threads = [
        threading.Thread(target=work, args=(writers[w], f"w{w}", start))
        for w in range(2) for start in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for writer in writers:
        writer.close()

    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2 * per_thread
    for line in lines:
        json.loads(line)  # no interleaved or torn lines
    records = list(read_records([path]))
    seen = sorted((r.worker, r.request_id) for r in records)
    assert seen == sorted((f"w{w}", i) for w in range(2) for i in range(per_thread))
    assert [w.count for w in writers] == [per_thread, per_thread]


def test_torn_last_line_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    writer = RecordWriter(path)
    writer.write_many([rec(0), rec(1)])
    writer.close()
    whole = rec(2).to_json()
    with open(path, "ab") as handle:
        handle.write(whole[: len(whole) // 2])  # a crash mid-write
    assert [r.request_id for r in read_records([path])] == [0, 1]


def test_reader_concatenates_files(tmp_path: Path) -> None:
    paths = [tmp_path / "records-gw0.jsonl", tmp_path / "records-gw1.jsonl"]
    for index, path in enumerate(paths):
        writer = RecordWriter(path)
        writer.write(rec(index, worker=f"gw{index}"))
        writer.close()
    assert [r.worker for r in read_records(paths)] == ["gw0", "gw1"]


# --- the per-case summary -----------------------------------------------------------------

def summary_records() -> list[RequestRecord]:
    return [
        rec(0, sent=0.0, last=1.0, first=0.2),   # latency 1, ttft 0.2
        rec(1, sent=0.0, last=2.0, first=0.4),   # latency 2, ttft 0.4
        rec(2, sent=1.0, last=4.0, first=1.6),   # latency 3, ttft 0.6
        rec(3, sent=1.0, last=5.0, first=1.8),   # latency 4, ttft 0.8
        rec(4, sent=2.0, last=6.0, error="timeout"),
        rec(5, sent=2.5, last=2.6, error="throttled"),
    ]


def test_case_summary_numbers() -> None:
    summary = case_summary(summary_records())
    assert summary["requests"] == 6
    assert summary["errors"] == 2
    assert summary["error_classes"] == {"throttled": 1, "timeout": 1}
    assert list(summary["error_classes"]) == ["throttled", "timeout"]
    # duration = last last_byte (6.0) - first sent (0.0) = 6 s; 4 successes.
    assert summary["tpm"] == pytest.approx(4 / 6 * 60)
    # Successful latencies 1, 2, 3, 4; linear interpolation.
    assert summary["latency_p50"] == pytest.approx(2.5)
    assert summary["latency_p95"] == pytest.approx(3 + 0.85 * (4 - 3))
    # TTFTs 0.2, 0.4, 0.6, 0.8.
    assert summary["ttft_p50"] == pytest.approx(0.5)


def test_case_summary_failed_requests_count_in_duration_only() -> None:
    records = [rec(0, sent=0.0, last=1.0), rec(1, sent=0.0, last=9.0, error="timeout")]
    summary = case_summary(records)
    assert summary["tpm"] == pytest.approx(1 / 9 * 60)
    assert summary["latency_p50"] == pytest.approx(1.0)
    assert summary["ttft_p50"] is None  # no first_token (non-streaming)


def test_case_summary_empty_and_all_failed() -> None:
    empty = case_summary([])
    assert empty == {"requests": 0, "errors": 0, "error_classes": {}, "tpm": None,
                     "latency_p50": None, "latency_p95": None, "ttft_p50": None}
    failed = case_summary([rec(0, error="connection"), rec(1, error="connection")])
    assert failed["errors"] == 2
    assert failed["tpm"] == 0
    assert failed["latency_p50"] is None


def test_format_summary() -> None:
    text = format_summary("exp-p-c2", case_summary(summary_records()))
    assert text == (
        "[fmbench] exp-p-c2: 6 requests, 2 errors (throttled 1, timeout 1), TPM 40.0, "
        "latency p50 2.500 s p95 3.850 s, TTFT p50 0.500 s"
    )


def test_format_summary_without_data() -> None:
    assert format_summary("x-p-c1", case_summary([])) == (
        "[fmbench] x-p-c1: 0 requests, 0 errors, TPM n/a, "
        "latency p50 n/a p95 n/a, TTFT p50 n/a"
    )
