"""Workloads (issue 13, item 2) end to end: config → requests → load → records → metrics,
against the loopback test server (real HTTP), checking the bodies sent.

The quickstart's tokenizer (``local:tiny``: a byte-level BPE trained on Python's docs) counts
tokens here, and the server counts prompts with the same tokenizer *with* its BOS token,
as a real server does: so an exact N-token prompt is reported as N + 1.
"""

from __future__ import annotations

import json
import random
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from pytest_fmbench.cases import expand_cases
from pytest_fmbench.config.model import Config
from pytest_fmbench.data.synthetic import ExactLengthText, sample_lengths
from pytest_fmbench.data.tokens import TokenCounter, load_token_counter
from pytest_fmbench.errors import ConfigError
from pytest_fmbench.load.records import RequestRecord
from pytest_fmbench.load.workload_summary import length_summary, session_summary, turn_summary
from pytest_fmbench.metrics import compute_metrics
from pytest_fmbench.run import BenchmarkRun
from pytest_fmbench.testing.openai_server import FakeOpenAIServer, ServerBehaviour


@pytest.fixture(scope="module")
def tokenizer_dir() -> Path:
    pytest.importorskip("transformers")
    from pytest_fmbench.endpoints.local import resolve_local_model

    return resolve_local_model("tiny")  # the quickstart's `tokenizer: local:tiny`


@pytest.fixture(scope="module")
def counter(tokenizer_dir: Path) -> TokenCounter:
    return load_token_counter(tokenizer_dir, warn=pytest.fail)


@pytest.fixture(scope="module")
def server_count(tokenizer_dir: Path) -> Any:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    return lambda text: len(tokenizer.encode(text).ids)  # BOS included, as servers count


def config(tmp_path: Path, url: str, workloads: str, *, concurrency: int = 2, load: str = "",
           tokenizer: Path | None = None, api: str = "completions", payload: str = "w.jsonl",
           extra: str = "", max_iters: int = 1000) -> Config:
    text = textwrap.dedent("""\
        datasets:
          tokenizer: {tokenizer}
          workloads:
        {workloads}
        inference_parameters:
          p: {{max_new_tokens: 7}}
        load: {{warmup_requests: 0, min_iters_per_combination: 1, max_iters_per_combination: {max_iters}{load}}}
        experiments:
        - name: e
          backend: openai
          deploy: no
          openai: {{base_url: "{url}", api: {api}}}
          inference_spec: {{parameter_set: p}}
          payload_files: [{payload}]
          concurrency_levels: [{concurrency}]
        {extra}""").format(tokenizer=tokenizer or "null", url=url, api=api, payload=payload,
                           concurrency=concurrency, load=load, extra=extra, max_iters=max_iters,
                           workloads=textwrap.indent(textwrap.dedent(workloads), "  "))
    parsed = Config.model_validate(yaml.safe_load(text))
    parsed.source_path = tmp_path / "cfg.yml"
    return parsed


def run_workload(cfg: Config, tmp_path: Path) -> tuple[BenchmarkRun, list[RequestRecord]]:
    run = BenchmarkRun(cfg, run_id="r", results_dir=tmp_path / "out", log=lambda line: None)
    try:
        case = expand_cases(cfg)[0]
        result = run.run_case(case, run.endpoint_for(case))
    finally:
        run.close()
    return run, sorted(result.records, key=lambda r: r.request_id)


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[FakeOpenAIServer]:
    behaviour = getattr(request, "param", None) or ServerBehaviour()
    with FakeOpenAIServer(behaviour) as running:
        yield running


# -- exact lengths ---------------------------------------------------------------------------

def test_exact_length_text_hits_every_length_with_the_quickstart_tokenizer(
        counter: TokenCounter) -> None:
    builder = ExactLengthText(counter)
    rng = random.Random(3)
    for tokens in [*range(1, 40), 127, 512, 2048]:
        assert counter.count(builder.text(tokens, rng)) == tokens, tokens
    prefix = builder.text(100, rng)
    joined = builder.text(140, rng, prefix=prefix)
    assert joined.startswith(prefix + " ") and counter.count(joined) == 140


