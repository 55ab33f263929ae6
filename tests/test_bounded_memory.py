"""Bounded memory (issue 18): side-file batches during a case, records read back from disk,
the case summary streamed, and metrics from them identical to metrics from the records."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pyarrow as pa
import pytest

from pytest_fmbench.load.columnar import (
    SIDE_SUFFIX,
    ColumnarRecordWriter,
    read_records_table,
    table_to_records,
)
from pytest_fmbench.load.records import RequestRecord, read_records
from pytest_fmbench.load.stored import StoredRecords
from pytest_fmbench.load.summary import CaseAggregate, LogHistogram, case_summary
from pytest_fmbench.metrics import compute_metrics
from tests.metrics_vector import vector_records


def side_batches(folder: Path) -> int:
    [side] = folder.glob(f"*{SIDE_SUFFIX}")
    return sum(1 for _ in pa.ipc.open_stream(pa.memory_map(str(side))))


def many(n: int, case: str = "c", seed: int = 0) -> list[RequestRecord]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        sent = 1_000_000_000 + i * 1_000_000
        latency = int(rng.lognormvariate(17, 0.5))
        error = "timeout" if i % 17 == 0 else ""
        out.append(RequestRecord("r", "exp", "p.jsonl", 4, case, i, sent - 1000, sent, sent + latency,
                                 first_token_ns=sent + latency // 5, prompt_tokens=rng.randint(1, 500),
                                 completion_tokens=rng.randint(1, 40), error=error,
                                 itl_us=[rng.randint(10, 900) for _ in range(rng.randint(0, 5))]))
    return out


def test_side_file_is_written_in_batches_during_the_case(tmp_path: Path) -> None:
    records = many(25)
    writer = ColumnarRecordWriter(tmp_path / "records.jsonl", batch_records=10)
    writer.write_many(records)  # no checkpoint: two full batches asked for, 5 rows not yet
    writer._jobs.join()  # (written by the batch thread)
    assert side_batches(tmp_path) == 2
    assert writer._unbatched == 5
    # A crash now: the batches cover 20 records, the JSON lines the last 5.
    assert table_to_records(read_records_table([tmp_path / "records.jsonl"])) == records
    writer.close()
    assert side_batches(tmp_path) == 3
    assert table_to_records(read_records_table([tmp_path / "records.jsonl"])) == records


def test_every_record_is_on_disk_as_soon_as_it_is_written(tmp_path: Path) -> None:
    writer = ColumnarRecordWriter(tmp_path / "records.jsonl", batch_records=1000)
    for index, record in enumerate(many(5)):
        offset = writer.write(record)
        assert writer.size == (tmp_path / "records.jsonl").stat().st_size
        assert list(read_records([tmp_path / "records.jsonl"]))[index] == record
        with open(tmp_path / "records.jsonl", "rb") as handle:
            handle.seek(offset)
            assert RequestRecord.from_json(handle.readline()) == record
    writer.close()


def stored(tmp_path: Path, records: list[RequestRecord], batch: int = 7,
           before: list[RequestRecord] = ()) -> StoredRecords:  # type: ignore[assignment]
    writer = ColumnarRecordWriter(tmp_path / "records.jsonl", batch_records=batch)
    writer.write_many(before)
    view = StoredRecords(writer.path, records[0].case_id if records else "c")
    for record in records:
        view.add(writer.write(record), writer.size)
    writer.checkpoint()
    writer.close()
    return view


def test_stored_records_behave_like_the_list(tmp_path: Path) -> None:
    records = many(40)
    view = stored(tmp_path, records, before=many(3, case="earlier"))
    assert len(view) == 40
    assert list(view) == records
    assert view[0] == records[0] and view[-1] == records[-1] and view[13] == records[13]
    assert view[5:9] == records[5:9]
    assert view[::-7] == records[::-7]
    with pytest.raises(IndexError):
        view[40]
    assert sum(1 for r in view if r.ok) == sum(1 for r in records if r.ok)
    assert table_to_records(view.table()) == records


def test_stored_records_of_an_empty_case(tmp_path: Path) -> None:
    view = StoredRecords(tmp_path / "records.jsonl", "c")
    assert len(view) == 0 and list(view) == [] and view[0:3] == []
    assert view.table().num_rows == 0


def test_metrics_from_stored_records_equal_metrics_from_the_records(tmp_path: Path) -> None:
    records = vector_records()
    view = stored(tmp_path, records, batch=4)
    from_disk = compute_metrics(view)
    from_memory = compute_metrics(records)
    assert from_disk.equals(from_memory)


def test_stored_records_keep_only_their_case_when_lines_interleave(tmp_path: Path) -> None:
    mine, other = many(6, case="mine"), many(4, case="other", seed=1)
    writer = ColumnarRecordWriter(tmp_path / "records.jsonl", batch_records=3)
    view = StoredRecords(writer.path, "mine")
    for index, record in enumerate(mine):
        view.add(writer.write(record), writer.size)
        if index < len(other):
            writer.write(other[index])
    writer.close()
    assert list(view) == mine
    assert table_to_records(view.table()) == mine


def test_streamed_summary_counts_exactly_and_percentiles_within_one_percent() -> None:
    records = many(5000)
    aggregate = CaseAggregate()
    for record in records:
        aggregate.add(record)
    streamed, exact = aggregate.summary(), case_summary(records)
    for key in ("requests", "errors", "error_classes"):
        assert streamed[key] == exact[key]
    assert streamed["tpm"] == pytest.approx(exact["tpm"], rel=1e-12)
    for key in ("latency_p50", "latency_p95", "ttft_p50"):
        assert streamed[key] == pytest.approx(exact[key], rel=0.011)


def test_streamed_summary_of_no_and_only_failed_records() -> None:
    assert CaseAggregate().summary() == case_summary([])
    failed = CaseAggregate()
    for record in many(3):
        record.error = "connection"
        failed.add(record)
    assert failed.summary()["latency_p50"] is None and failed.summary()["errors"] == 3


def test_log_histogram_error_bound_and_merge() -> None:
    rng = random.Random(3)
    values = [rng.expovariate(1 / 0.2) for _ in range(20_000)] + [0.0] * 50
    whole, left, right = LogHistogram(), LogHistogram(), LogHistogram()
    for index, value in enumerate(values):
        whole.add(value)
        (left if index % 2 else right).add(value)
    left.merge(right)
    ordered = sorted(values)
    for q in (0.001, 0.1, 0.5, 0.9, 0.99, 0.999, 1.0):
        exact = ordered[round(q * (len(ordered) - 1))]
        assert whole.quantile(q) == left.quantile(q)
        assert math.isclose(whole.quantile(q) or 0.0, exact, rel_tol=0.01, abs_tol=1e-12)
    assert len(whole.buckets) < 1500
    assert LogHistogram().quantile(0.5) is None
    with pytest.raises(ValueError, match="relative errors"):
        whole.merge(LogHistogram(alpha=0.02))


def test_the_side_copy_is_parsed_off_the_writing_thread(tmp_path: Path) -> None:
    """Writing a record keeps nothing of it (a count); the batch thread parses the lines."""
    records = many(30)
    writer = ColumnarRecordWriter(tmp_path / "records.jsonl", batch_records=8)
    writer.write_many(records)
    assert writer._unbatched == 30 % 8
    assert writer._thread is not None and writer._thread.name == "fmbench-columnar"
    writer.checkpoint()  # waits for every batch asked for
    assert side_batches(tmp_path) == 4
    thread = writer._thread
    writer.close()
    assert not thread.is_alive()
    assert table_to_records(read_records_table([tmp_path / "records.jsonl"])) == records


def test_per_request_csv_written_in_slices_equals_the_whole(tmp_path: Path, monkeypatch) -> None:
    from pytest_fmbench.load.columnar import records_to_table
    from pytest_fmbench.report import exports

    table = records_to_table(vector_records())
    whole = exports.write_per_request(tmp_path / "whole.csv", table, {})
    monkeypatch.setattr(exports, "PER_REQUEST_SLICE", 3)
    sliced = exports.write_per_request(tmp_path / "sliced.csv", table, {})
    assert table.num_rows > 3
    assert sliced.read_bytes() == whole.read_bytes()
