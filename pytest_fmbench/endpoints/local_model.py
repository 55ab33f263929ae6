"""A small random-weight Llama built offline, and a ``transformers serve`` process to serve it.

Seen with transformers 5.23, torch 2.13 CPU, on 2 cores (re-check before relying on a detail):

- CLI: ``sys.executable -m transformers.cli.transformers serve MODEL_DIR --device D --host H
  --port P [--continuous-batching]``. Naming MODEL_DIR pins the server to it and loads the model
  before listening, so ``GET /health`` == 200 means ready (~5-7 s after launch, mostly imports).
- A request's ``model`` may be omitted or must equal MODEL_DIR exactly as passed (``model_id``);
  anything else is HTTP 400 "Server is pinned". Responses say ``model: "<MODEL_DIR>@main"``.
- Unknown fields (``ignore_eos``, ``min_tokens``) are HTTP 422. ``stream_options`` is ignored.
  ``"generation_config": "{\"min_new_tokens\": N}"`` (a JSON *string*) forces N tokens without
  continuous batching; with it, min_new_tokens is ignored. Our model never picks EOS greedily
  (its logit row is zero), so completions run to ``max_tokens`` anyway.
- ``/v1/completions`` with ``stream: true`` sends ``data: {...}`` SSE events, one token each
  (``choices[0].text``, no finish_reason), then one with empty text, ``finish_reason``
  ("length"/"stop") and ``usage`` {prompt_tokens, completion_tokens, total_tokens}, with or
  without ``stream_options``. No ``data: [DONE]`` line follows.
- ``/v1/chat/completions`` streams ``chat.completion.chunk``: first ``delta.role``, then one
  ``delta.content`` per token, last ``delta: {}`` + ``finish_reason`` + ``usage``.
- Prompt counts include the BOS our tokenizer adds (the chat template adds it once too).
- ``/v1/models`` lists only the hub cache (an empty list here), not the pinned model.
- Without CB, concurrent requests are served one at a time; with CB they are batched, but
  the KV cache must be sized by hand on CPU (see ``CB_CPU_DEFAULTS``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from pytest_fmbench.endpoints import process
from pytest_fmbench.endpoints.process import StopsOrphanedServer, stop_process_group
from pytest_fmbench.errors import EndpointError

__all__ = ["LocalServer", "ModelSpec", "StopsOrphanedServer", "ensure_model", "stop_process_group"]

try:  # fcntl is POSIX-only; the atomic rename alone is still correct without it
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

# Bump whenever the build recipe changes, so old cache directories are never reused.
FORMAT_VERSION = "fmbench-llama-1"
CACHE_ENV = "FMBENCH_CACHE_DIR"
MARKER_FILE = "fmbench-model.json"
INSTALL_FIX = "pip install 'pytest-fmbench[local]'"

PRESETS: dict[str, dict[str, int]] = {
    # ~8.8M parameters: fast enough for CPU tests, big enough that prompt length matters.
    "tiny": {"hidden_size": 256, "num_hidden_layers": 6, "num_attention_heads": 4,
             "intermediate_size": 688, "vocab_size": 8000},
    # ~33.5M parameters.
    "small": {"hidden_size": 512, "num_hidden_layers": 8, "num_attention_heads": 8,
              "intermediate_size": 1376, "vocab_size": 8000},
}

# Loopback only: an http_proxy in the environment must never see these requests.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

_Server = TypeVar("_Server", bound="LocalServer")

PAD, BOS, EOS = "<pad>", "<s>", "</s>"
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Which random model to build; equal specs give byte-identical model directories."""

    size: str = "tiny"
    seed: int = 0
    max_position_embeddings: int = 4096

    def __post_init__(self) -> None:
        if self.size not in PRESETS:
            raise EndpointError(f"unknown local model size '{self.size}'", key="size",
                                fix=f"use one of: {', '.join(sorted(PRESETS))}")

    def architecture(self) -> dict[str, int]:
        return dict(PRESETS[self.size])

    def key(self) -> str:
        """A short stable hash naming the cache directory of this spec."""
        # The preset values are hashed too, so editing a preset can't reuse a stale build.
        payload = {"format": FORMAT_VERSION, "spec": dataclasses.asdict(self),
                   "arch": self.architecture()}
        blob = json.dumps(payload, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def dirname(self) -> str:
        return f"llama-{self.size}-{self.key()}"


# ---------------------------------------------------------------------------------------------
# Building the model directory


def default_cache_dir() -> Path:
    """Where model directories live: ``$FMBENCH_CACHE_DIR/models`` or the user cache."""
    root = os.environ.get(CACHE_ENV)
    if root:
        return Path(root).expanduser() / "models"
    import platformdirs

    return Path(platformdirs.user_cache_dir("pytest-fmbench")) / "models"


def ensure_model(spec: ModelSpec, cache_dir: Path | None = None) -> Path:
    """The model directory of ``spec`` under ``cache_dir``, built on first use without download.

    ``cache_dir`` is the folder holding one sub-folder per spec (default: ``default_cache_dir()``).
    Safe when several processes race: each builds in a private temp folder and renames it.
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    target = root / spec.dirname()
    if _is_complete(target):
        return target
    with _file_lock(root / f".{spec.dirname()}.lock"):
        if _is_complete(target):  # another process finished while we waited
            return target
        _discard(target)  # a folder without the marker was not made by a finished build
        _build_and_publish(spec, root, target)
    return target


def _is_complete(model_dir: Path) -> bool:
    return (model_dir / MARKER_FILE).is_file()


def _discard(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    # The lock only saves duplicate work; correctness comes from the atomic rename.
    with open(path, "a+b") as handle:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _build_and_publish(spec: ModelSpec, root: Path, target: Path) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=root))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the published model should be readable
    try:
        _build_into(spec, tmp)
        for item in tmp.iterdir():  # safetensors writes 0600 files; the cache may be shared
            os.chmod(item, 0o644)
        try:
            os.rename(tmp, target)
        except OSError:
            # Only a concurrent builder without the lock (e.g. no fcntl) can get here first.
            if not _is_complete(target):
                raise
    finally:
        _discard(tmp)


def _build_into(spec: ModelSpec, out: Path) -> None:
    _require_local_extra()
    tokenizer = _train_tokenizer(spec.architecture()["vocab_size"])
    _save_tokenizer(tokenizer, out)
    _save_model(spec, tokenizer, out)
    # Written last: its presence is what marks the directory as complete.
    marker = {"format": FORMAT_VERSION, "spec": dataclasses.asdict(spec), "key": spec.key()}
    (out / MARKER_FILE).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")


def _require_local_extra() -> None:
    import importlib.util

    missing = [m for m in ("torch", "transformers", "tokenizers", "safetensors")
               if importlib.util.find_spec(m) is None]
    if missing:
        raise EndpointError(f"local models need {', '.join(missing)}, which is not installed",
                            fix=INSTALL_FIX)


def _training_texts() -> list[str]:
    # English prose that ships with CPython: no download, same text on every machine.
    from pydoc_data.topics import topics

    return [topics[name] for name in sorted(topics)]


def _train_tokenizer(vocab_size: int) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[PAD, BOS, EOS], show_progress=False,
        # The full byte alphabet means any text encodes, so no unknown token is needed.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(_training_texts(), trainer=trainer)
    # Llama-style: every encoded prompt starts with BOS, both here and in the server.
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B",
        special_tokens=[(BOS, tokenizer.token_to_id(BOS))])
    return tokenizer


def _save_tokenizer(tokenizer: Any, out: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOS, pad_token=PAD,
        chat_template=CHAT_TEMPLATE, model_max_length=1 << 30)
    wrapped.save_pretrained(out)
    # save_pretrained may rewrite tokenizer.json; keep the raw trained one so both loaders agree.
    tokenizer.save(str(out / "tokenizer.json"))


def _save_model(spec: ModelSpec, tokenizer: Any, out: Path) -> None:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    ids: dict[str, Any] = {name: tokenizer.token_to_id(tok) for name, tok in
           (("pad_token_id", PAD), ("bos_token_id", BOS), ("eos_token_id", EOS))}
    arch: dict[str, Any] = spec.architecture()
    config = LlamaConfig(max_position_embeddings=spec.max_position_embeddings,
                         tie_word_embeddings=False, **arch, **ids)
    # fork_rng keeps the caller's global RNG state untouched by our seeding.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = LlamaForCausalLM(config)
    with torch.no_grad():
        # A zero logit never wins greedy decoding against 8000 random ones, so the model never
        # ends early (completions run to max_tokens) and never emits an invisible special token.
        model.lm_head.weight[sorted(ids.values())] = 0.0
    model.generation_config = GenerationConfig(**ids, do_sample=False)
    model.save_pretrained(out, safe_serialization=True)


# ---------------------------------------------------------------------------------------------
# Serving it


class LocalServer:
    """One ``transformers serve`` process on loopback, serving ``model_dir``."""

    def __init__(self, model_dir: Path, *, continuous_batching: bool = False,
                 extra_args: Sequence[str] = (), host: str = "127.0.0.1",
                 port: int | None = None, log_path: Path | None = None,
                 startup_timeout_s: float = 120.0, hub_id: str | None = None,
                 device: str = "cpu", cookie: str | None = None) -> None:
        # A hub id (e.g. "HuggingFaceTB/SmolLM2-135M-Instruct") is served where the network
        # allows; the server then downloads it itself, so it runs without the offline flags.
        self.hub_id = hub_id
        self.model_dir = Path(model_dir)
        self.continuous_batching = continuous_batching
        self.device = device
        self.extra_args = tuple(extra_args)
        self.host = host
        self.requested_port = port
        self.log_path = log_path
        self.startup_timeout_s = startup_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._port: int | None = None
        self._finalizer: weakref.finalize | None = None
        # In the server's environment: what the reaper finds it by if this process dies.
        self.cookie = cookie or process.new_cookie()

    # -- properties

    @property
    def model_id(self) -> str:
        """The value the server accepts in a request's ``model`` field."""
        return self.hub_id or str(self.model_dir)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def url(self) -> str | None:
        if self._proc is None or self._port is None:
            return None
        return f"http://{_url_host(self.host)}:{self._port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- lifecycle

    def start(self) -> str:
        """Launch the server and block until ``/health`` answers; returns the base URL."""
        if self.running:
            assert self.url is not None
            return self.url
        self._check_model_dir()
        attempts = 1 if self.requested_port is not None else 3
        for attempt in range(attempts):
            self._launch(self.requested_port or _free_port(self.host))
            failure = self._wait_ready()
            if failure is None:
                assert self.url is not None
                return self.url
            log_tail = self._log_tail()
            self.stop()
            # A picked port can be taken between our probe and the server's bind: pick again.
            if "address already in use" in log_tail.lower() and attempt + 1 < attempts:
                continue
            raise self._startup_error(failure, log_tail)
        raise AssertionError("unreachable")

    def stop(self, timeout_s: float = 10.0) -> None:
        """Terminate the whole process group; safe to call twice or before ``start``."""
        proc, self._proc = self._proc, None
        if proc is not None:
            process.stop_group(proc, timeout_s)
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None

    def warm_up(self, requests: int = 3, max_tokens: int = 8) -> None:
        """Send a few throwaway completions: the first ones are slow (seconds with CB)."""
        if self.url is None:
            raise EndpointError("warm_up() before start()", fix="call start() first")
        body = json.dumps({"prompt": "Hello", "max_tokens": max_tokens}).encode()
        for _ in range(requests):
            req = urllib.request.Request(f"{self.url}/v1/completions", data=body,
                                         headers={"Content-Type": "application/json"})
            with _OPENER.open(req, timeout=self.startup_timeout_s) as resp:
                resp.read()

    def __enter__(self: _Server) -> _Server:  # noqa: PYI019 - typing.Self needs Python 3.11
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- helpers

    def command(self, port: int) -> list[str]:
        cmd = [sys.executable, "-m", "transformers.cli.transformers", "serve", self.model_id,
               "--device", self.device, "--host", self.host, "--port", str(port)]
        if self.continuous_batching:
            cmd.append("--continuous-batching")
            if self.device == "cpu":
                cmd += _cb_cpu_defaults(self.extra_args)
        return cmd + list(self.extra_args)

    def _check_model_dir(self) -> None:
        if self.hub_id is None and not (self.model_dir / "config.json").is_file():
            raise EndpointError(f"no model directory at {self.model_dir} (config.json missing)",
                                file=str(self.model_dir),
                                fix="build one with pytest_fmbench.endpoints.local_model."
                                    "ensure_model(ModelSpec())")

    def _launch(self, port: int) -> None:
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix="fmbench-serve-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._port = port
        # The child gets its own copy of the descriptor, so ours can close right away.
        with open(self.log_path, "ab") as log:
            self._proc = process.spawn(self.command(port), log=log, cookie=self.cookie,
                                       env=_server_env(offline=self.hub_id is None))
        # Last resort for a forgotten stop(): runs at interpreter exit or garbage collection.
        self._finalizer = weakref.finalize(self, process.kill_group, self._proc.pid)

    def _wait_ready(self) -> str | None:
        """None once healthy, else why not."""
        assert self._proc is not None and self.url is not None
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            code = self._proc.poll()
            if code is not None:
                return f"exited with code {code} during startup"
            if _health_ok(self.url):
                return None
            time.sleep(0.2)
        return f"did not answer {self.url}/health within {self.startup_timeout_s:g} s"

    def _log_tail(self, lines: int = 20) -> str:
        try:
            text = Path(str(self.log_path)).read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _startup_error(self, failure: str, log_tail: str) -> EndpointError:
        message = (f"transformers serve for {self.model_dir} {failure}; log {self.log_path}, "
                   f"last lines:\n{log_tail}")
        return EndpointError(message, file=str(self.log_path), fix=_fix_for(log_tail))


# Without limits CB sizes its KV cache from free RAM on CPU: ~9 GB for the tiny model, a 15-30 s
# first request and slow steps (its attention mask grows with the cache). These keep it ~0.75 GB
# (16k tokens of cache) and the first request < 1 s.
CB_CPU_DEFAULTS = {"--cb-num-blocks": "64", "--cb-max-batch-tokens": "1024"}
CB_SIZING_FLAGS = ("--cb-num-blocks", "--cb-max-batch-tokens", "--cb-max-memory-percent")


def _cb_cpu_defaults(extra_args: Sequence[str]) -> list[str]:
    """Our cache sizing flags, unless the caller sized the cache themselves."""
    given = {arg.split("=", 1)[0] for arg in extra_args}
    if given.intersection(CB_SIZING_FLAGS):
        return []
    return [item for pair in CB_CPU_DEFAULTS.items() for item in pair]


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _free_port(host: str) -> int:
    return process.free_port(host)


def _server_env(offline: bool = True) -> dict[str, str]:
    env = dict(os.environ)
    # The CLI otherwise asks PyPI for a newer version on start.
    env.update(HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_UPDATE_CHECK="1")
    if not offline:
        return env
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    # /v1/models fails when the hub cache directory does not exist; give it one that does.
    home = Path(env.get("HF_HOME") or default_cache_dir().parent / "hf-home")
    (home / "hub").mkdir(parents=True, exist_ok=True)
    env["HF_HOME"] = str(home)
    return env


def _health_ok(url: str) -> bool:
    return process.url_ok(f"{url}/health")


def _fix_for(log_tail: str) -> str:
    lowered = log_tail.lower()
    if "no module named" in lowered or "missing dependencies for serving" in lowered:
        return INSTALL_FIX
    if "address already in use" in lowered:
        return "pass another port, or let LocalServer pick one (port=None)"
    return "read the server log above; check that the model directory is complete"
