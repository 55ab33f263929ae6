"""The offline random Llama and the ``transformers serve`` process around it."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from pytest_fmbench.endpoints import local_model
from pytest_fmbench.endpoints.local_model import (
    LocalServer,
    ModelSpec,
    ensure_model,
)
from pytest_fmbench.errors import EndpointError

REPO_ROOT = Path(__file__).resolve().parents[1]
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_model(ModelSpec(), tmp_path_factory.mktemp("models"))


def _alive(pid: int) -> bool:
    # A zombie nobody reaped yet still answers kill(pid, 0): read its state instead.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _wait_gone(pid: int, timeout_s: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    return False


def _stream(url: str, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    events = []
    with OPENER.open(req, timeout=60) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        for line in resp:
            if line.startswith(b"data: {"):
                events.append(json.loads(line[len(b"data: "):]))
    return events


# --- ModelSpec


def test_key_is_stable_and_depends_on_every_field() -> None:
    base = ModelSpec()
    assert base.key() == ModelSpec(size="tiny", seed=0, max_position_embeddings=4096).key()
    assert len(base.key()) == 12
    others = {ModelSpec(size="small").key(), ModelSpec(seed=1).key(),
              ModelSpec(max_position_embeddings=2048).key()}
    assert base.key() not in others and len(others) == 3
    assert base.dirname() == f"llama-tiny-{base.key()}"


def test_key_changes_with_format_version(monkeypatch: pytest.MonkeyPatch) -> None:
    before = ModelSpec().key()
    monkeypatch.setattr(local_model, "FORMAT_VERSION", "something-else")
    assert ModelSpec().key() != before


def test_unknown_size_is_a_user_error() -> None:
    with pytest.raises(EndpointError, match="unknown local model size 'huge'"):
        ModelSpec(size="huge")


def test_cache_dir_env_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FMBENCH_CACHE_DIR", str(tmp_path))
    assert local_model.default_cache_dir() == tmp_path / "models"
    monkeypatch.delenv("FMBENCH_CACHE_DIR")
    assert local_model.default_cache_dir().parts[-2:] == ("pytest-fmbench", "models")


# --- ensure_model


def test_model_dir_is_complete(model_dir: Path) -> None:
    names = {p.name for p in model_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "generation_config.json", local_model.MARKER_FILE} <= names
    assert model_dir.name == ModelSpec().dirname()
    config = json.loads((model_dir / "config.json").read_text())
    assert config["model_type"] == "llama" and config["vocab_size"] == 8000
    assert json.loads((model_dir / "generation_config.json").read_text())["eos_token_id"] == 2
    assert not [p for p in model_dir.parent.iterdir() if ".tmp-" in p.name]


def test_second_call_reuses_the_build(model_dir: Path) -> None:
    mtime = (model_dir / "model.safetensors").stat().st_mtime_ns
    start = time.perf_counter()
    assert ensure_model(ModelSpec(), model_dir.parent) == model_dir
    assert time.perf_counter() - start < 0.5
    assert (model_dir / "model.safetensors").stat().st_mtime_ns == mtime


def test_parameter_count(model_dir: Path) -> None:
    from safetensors import safe_open

    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
        total = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118 - safe_open is not iterable
    assert 8_500_000 < total < 9_200_000


def test_builds_are_deterministic_and_race_safe(model_dir: Path, tmp_path: Path) -> None:
    # Three threads race on an empty cache: one build wins, all get the same directory.
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(ensure_model(ModelSpec(), tmp_path)))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1 and len(results) == 3
    other = results[0]
    assert other != model_dir
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (other / name).read_bytes() == (model_dir / name).read_bytes(), name
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_losing_the_rename_race_uses_the_winner(monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    spec = ModelSpec(seed=7)
    target = tmp_path / spec.dirname()
    target.mkdir()
    (target / local_model.MARKER_FILE).write_text("{}")
    (target / "winner").write_text("")
    monkeypatch.setattr(local_model, "_build_into",
                        lambda s, out: (out / "config.json").write_text("{}"))
    local_model._build_and_publish(spec, tmp_path, target)
    assert (target / "winner").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]


def test_an_unfinished_directory_is_rebuilt(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    spec = ModelSpec(seed=8)
    (tmp_path / spec.dirname()).mkdir()  # e.g. left by a copy that was interrupted
    calls = []

    def fake_build(s: ModelSpec, out: Path) -> None:
        calls.append(s)
        (out / local_model.MARKER_FILE).write_text("{}")

    monkeypatch.setattr(local_model, "_build_into", fake_build)
    path = ensure_model(spec, tmp_path)
    assert calls == [spec] and (path / local_model.MARKER_FILE).exists()


def test_tokenizer_round_trip(model_dir: Path) -> None:
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    text = "The quick brown fox jumps over the lazy dog. Ünïcödé ✓ 3.14"
    hf = AutoTokenizer.from_pretrained(model_dir)
    raw = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    ids = hf(text)["input_ids"]
    assert ids[0] == hf.bos_token_id == 1 and hf.eos_token_id == 2
    assert raw.encode(text).ids == ids
    assert hf.decode(ids, skip_special_tokens=True) == text
    assert raw.decode(ids) == text
    assert len(hf) == 8000
    chat = hf.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                  add_generation_prompt=True)
    assert chat == "<s><|user|>\nhi</s>\n<|assistant|>\n"


# --- LocalServer


def test_command_line() -> None:
    server = LocalServer(Path("/m"), continuous_batching=True, extra_args=["--log-level", "info"])
    cmd = server.command(1234)
    assert cmd[:4] == [sys.executable, "-m", "transformers.cli.transformers", "serve"]
    assert cmd[4:11] == ["/m", "--device", "cpu", "--host", "127.0.0.1", "--port", "1234"]
    assert "--continuous-batching" in cmd and cmd[-2:] == ["--log-level", "info"]
    assert cmd[cmd.index("--cb-num-blocks") + 1] == "64"
    sized = LocalServer(Path("/m"), continuous_batching=True,
                        extra_args=["--cb-max-memory-percent=0.1"]).command(1)
    assert "--cb-num-blocks" not in sized
    assert "--continuous-batching" not in LocalServer(Path("/m")).command(1)


def test_command_line_on_a_gpu_leaves_the_cache_sizing_to_transformers() -> None:
    cmd = LocalServer(Path("/m"), continuous_batching=True, device="cuda").command(1)
    assert cmd[cmd.index("--device") + 1] == "cuda"
    assert "--continuous-batching" in cmd and "--cb-num-blocks" not in cmd


def test_serve_stream_and_stop(model_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("fastapi")
    log = tmp_path / "serve.log"
    server = LocalServer(model_dir, log_path=log)
    assert server.pid is None and server.url is None and not server.running
    with server:
        url = server.url
        assert url is not None and url.startswith("http://127.0.0.1:")
        assert server.running and server.pid is not None
        pid = server.pid
        assert server.start() == url  # already running: no second process
        with OPENER.open(url + "/health", timeout=5) as resp:
            assert resp.status == 200

        events = _stream(url, "/v1/completions", {
            "model": server.model_id, "prompt": "Once upon a time", "max_tokens": 8,
            "stream": True, "stream_options": {"include_usage": True}})
        assert len(events) == 9 and all(e["choices"][0]["text"] for e in events[:-1])
        assert events[-1]["choices"][0]["finish_reason"] == "length"
        assert events[-1]["usage"]["completion_tokens"] == 8

        chat = _stream(url, "/v1/chat/completions", {
            "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4, "stream": True})
        assert chat[0]["choices"][0]["delta"]["role"] == "assistant"
        assert chat[-1]["usage"]["completion_tokens"] == 4
    assert not server.running and server.pid is None
    assert _wait_gone(pid, 1.0)
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)
    assert "Uvicorn running" in log.read_text()
    server.stop()  # idempotent


def test_stop_before_start_is_a_no_op() -> None:
    server = LocalServer(Path("/nowhere"))
    server.stop()
    server.stop()
    assert not server.running


def test_missing_model_dir_fails_fast(tmp_path: Path) -> None:
    start = time.perf_counter()
    with pytest.raises(EndpointError, match="no model directory") as info:
        LocalServer(tmp_path / "nope").start()
    assert "ensure_model" in str(info.value)
    assert time.perf_counter() - start < 1


def test_broken_model_dir_reports_log_tail(tmp_path: Path) -> None:
    pytest.importorskip("fastapi")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "not-a-model"}')
    server = LocalServer(broken, log_path=tmp_path / "log.txt", startup_timeout_s=60)
    start = time.perf_counter()
    with pytest.raises(EndpointError, match="exited with code") as info:
        server.start()
    assert time.perf_counter() - start < 45
    message = str(info.value)
    assert "last lines" in message and "Error" in message and "fix:" in message
    assert not server.running


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_server_dies_with_a_killed_parent(model_dir: Path) -> None:
    pytest.importorskip("fastapi")
    script = ("import sys, time; from pathlib import Path\n"
              "from pytest_fmbench.endpoints.local_model import LocalServer\n"
              "s = LocalServer(Path(sys.argv[1])); s.start(); print(s.pid, flush=True)\n"
              "time.sleep(120)\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    parent = subprocess.Popen([sys.executable, "-c", script, str(model_dir)], env=env,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        server_pid = int(parent.stdout.readline())
        assert _alive(server_pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        assert _wait_gone(server_pid), "server outlived its SIGKILLed parent"
    finally:
        parent.kill()
        parent.wait()


def test_a_hub_id_is_served_by_name_and_without_the_offline_flags() -> None:
    from pytest_fmbench.endpoints.local_model import _server_env

    server = LocalServer(Path("org/model"), hub_id="org/model")
    assert server.model_id == "org/model"
    assert server.command(1234)[4] == "org/model"
    server._check_model_dir()  # no local config.json needed
    assert "HF_HUB_OFFLINE" not in _server_env(offline=False) or os.environ.get("HF_HUB_OFFLINE")
    assert _server_env()["HF_HUB_OFFLINE"] == "1"