def test_sample_lengths_fixed_normal_and_distribution() -> None:
    rng = random.Random(0)
    assert sample_lengths(64, 3, rng) == [64, 64, 64]
    normal = sample_lengths({"mean": 100, "stddev": 30, "min": 80, "max": 120}, 2000, rng)
    assert min(normal) == 80 and max(normal) == 120 and 95 < np.mean(normal) < 105
    drawn = sample_lengths({"values": [10, 1000], "weights": [3, 1]}, 4000, rng)
    assert set(drawn) == {10, 1000} and 0.7 < drawn.count(10) / 4000 < 0.8


def test_synthetic_exact_lengths_against_a_server_that_honours_ignore_eos(
        tmp_path: Path, tokenizer_dir: Path, counter: TokenCounter, server_count: Any) -> None:
    # The "model" would stop after 3 tokens; ignore_eos makes it generate max_tokens.
    behaviour = ServerBehaviour(eos_after=3, count_prompt=server_count)
    with FakeOpenAIServer(behaviour) as server:
        cfg = config(tmp_path, server.url, """\
            - {payload_file: w.jsonl, kind: synthetic, requests: 12, seed: 4,
               input_tokens: {mean: 200, stddev: 60, min: 20}, output_tokens: 16,
               force_output: [ignore_eos]}
            """, tokenizer=tokenizer_dir)
        _, records = run_workload(cfg, tmp_path)
        bodies = server.stats.bodies
    assert len(records) == 12 and all(r.ok for r in records)
    targets = [r.target_prompt_tokens for r in records]
    assert len(set(targets)) > 3  # drawn per request
    for body in bodies:
        assert body["max_tokens"] == 16 and body["ignore_eos"] is True
        assert "min_tokens" not in body
    sent = {counter.count(b["prompt"]) for b in bodies}
    assert sent == {t for t in targets}  # exact by the configured tokenizer
    # The server's count adds the BOS token: within 1 of the target, never more.
    assert all(0 <= r.prompt_tokens - r.target_prompt_tokens <= 1 for r in records)
    assert [r.completion_tokens for r in records] == [16] * 12  # exact output lengths
    metrics = compute_metrics(records).iloc[0]
    assert metrics["completion_length_hit_rate"] == 1.0
    assert metrics["target_completion_tokens_mean"] == 16
    assert metrics["target_prompt_tokens_mean"] == pytest.approx(np.mean(targets))
    # Both counts were kept: ours and the server's differ by exactly the BOS token.
    assert metrics["prompt_token_mismatch_mean"] == pytest.approx(1.0)
    assert all(r.client_prompt_tokens == r.target_prompt_tokens for r in records)
    [row] = length_summary(records)
    assert row["completion_exact"] == row["completion_counted"] == 12
    assert row["prompt_off_max"] == 1


def test_without_forcing_the_model_stops_early_and_the_report_shows_it(
        tmp_path: Path) -> None:
    with FakeOpenAIServer(ServerBehaviour(eos_after=3)) as server:
        cfg = config(tmp_path, server.url, """\
            - {payload_file: w.jsonl, kind: synthetic, requests: 4, input_tokens: 30,
               output_tokens: 16, force_output: []}
            """)
        _, records = run_workload(cfg, tmp_path)
        assert all("ignore_eos" not in b for b in server.stats.bodies)
    assert [r.completion_tokens for r in records] == [3] * 4
    assert compute_metrics(records).iloc[0]["completion_length_hit_rate"] == 0.0
    assert length_summary(records)[0]["completion_actual_mean"] == 3


