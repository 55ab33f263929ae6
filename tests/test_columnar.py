"""Unit tests of pytest_fmbench.load.columnar: the Arrow copy of the records and the fast reader."""

from __future__ import annotations

from pathlib import Path

from pytest_fmbench.load.columnar import (
    SIDE_SUFFIX,
    ColumnarRecordWriter,
    read_records_table,
    records_files,
    table_to_records,
    unmapped_fields,
)
from pytest_fmbench.load.records import read_records
from tests.metrics_vector import vector_records


def ids(table) -> list[tuple[str, int, int]]:
    return sorted(zip(table["experiment"].to_pylist(), table["concurrency"].to_pylist(),
                      table["request_id"].to_pylist()))


def test_every_record_field_has_a_column() -> None:
    assert unmapped_fields() == []


def test_round_trip_through_side_file(tmp_path: Path) -> None:
    records = vector_records()
    writer = ColumnarRecordWriter(tmp_path / "records.jsonl")
    writer.write_many(records[:7])
    writer.checkpoint()
    writer.write_many(records[7:])
    writer.close()
    assert len(list(tmp_path.glob(f"records.jsonl.*{SIDE_SUFFIX}"))) == 1
    table = read_records_table(records_files(tmp_path))
    assert table_to_records(table) == records
    # the JSON lines stay the record of truth and agree
    assert list(read_records([tmp_path / "records.jsonl"])) == records


def test_records_after_the_last_checkpoint_come_from_the_json_lines(tmp_path: Path) -> None:
    records = vector_records()
    writer = ColumnarRecordWriter(tmp_path / "records.jsonl")
    writer.write_many(records[:5])
    writer.checkpoint()
    writer.write_many(records[5:])  # a crash now: no checkpoint, no close
    assert table_to_records(read_records_table([tmp_path / "records.jsonl"])) == records


def test_torn_last_line_is_dropped(tmp_path: Path) -> None:
    records = vector_records()
    path = tmp_path / "records.jsonl"
    writer = ColumnarRecordWriter(path)
    writer.write_many(records)
    writer.close()
    for side in tmp_path.glob(f"*{SIDE_SUFFIX}"):
        side.unlink()
    with open(path, "a", encoding="utf-8") as handle:
        handle.write('{"run_id": "torn", "experi')
    assert table_to_records(read_records_table([path])) == records


def test_torn_side_file_keeps_whole_batches_and_reads_the_rest_as_json(tmp_path: Path) -> None:
    records = vector_records()
    path = tmp_path / "records.jsonl"
    writer = ColumnarRecordWriter(path)
    writer.write_many(records[:4])
    writer.checkpoint()
    writer.write_many(records[4:])
    writer.close()
    (side,) = tmp_path.glob(f"*{SIDE_SUFFIX}")
    data = side.read_bytes()
    side.write_bytes(data[: len(data) - 200])  # the second batch is torn
    assert table_to_records(read_records_table([path])) == records


def test_several_writers_on_one_file_and_several_files_merge(tmp_path: Path) -> None:
    records = vector_records()
    first = ColumnarRecordWriter(tmp_path / "records.jsonl")
    first.write_many(records[:3])
    first.close()
    second = ColumnarRecordWriter(tmp_path / "records.jsonl")  # a rerun into the same folder
    second.write_many(records[3:6])
    second.close()
    other = ColumnarRecordWriter(tmp_path / "records-gw1.jsonl")
    other.write_many(records[6:])
    other.close()
    assert len(list(tmp_path.glob(f"*{SIDE_SUFFIX}"))) == 3
    table = read_records_table(records_files(tmp_path))
    assert table.num_rows == len(records)
    assert ids(table) == sorted((r.experiment, r.concurrency, r.request_id) for r in records)


def test_no_records_gives_an_empty_table(tmp_path: Path) -> None:
    assert read_records_table(records_files(tmp_path)).num_rows == 0
    (tmp_path / "records.jsonl").write_text("")
    assert read_records_table(records_files(tmp_path)).num_rows == 0
