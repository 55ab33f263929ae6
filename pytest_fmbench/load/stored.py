"""One case's records read back from the records file, instead of kept in memory.

A run of any length holds, per case, one 8-byte offset per record (a 10-minute case at
1,000 requests/s: under 5 MB) instead of every record (1-9 KB each). ``StoredRecords`` is a
``Sequence[RequestRecord]``: indexing reads one line, iterating streams the lines in order,
and ``table()`` gives the Arrow table (the side file's batches where they cover the case,
JSON for the rest) for metrics. The records file is append-only and flushed per record, so
whatever was written is readable at once.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import overload

import pyarrow as pa
import pyarrow.compute as pc

from pytest_fmbench.load.columnar import RECORD_SCHEMA, read_range_table
from pytest_fmbench.load.records import RecordWriter, RequestRecord
from pytest_fmbench.load.summary import CaseAggregate


class StoredRecords(Sequence[RequestRecord]):
    """The records of one case, in the order they completed, read from ``path`` on demand."""

    def __init__(self, path: Path, case_id: str) -> None:
        self.path = path
        self.case_id = case_id
        self._offsets = array("q")
        self._end = 0

    def add(self, offset: int, end: int) -> None:
        """A record of this case was written at ``offset``; the file now ends at ``end``."""
        self._offsets.append(offset)
        self._end = end

    def __len__(self) -> int:
        return len(self._offsets)

    @overload
    def __getitem__(self, index: int) -> RequestRecord: ...

    @overload
    def __getitem__(self, index: slice) -> list[RequestRecord]: ...

    def __getitem__(self, index: int | slice) -> RequestRecord | list[RequestRecord]:
        if isinstance(index, slice):
            return list(self._read(self._offsets[index]))
        return next(self._read([self._offsets[index]]))

    def __iter__(self) -> Iterator[RequestRecord]:
        return self._read(self._offsets)

    def _read(self, offsets: Sequence[int]) -> Iterator[RequestRecord]:
        if not offsets:
            return
        # Buffered: consecutive lines are mostly in the buffer already, seeks stay cheap.
        with open(self.path, "rb", buffering=1 << 20) as handle:
            for offset in offsets:
                handle.seek(offset)
                yield RequestRecord.from_json(handle.readline())

    def table(self) -> pa.Table:
        """This case's records as one Arrow table (columns of ``RECORD_SCHEMA``)."""
        if not self._offsets:
            return RECORD_SCHEMA.empty_table()
        table = read_range_table(self.path, self._offsets[0], self._end)
        if table.num_rows != len(self._offsets):
            # Another writer's lines in between (not the plugin's layout): keep this case's.
            table = table.filter(pc.equal(table["case_id"], self.case_id))
        return table


class CaseRecorder:
    """The load's ``emit`` for one case: each record appended and flushed to the records file
    as it completes, remembered by offset (``records``) and summed up (``aggregate``)."""

    def __init__(self, writer: RecordWriter, case_id: str) -> None:
        self.writer = writer
        self.records = StoredRecords(writer.path, case_id)
        self.aggregate = CaseAggregate()

    def __call__(self, record: RequestRecord) -> None:
        self.records.add(self.writer.write(record), self.writer.size)
        self.aggregate.add(record)