def test_min_tokens_forcing_and_the_default_for_openai_servers(tmp_path: Path) -> None:
    with FakeOpenAIServer(ServerBehaviour(eos_after=3)) as server:
        cfg = config(tmp_path, server.url, """\
            - {payload_file: w.jsonl, kind: synthetic, requests: 2, input_tokens: 30,
               output_tokens: 9, force_output: [min_tokens]}
            - {payload_file: d.jsonl, kind: synthetic, requests: 2, input_tokens: 30,
               output_tokens: 5}
            """)
        _, records = run_workload(cfg, tmp_path)
        assert [b["min_tokens"] for b in server.stats.bodies] == [9, 9]
        assert [r.completion_tokens for r in records] == [9, 9]
        cfg.experiments[0].payload_files = ["d.jsonl"]
        run = BenchmarkRun(cfg, run_id="r", results_dir=tmp_path / "d", log=lambda line: None)
        [request, _] = run.requests_for(cfg.experiments[0], "d.jsonl")
    # unset force_output: ignore_eos for an OpenAI-compatible server (vLLM, SGLang)
    assert request.parameters == {"max_new_tokens": 5, "ignore_eos": True}


# -- ShareGPT ----------------------------------------------------------------------------------

SHAREGPT = [
    {"id": "a", "conversations": [{"from": "human", "value": "What is a benchmark of latency?"},
                                  {"from": "gpt", "value": "It measures how long requests take "
                                                           "from send to the last byte."}]},
    {"id": "b", "conversations": [{"from": "human", "value": "Only a question, no answer"}]},
    {"id": "c", "conversations": [{"from": "system", "value": "Be brief."},
                                  {"from": "human", "value": "Name a prime."},
                                  {"from": "gpt", "value": "Seven."},
                                  {"from": "human", "value": "Another one?"},
                                  {"from": "gpt", "value": "Eleven."}]},
]


def test_sharegpt_first_question_is_the_prompt_and_the_answer_sets_the_length(
        tmp_path: Path, tokenizer_dir: Path, counter: TokenCounter) -> None:
    (tmp_path / "sharegpt.json").write_text(json.dumps(SHAREGPT))
    with FakeOpenAIServer(ServerBehaviour(eos_after=100)) as server:
        cfg = config(tmp_path, server.url, """\
            - {payload_file: w.jsonl, kind: sharegpt, path: sharegpt.json}
            """, tokenizer=tokenizer_dir, api="chat")
        _, records = run_workload(cfg, tmp_path)
        bodies = sorted(server.stats.bodies, key=lambda b: b["messages"][0]["content"])
    assert [b["messages"] for b in bodies] == [
        [{"role": "user", "content": "Name a prime."}],
        [{"role": "user", "content": "What is a benchmark of latency?"}],
    ]  # the conversation without an answer is skipped, as vLLM's benchmark does
    assert [b["max_tokens"] for b in bodies] == [
        counter.count("Seven."), counter.count(SHAREGPT[0]["conversations"][1]["value"])]
    assert len(records) == 2 and all(r.ok for r in records)
    assert sorted(r.completion_tokens for r in records) == sorted(b["max_tokens"] for b in bodies)


def test_a_broken_sharegpt_file_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text('[{"turns": []}]')
    cfg = config(tmp_path, "http://127.0.0.1:9", """\
        - {payload_file: w.jsonl, kind: sharegpt, path: bad.json}
        """)
    run = BenchmarkRun(cfg, run_id="r", results_dir=tmp_path / "out", log=lambda line: None)
    with pytest.raises(ConfigError) as caught:
        run.endpoint_for(expand_cases(cfg)[0])  # before anything is deployed
    message = caught.value.render()
    assert "bad.json" in message and "datasets.workloads" in message and "conversations" in message


# -- shared prefix and cached tokens -------------------------------------------------------

