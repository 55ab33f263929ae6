"""Long streams (issue 18): a 32k-token answer, single SSE events of 1 MB and more split over
many reads, and thousands of events per second on one connection, parsed by the real client
(``OpenAIClient`` over ``http1``) from a real socket. Correctness only; speed is in
benchmarks/perf."""

from __future__ import annotations

import json

import pytest

from pytest_fmbench.endpoints.base import InferenceResult
from pytest_fmbench.endpoints.openai_http import _digest
from tests.e2e_support import serve_raw


def event(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def content(text: str, finish: str | None = None) -> bytes:
    return event({"choices": [{"index": 0, "text": text, "finish_reason": finish}]})


def tail(completion_tokens: int) -> bytes:
    return (event({"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": completion_tokens}})
            + b"data: [DONE]\n\n")


def test_a_32k_token_answer_is_counted_whole() -> None:
    tokens = 32_768
    events = [content(f" t{i}", "length" if i == tokens - 1 else None) for i in range(tokens)]
    # 64 events a write: 512 reads, many events per read and events cut across reads.
    body = b"".join(events) + tail(tokens)
    parts = [body[i:i + 7_001] for i in range(0, len(body), 7_001)]
    [result] = serve_raw(parts, client={"keep_text": True})
    assert result.error == ""
    assert result.completion_tokens == tokens and result.token_source == "server"
    assert len(result.itl_us) == tokens - 1
    assert result.text == "".join(f" t{i}" for i in range(tokens))


@pytest.mark.parametrize("size", [1 << 20, 3 << 20])
def test_a_single_event_of_megabytes_split_over_many_reads(size: int) -> None:
    # Multi-byte characters too, so reads cut through them.
    text = ("é" * (size // 4)) + ("x" * (size - size // 2))
    body = content(text, "stop") + tail(1)
    parts = [body[i:i + 4_093] for i in range(0, len(body), 4_093)]
    [result] = serve_raw(parts, client={"keep_text": True})
    assert result.error == ""
    assert result.text == text
    assert result.completion_tokens == 1 and result.itl_us == []
    assert result.first_token_ns is not None and result.first_token_ns <= result.last_byte_ns


def test_megabyte_events_between_small_ones_keep_their_order_and_times() -> None:
    big = "y" * (1 << 20)
    body = content("a") + content(big) + content("b", "stop") + tail(3)
    parts = [body[:20], *[body[i:i + 65_536] for i in range(20, len(body), 65_536)]]
    [result] = serve_raw(parts, client={"keep_text": True})
    assert result.error == "" and result.text == "a" + big + "b"
    assert len(result.itl_us) == 2


def test_thousands_of_events_per_second_on_one_connection() -> None:
    tokens = 4_000
    parts = [content(f" {i}", "length" if i == tokens - 1 else None) for i in range(tokens)]
    parts.append(tail(tokens))
    [result] = serve_raw(parts)  # one write per event, no pause: as fast as the loop goes
    assert result.error == ""
    assert result.completion_tokens == tokens and len(result.itl_us) == tokens - 1
    # ITL resolution is one network read: events that arrive in one read get a 0 gap; the
    # gaps add up to the stream's span from first token to last content event.
    assert all(gap >= 0 for gap in result.itl_us)
    assert result.first_token_ns is not None
    assert sum(result.itl_us) <= (result.last_byte_ns - result.first_token_ns) // 1000 + 1


def test_digest_parses_an_event_cut_into_thousands_of_reads() -> None:
    """An event cut into 8,000 reads: joined once when its end arrives (before, each read
    re-joined everything held so far: 7.7 s of CPU for this 2 MB event, measured)."""
    text = "z" * (2 << 20)
    body = content(text, "stop") + tail(1)
    reads = [(1000 + i, body[i:i + 256]) for i in range(0, len(body), 256)]
    result = InferenceResult(sent_ns=0, last_byte_ns=0)
    _digest(reads, result, [b"", b""], True)
    assert result.error == "" and result.text == text
    # The event's time is the read that completed it (its last bytes).
    end = len(content(text, "stop"))
    assert result.first_token_ns == next(t for t, data in reads if (t - 1000) + len(data) >= end)
