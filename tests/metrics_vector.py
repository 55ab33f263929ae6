"""A hand-computed test vector: records whose metrics, costs and recommendation are worked out
by hand in the comments (METRICS.md definitions), shared by the metrics and report tests."""

from __future__ import annotations

from pytest_fmbench.config.pricing import Price
from pytest_fmbench.load.records import RequestRecord

BASE = 1_700_000_000 * 10**9
P1, P2 = "payload_en_1-500.jsonl", "payload_en_500-1000.jsonl"
DATASET_OF_INTEREST = "en_1-500"

# alpha: instance-priced, 3.0 USD/h × 2 instances = 6.0 USD/h (deployed by the plugin)
# beta: token-priced, 0.001 USD per 1k input tokens, 0.002 per 1k output tokens
# gamma: bring your own endpoint, 3.6 USD/h × 1
PRICES = {
    "alpha": Price("instance", "ml.test.xlarge", "test", hourly=3.0, instance_count=2),
    "beta": Price("token", "vendor.model-v1:0", "test", input_per_1k=0.001, output_per_1k=0.002),
    "gamma": Price("instance", "g5.test", "test", hourly=3.6, instance_count=1),
}


def ns(seconds: float) -> int:
    return BASE + round(seconds * 1e9)


def record(experiment: str, payload: str, concurrency: int, request_id: int, *, sched: float,
           sent: float, last: float, first: float | None = None, prompt: int | None = 100,
           completion: int | None = 11, error: str = "", itl_us: list[int] | None = None,
           loop_lag_us: int = 0) -> RequestRecord:
    return RequestRecord(
        run_id="vector", experiment=experiment, payload_file=payload, concurrency=concurrency,
        case_id=f"{experiment}-{payload[:-6]}-c{concurrency}", request_id=request_id,
        scheduled_ns=ns(sched), sent_ns=ns(sent), last_byte_ns=ns(last),
        first_token_ns=None if first is None else ns(first), prompt_tokens=prompt,
        completion_tokens=completion, token_source="server", error=error, itl_us=itl_us or [],
        loop_lag_us=loop_lag_us, saturated=loop_lag_us > 10_000 or sent - sched > 0.01)


def vector_records() -> list[RequestRecord]:
    return [
        # A: alpha P1 c=2, 4 successes. latency [2, 3, 2, 4]; duration 7.5 s; TPM 32.
        record("alpha", P1, 2, 0, sched=0, sent=0, first=0.5, last=2.0, prompt=100, completion=11,
               itl_us=[100_000, 200_000]),
        record("alpha", P1, 2, 1, sched=0, sent=0, first=1.0, last=3.0, prompt=200, completion=21,
               itl_us=[300_000]),
        record("alpha", P1, 2, 2, sched=3, sent=3, first=3.5, last=5.0, prompt=100, completion=11),
        # (sent 0.5 s after it was due, the loop 12 ms late: the client was saturated)
        record("alpha", P1, 2, 3, sched=3, sent=3.5, first=4.5, last=7.5, prompt=200, completion=1,
               itl_us=[400_000], loop_lag_us=12_000),
        # B: alpha P1 c=4, 3 successes + 1 timeout. latency [1, 1.5, 2]; duration 10 s; TPM 18.
        record("alpha", P1, 4, 0, sched=10, sent=10, first=10.5, last=11.0, prompt=100, completion=6),
        record("alpha", P1, 4, 1, sched=10, sent=10, first=10.5, last=11.5, prompt=100, completion=11),
        record("alpha", P1, 4, 2, sched=10, sent=10, first=10.6, last=12.0, prompt=100, completion=11),
        record("alpha", P1, 4, 3, sched=10, sent=10, last=20.0, prompt=100, completion=None, error="timeout"),
        # C: alpha P1 c=8, zero successes (both http_5xx): TPM 0, price undefined.
        record("alpha", P1, 8, 0, sched=30, sent=30, last=31.0, completion=None, error="http_5xx"),
        record("alpha", P1, 8, 1, sched=30, sent=30, last=32.0, completion=None, error="http_5xx"),
        # F: alpha P1 c=16, 2 successes of 1 s; duration 1 s; TPM 120.
        record("alpha", P1, 16, 0, sched=50, sent=50, first=50.5, last=51.0),
        record("alpha", P1, 16, 1, sched=50, sent=50, first=50.5, last=51.0),
        # D: beta P1 c=1, token-priced: prompt mean 2000, completion mean 200; duration 2 s; TPM 60.
        record("beta", P1, 1, 0, sched=40, sent=40, first=40.2, last=41.0, prompt=1000, completion=100),
        record("beta", P1, 1, 1, sched=41, sent=41, first=41.2, last=42.0, prompt=3000, completion=300),
        # G: gamma P2 c=1, bring your own: one request of 10 s.
        record("gamma", P2, 1, 0, sched=60, sent=60, first=61.0, last=70.0, prompt=300, completion=11),
    ]


# Endpoint events: alpha deployed by the plugin from t=-100 s to teardown end at t=100 s (200 s);
# beta and gamma are bring-your-own (events say nothing was deployed for them).
EVENTS = [
    {"experiment": "alpha", "event": "deploy", "start_ns": ns(-100), "end_ns": ns(-40), "ok": True,
     "deployed_by_us": True},
    {"experiment": "alpha", "event": "teardown", "start_ns": ns(95), "end_ns": ns(100), "ok": True,
     "deployed_by_us": True},
    {"experiment": "gamma", "event": "deploy", "start_ns": ns(55), "end_ns": ns(55), "ok": True,
     "deployed_by_us": False},
]