def test_shared_prefixes_and_cached_tokens_from_usage(tmp_path: Path, tokenizer_dir: Path,
                                                       counter: TokenCounter) -> None:
    # The server caches 4-word blocks and reports prompt_tokens_details.cached_tokens.
    with FakeOpenAIServer(ServerBehaviour(prefix_cache_block=4)) as server:
        cfg = config(tmp_path, server.url, """\
            - {payload_file: w.jsonl, kind: shared_prefix, prefixes: 2, suffixes: 3,
               prefix_tokens: 64, suffix_tokens: 16, output_tokens: 4}
            """, tokenizer=tokenizer_dir, concurrency=1)
        _, records = run_workload(cfg, tmp_path)
        prompts = [b["prompt"] for b in server.stats.bodies]
    assert len(prompts) == 6 and all(counter.count(p) == 80 for p in prompts)
    groups: dict[str, list[int]] = {}
    for index, prompt in enumerate(prompts):
        prefix = next(p for p in (prompts[0], prompts[1])
                      if counter.count(_common(prompt, p)) >= 64)
        groups.setdefault(prefix, []).append(index)
    assert sorted(groups.values()) == [[0, 2, 4], [1, 3, 5]]  # p0 s0, p1 s0, p0 s1, ...
    cached = [r.cached_tokens for r in records]
    assert cached[:2] == [0, 0] and all(c is not None and c > 0 for c in cached[2:])
    metrics = compute_metrics(records).iloc[0]
    expected = sum(cached) / sum(r.prompt_tokens or 0 for r in records)
    assert metrics["cache_hit_rate"] == pytest.approx(expected) and 0 < expected < 1
    assert metrics["cached_tokens_mean"] == pytest.approx(np.mean(cached))


def _common(a: str, b: str) -> str:
    size = 0
    while size < min(len(a), len(b)) and a[size] == b[size]:
        size += 1
    return a[:size]


# -- trace replay ------------------------------------------------------------------------------

def write_trace(path: Path, count: int, gap_ms: float) -> None:
    rng = random.Random(1)
    with path.open("w") as out:
        for index in range(count):
            out.write(json.dumps({"timestamp": round(index * gap_ms, 3),
                                  "input_length": rng.randint(20, 40),
                                  "output_length": rng.randint(1, 4),
                                  "hash_ids": [index % 3, 100 + index]}) + "\n")


