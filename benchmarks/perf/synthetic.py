"""Synthetic request records at scale, built column-wise (no Python loop per record)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from pytest_fmbench.cases import case_id
from pytest_fmbench.load.columnar import RECORD_SCHEMA, SIDE_SUFFIX

EXPERIMENTS = ["llama-g5-xlarge", "llama-g5-2xlarge", "llama-p4d", "llama-inf2"]
PAYLOADS = ["payload_en_1-500.jsonl", "payload_en_500-1000.jsonl", "payload_en_1000-2000.jsonl"]
CONCURRENCY = [1, 2, 4, 8, 16]
BASE_NS = 1_750_000_000_000_000_000


def synthetic_table(n: int, *, seed: int = 0, itl_mean: int = 32, error_every: int = 50) -> pa.Table:
    """``n`` records spread over 4 experiments × 3 payload files × 5 concurrency levels."""
    rng = np.random.default_rng(seed)
    combos = [(e, p, c) for e in EXPERIMENTS for p in PAYLOADS for c in CONCURRENCY]
    combo = np.sort(rng.integers(0, len(combos), n))
    experiment = np.array([combos[i][0] for i in range(len(combos))])[combo]
    payload = np.array([combos[i][1] for i in range(len(combos))])[combo]
    concurrency = np.array([combos[i][2] for i in range(len(combos))])[combo]
    sent = BASE_NS + np.arange(n, dtype=np.int64) * 2_000_000
    latency = (rng.gamma(4.0, 0.1 + concurrency * 0.02) * 1e9).astype(np.int64)
    ttft = (latency * rng.uniform(0.05, 0.3, n)).astype(np.int64)
    completion = rng.integers(2, 2 * itl_mean, n)
    prompt = rng.integers(10, 2000, n)
    error = np.where(np.arange(n) % error_every == 0, "timeout", "")
    gaps = rng.integers(5_000, 60_000, int((completion - 1).sum()), dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(completion - 1)]).astype(np.int64)
    itl = pa.ListArray.from_arrays(pa.array(offsets), pa.array(gaps))
    ids = [case_id(*c) for c in combos]
    columns = {
        "run_id": pa.array(np.full(n, "synthetic")),
        "experiment": pa.array(experiment),
        "payload_file": pa.array(payload),
        "concurrency": pa.array(concurrency.astype(np.int64)),
        "case_id": pa.array(np.array(ids)[combo]),
        "request_id": pa.array(np.arange(n, dtype=np.int64)),
        "scheduled_ns": pa.array(sent - rng.integers(1_000, 50_000, n)),
        "sent_ns": pa.array(sent),
        "last_byte_ns": pa.array(sent + latency),
        "first_token_ns": pa.array(sent + ttft),
        "first_reasoning_ns": pa.nulls(n, pa.int64()),
        "prompt_tokens": pa.array(prompt.astype(np.int64)),
        "completion_tokens": pa.array(completion.astype(np.int64)),
        "token_source": pa.array(np.full(n, "server")),
        "error": pa.array(error),
        "error_detail": pa.array(np.full(n, "")),
        "status": pa.array(np.full(n, 200, dtype=np.int64)),
        "wave": pa.array((np.arange(n) // 8).astype(np.int64)),
        "retries": pa.array(np.zeros(n, dtype=np.int64)),
        "worker": pa.array(np.full(n, "")),
        "itl_us": itl,
    }
    for field in RECORD_SCHEMA:  # fields added later: their defaults
        if field.name not in columns:
            columns[field.name] = (pa.array(np.zeros(n, dtype=bool)) if pa.types.is_boolean(field.type)
                                   else pa.nulls(n, field.type))
    return pa.table(columns, schema=RECORD_SCHEMA)


def write_results_dir(folder: Path, table: pa.Table, *, processes: int = 2, batch: int = 50_000) -> None:
    """The on-disk layout the plugin writes: per process a JSON-lines file plus its Arrow copy.

    The JSON lines are written by pandas (fast); the Arrow side file records, per batch, the
    byte range of the JSON lines it copies, exactly as ``ColumnarRecordWriter`` does.
    """
    folder.mkdir(parents=True, exist_ok=True)
    share = -(-table.num_rows // processes)
    for index in range(processes):
        part = table.slice(index * share, share)
        jsonl = folder / f"records-gw{index}.jsonl"
        side = folder / f"{jsonl.name}.synthetic{SIDE_SUFFIX}"
        offset = 0
        with open(jsonl, "wb") as lines, pa.OSFile(str(side), "wb") as sink:
            writer = pa.ipc.new_stream(sink, RECORD_SCHEMA)
            for start in range(0, part.num_rows, batch):
                chunk = part.slice(start, batch)
                frame = chunk.to_pandas()
                frame["itl_us"] = frame["itl_us"].map(list)
                text = frame.to_json(orient="records", lines=True).encode()
                if not text.endswith(b"\n"):
                    text += b"\n"
                lines.write(text)
                writer.write_batch(chunk.combine_chunks().to_batches()[0],
                                   custom_metadata={b"fmbench.jsonl_start": str(offset),
                                                    b"fmbench.jsonl_end": str(offset + len(text))})
                offset += len(text)
            writer.close()