def test_trace_replay_sends_1000_requests_in_order_at_their_offsets(
        tmp_path: Path, tokenizer_dir: Path, counter: TokenCounter,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_fmbench.endpoints.openai_http import OpenAIClient

    write_trace(tmp_path / "trace.jsonl", 1000, gap_ms=4.0)
    invoked: list[int | None] = []  # offsets, in the order the client was called
    original = OpenAIClient.invoke

    async def invoke(self: OpenAIClient, request: Any) -> Any:
        invoked.append(request.offset_ns)
        return await original(self, request)

    monkeypatch.setattr(OpenAIClient, "invoke", invoke)
    with FakeOpenAIServer(ServerBehaviour(), keep_bodies=True) as server:
        cfg = config(tmp_path, server.url, """\
            - {payload_file: w.jsonl, kind: trace, path: trace.jsonl, speed: 2.0,
               block_tokens: 8}
            """, tokenizer=tokenizer_dir, concurrency=1000)
        run, records = run_workload(cfg, tmp_path)
        bodies = server.stats.bodies
    requests = run.requests_for(cfg.experiments[0], "w.jsonl")
    assert len(records) == 1000 and all(r.ok for r in records)
    # Offsets: the trace's milliseconds at speed 2.
    assert [q.offset_ns for q in requests[:3]] == [0, 2_000_000, 4_000_000]
    start = records[0].scheduled_ns
    assert all(r.scheduled_ns - start == requests[r.request_id].offset_ns for r in records)
    # In order: the client is called in trace order. (One may still reach the socket after a
    # later one when it waited for a new connection meanwhile: reported, not asserted.)
    assert invoked == sorted(q.offset_ns or 0 for q in requests)
    sent = [r.sent_ns for r in records]  # by request id = trace order
    later_min = np.minimum.accumulate(np.array(sent[::-1]))[::-1]
    overtaken = sum(1 for i in range(999) if later_min[i + 1] < sent[i])
    late_ms = np.array([(r.sent_ns - r.scheduled_ns) / 1e6 for r in records])
    assert late_ms.min() >= 0  # never early
    print(f"\ntrace replay, 1000 requests at 500/s against the in-process test server: "
          f"sent - offset p50 {np.percentile(late_ms, 50):.3f} ms, p99 "
          f"{np.percentile(late_ms, 99):.3f} ms, max {late_ms.max():.2f} ms; "
          f"{overtaken} overtaken by a later request")
    # Lengths and shared blocks: the prompt of entry i starts with block i % 3.
    assert all(counter.count(q.prompt) == q.target_prompt_tokens for q in requests[:50])
    shared = [counter.count(_common(requests[a].prompt, requests[b].prompt))
              for a, b in ((0, 3), (1, 4), (0, 1), (3, 4))]
    assert shared[0] >= 8 and shared[1] >= 8 and shared[2] < 8 and shared[3] < 8
    assert {b["max_tokens"] for b in bodies} <= {1, 2, 3, 4}
    assert all(r.completion_tokens == r.target_completion_tokens for r in records)


def test_a_malformed_trace_line_names_the_line(tmp_path: Path) -> None:
    (tmp_path / "t.jsonl").write_text('{"timestamp": 0, "input_length": 5, "output_length": 1}\n'
                                      '{"timestamp": 1}\n')
    cfg = config(tmp_path, "http://127.0.0.1:9", """\
        - {payload_file: w.jsonl, kind: trace, path: t.jsonl}
        """)
    run = BenchmarkRun(cfg, run_id="r", results_dir=tmp_path / "out", log=lambda line: None)
    with pytest.raises(ConfigError, match="line 2 is not a trace record"):
        run.requests_for(cfg.experiments[0], "w.jsonl")


# -- multi-turn sessions -----------------------------------------------------------------------

def test_sessions_send_the_history_with_the_real_answers(tmp_path: Path) -> None:
    with FakeOpenAIServer(ServerBehaviour(prefix_cache_block=2)) as server:
        cfg = config(tmp_path, server.url, """\
            - {payload_file: w.jsonl, kind: sessions, requests: 3, turns: 3,
               input_tokens: 12, output_tokens: {values: [2, 3]}, think_time_s: 0.01}
            """, api="chat")
        _, records = run_workload(cfg, tmp_path)
        bodies = server.stats.bodies
    assert len(records) == 9 and all(r.ok for r in records)
    assert sorted((r.session, r.turn) for r in records) == [(s, t) for s in range(3) for t in range(3)]
    by_length: dict[int, list[Any]] = {}
    for body in bodies:
        by_length.setdefault(len(body["messages"]), []).append(body)
    assert sorted((k, len(v)) for k, v in by_length.items()) == [(1, 3), (3, 3), (5, 3)]
    for body in by_length[5]:
        roles = [m["role"] for m in body["messages"]]
        assert roles == ["user", "assistant", "user", "assistant", "user"]
        answer = body["messages"][1]["content"]
        # The assistant turn is what the server answered (its tokens " t0 t1 ..."), with the
        # session's own length.
        assert answer == "".join(f" t{i}" for i in range(body["max_tokens"]))
        # and the history is that session's own earlier request
        first = next(b for b in by_length[1] if b["messages"][0] == body["messages"][0])
        assert first["max_tokens"] == body["max_tokens"]
    # Later turns find the history in the server's prefix cache.
    turns = turn_summary(records)
    assert [t["turn"] for t in turns] == [0, 1, 2] and all(t["errors"] == 0 for t in turns)
    assert turns[0]["prompt_tokens_mean"] < turns[1]["prompt_tokens_mean"] < turns[2]["prompt_tokens_mean"]
    assert turns[0]["cached_tokens_mean"] == 0 and turns[2]["cached_tokens_mean"] > 0
    [sessions] = session_summary(records)
    assert (sessions["sessions"], sessions["completed"], sessions["turns_mean"]) == (3, 3, 3.0)
    assert sessions["duration_p50"] >= 0.02  # two think times of 10 ms at least


def test_sessions_from_a_sharegpt_file_take_its_human_turns(tmp_path: Path) -> None:
    (tmp_path / "chats.json").write_text(json.dumps(SHAREGPT))
    with FakeOpenAIServer(ServerBehaviour()) as server:
        cfg = config(tmp_path, server.url, """\
            - {payload_file: w.jsonl, kind: sessions, path: chats.json, output_tokens: 2}
            """, api="chat", concurrency=1)
        _, records = run_workload(cfg, tmp_path)
        users = [[m["content"] for m in b["messages"] if m["role"] == "user"]
                 for b in server.stats.bodies]
    assert users == [["What is a benchmark of latency?"], ["Only a question, no answer"],
                     ["Name a prime."], ["Name a prime.", "Another one?"]]
    assert [(r.session, r.turn) for r in records] == [(0, 0), (1, 0), (2, 0), (2, 1)]


# -- reasoning models and token counts ---------------------------------------------------------

@pytest.mark.parametrize(("style", "api"), [("field", "chat"), ("think", "completions")])
def test_time_to_first_answer_token_after_reasoning(tmp_path: Path, style: str, api: str) -> None:
    behaviour = ServerBehaviour(token_delay_s=0.01, reasoning_tokens=5, reasoning_style=style)
    with FakeOpenAIServer(behaviour) as server:
        cfg = config(tmp_path, server.url, """\
            - {payload_file: w.jsonl, kind: synthetic, requests: 3, input_tokens: 10,
               output_tokens: 8}
            """, api=api, concurrency=1)
        _, records = run_workload(cfg, tmp_path)
    for record in records:
        assert record.first_reasoning_ns is not None and record.first_token_ns is not None
        # five reasoning chunks 10 ms apart come before the answer
        assert record.first_token_ns - record.first_reasoning_ns >= 40_000_000
        assert record.ttft_s is not None and record.ttfat_s is not None
        assert record.ttfat_s - record.ttft_s >= 0.04
    metrics = compute_metrics(records).iloc[0]
    assert metrics["ttfat_p50"] - metrics["ttft_p50"] >= 0.04
    assert metrics["ttfat_count"] == 3


def test_token_count_mismatch_between_server_usage_and_tokenizer(
        tmp_path: Path, tokenizer_dir: Path, counter: TokenCounter) -> None:
    # The server counts words; the tokenizer counts BPE tokens: they disagree, per request.
    with FakeOpenAIServer(ServerBehaviour()) as server:
        cfg = config(tmp_path, server.url, """\
            - {payload_file: w.jsonl, kind: synthetic, requests: 5, input_tokens: 50,
               output_tokens: 4}
            """, tokenizer=tokenizer_dir)
        _, records = run_workload(cfg, tmp_path)
    for record in records:
        assert record.token_source == "server" and record.client_prompt_tokens == 50
        assert record.client_completion_tokens == counter.count(" t0 t1 t2 t3")
    metrics = compute_metrics(records).iloc[0]
    expected = np.mean([(r.prompt_tokens or 0) - 50 for r in records])
    assert metrics["prompt_token_mismatch_mean"] == pytest.approx(expected)
    assert metrics["prompt_token_mismatch_mean"] != 0
    assert metrics["completion_token_mismatch_mean"] == pytest.approx(
        4 - counter.count(" t0 t1 t2 t3"))


# -- config ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("entry", "message"), [
    ("{payload_file: w.jsonl, kind: synthetic, input_tokens: 5}", "needs 'output_tokens'"),
    ("{payload_file: w.jsonl, kind: shared_prefix, prefixes: 2}", "'suffixes'"),
    ("{payload_file: w.jsonl, kind: trace}", "needs 'path'"),
    ("{payload_file: w.jsonl, kind: sessions}", "'turns'"),
    (("{payload_file: w.jsonl, kind: synthetic, input_tokens: {mean: 5, values: [1]}, "
      "output_tokens: 1}"), "either 'mean'"),
    ("{payload_file: w.jsonl, kind: replay}", "kind"),
])
def test_workload_config_errors(tmp_path: Path, entry: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        config(tmp_path, "http://127.0.0.1:9", f"- {entry}\n")


def test_a_workload_and_a_filter_cannot_share_a_payload_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="also produced"):
        config(tmp_path, "http://127.0.0.1:9", """\
            - {payload_file: w.jsonl, kind: trace, path: t.jsonl}
            filters:
            - {payload_file: w.jsonl}
            """)


# -- through the plugin: cases, records, report ------------------------------------------------

def test_workloads_run_as_cases_and_the_report_shows_lengths_and_turns(
        pytester: pytest.Pytester) -> None:
    from tests.e2e_support import BENCHMARK_TEST, INNER_ARGS

    behaviour = ServerBehaviour(eos_after=2, prefix_cache_block=4, reasoning_tokens=3,
                                token_delay_s=0.002)
    with FakeOpenAIServer(behaviour) as server:
        pytester.makepyfile(test_bench=BENCHMARK_TEST)
        pytester.makefile(".yml", cfg=textwrap.dedent(f"""\
            general: {{name: workloads}}
            datasets:
              workloads:
              - {{payload_file: synth.jsonl, kind: synthetic, requests: 4, input_tokens: 40,
                 output_tokens: 6}}
              - {{payload_file: chat.jsonl, kind: sessions, requests: 2, turns: 3,
                 input_tokens: 8, output_tokens: 3}}
            load: {{warmup_requests: 0, min_iters_per_combination: 1, max_iters_per_combination: 4}}
            experiments:
            - name: vllm
              backend: openai
              deploy: no
              price_per_hour: 1.0
              openai: {{base_url: "{server.url}", api: chat}}
              payload_files: [synth.jsonl, chat.jsonl]
              concurrency_levels: [2]
            """))
        result = pytester.runpytest(*INNER_ARGS, "--fmbench-config=cfg.yml",
                                    "--fmbench-results-dir=out", "-v")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*vllm-synth-c2*PASSED*", "*vllm-chat-c2*PASSED*"])
    report = (pytester.path / "out" / "report.md").read_text()
    section = report[report.index("## Workloads"):report.index("## Plots")]
    assert "### Requested vs actual lengths" in section
    # ignore_eos (the default for an OpenAI-compatible server) made every output exact.
    assert "| vllm | synth.jsonl | 2 | 40.0 |" in section and "| 6.0 | 6.0 | 100.00 % |" in section
    assert "### Prefix cache" in section and "### Reasoning: time to first answer token" in section
    sessions = section[section.index("### Multi-turn sessions"):]
    assert "| vllm | chat.jsonl | 2 | 2 | 2 | 3.0 |" in sessions  # 2 sessions, completed, 3 turns
    turns = [line for line in sessions[sessions.index("Per turn"):].splitlines()
             if line.startswith("| vllm | chat.jsonl | 2 | ")]
    assert [line.split(" | ")[3:6] for line in turns] == [["0", "2", "0"], ["1", "2", "0"],
                                                          ["2", "2", "0"]]
    metrics = json.loads((pytester.path / "out" / "results.json").read_text())["metrics"]
    synth = next(m for m in metrics if m["payload_file"] == "synth.jsonl")
    assert synth["completion_length_hit_rate"] == 1.0 and synth["ttfat_p50"] > synth["TTFT_p50"]
    import csv

    with (pytester.path / "out" / "per_inference_request_results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    chat = [r for r in rows if r["payload_file"] == "chat.jsonl"]
    assert sorted(r["turn"] for r in chat) == ["0", "0", "1", "1", "2", "2"]
    assert all(float(r["time_to_first_answer_token"]) > float(r["time_to_first_token"])
               for r in rows)


# -- <think> text and cached tokens in the stream parser ---------------------------------------

def _think_stream(texts: list[str], usage: dict[str, Any] | None = None) -> Any:
    from pytest_fmbench.endpoints.base import InferenceResult
    from pytest_fmbench.endpoints.openai_http import _digest

    reads = []
    for index, text in enumerate(texts):
        finish = "stop" if index == len(texts) - 1 else None
        chunk = {"choices": [{"index": 0, "text": text, "finish_reason": finish}]}
        reads.append((1_000_000 * (index + 1), b"data: " + json.dumps(chunk).encode() + b"\n\n"))
    if usage:
        reads.append((1_000_000 * (len(texts) + 1),
                      b"data: " + json.dumps({"choices": [], "usage": usage}).encode() + b"\n\n"))
    result = InferenceResult(sent_ns=0, last_byte_ns=0)
    _digest(reads, result, [b"", b""], True)
    return result


def test_think_text_split_across_chunks_marks_the_first_answer_token() -> None:
    # "<think>" arrives in two pieces; the answer starts at the 6th chunk (after whitespace).
    result = _think_stream(["<", "think>", " hmm", " ok", "</think>", "\n", "Yes", " indeed"])
    assert result.first_reasoning_ns == 1_000_000
    assert result.first_token_ns == 7_000_000
    plain = _think_stream(["Yes", " <think> is", " quoted"])
    assert plain.first_reasoning_ns is None and plain.first_token_ns == 1_000_000


def test_reasoning_only_has_no_first_answer_token_and_cached_tokens_are_read() -> None:
    usage = {"prompt_tokens": 9, "completion_tokens": 3,
             "prompt_tokens_details": {"cached_tokens": 8}}
    result = _think_stream(["<think>", " hmm", "</think>"], usage)
    assert result.first_reasoning_ns == 1_000_000 and result.first_token_ns is None
    assert (result.cached_tokens, result.token_source) == (8, "server")
    assert _think_stream(["a"], {"prompt_tokens": 1, "completion_tokens": 1,
                                 "prompt_tokens_details": None}).cached_tokens is None


def test_case_timeouts_cover_a_trace_and_sessions(tmp_path: Path) -> None:
    from pytest_fmbench.timeouts import (
        MARGIN_FACTOR,
        SETUP_MARGIN_S,
        case_timeout_s,
        teardown_bound_s,
    )

    # A 2-hour trace at speed 2 runs an hour: longer than the waves bound (105 x 5 s).
    (tmp_path / "t.jsonl").write_text('{"timestamp": 0, "input_length": 5, "output_length": 1}\n'
                                      '{"timestamp": 7200000, "input_length": 5, "output_length": 1}\n')
    cfg = config(tmp_path, "http://127.0.0.1:9", """\
        - {payload_file: w.jsonl, kind: trace, path: t.jsonl, speed: 2}
        """, load=", request_timeout_s: 5", concurrency=4, max_iters=2)
    assert case_timeout_s(cfg, cfg.experiments[0]) == pytest.approx(
        (3600 + 5 * 4 + teardown_bound_s(cfg.experiments[0])) * MARGIN_FACTOR + SETUP_MARGIN_S,
        abs=1)
    sessions = config(tmp_path, "http://127.0.0.1:9", """\
        - {payload_file: w.jsonl, kind: sessions, requests: 8, turns: 300, input_tokens: 5,
           output_tokens: 5, think_time_s: 1}
        """, load=", request_timeout_s: 5", concurrency=4, max_iters=2)
    assert case_timeout_s(sessions, sessions.experiments[0]) == pytest.approx(
        (2 * 300 * 6 + teardown_bound_s(cfg.experiments[0])) * MARGIN_FACTOR + SETUP_MARGIN_S,
        abs=1)
    unknown = config(tmp_path, "http://127.0.0.1:9", """\
        - {payload_file: w.jsonl, kind: sessions, path: chats.json}
        """)
    assert case_timeout_s(unknown, unknown.experiments[0]) is None


def test_sessions_need_an_openai_compatible_backend(tmp_path: Path) -> None:
    cfg = config(tmp_path, "http://127.0.0.1:9", """\
        - {payload_file: w.jsonl, kind: sessions, requests: 1, turns: 2, input_tokens: 5,
           output_tokens: 5}
        """)
    cfg.experiments[0].backend = "bedrock"
    run = BenchmarkRun(cfg, run_id="r", results_dir=tmp_path / "out", log=lambda line: None)
    with pytest.raises(ConfigError, match="only OpenAI-compatible backends"):
        run.requests_for(cfg.experiments[0], "w.jsonl")
