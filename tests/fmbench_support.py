"""FMBench's own files for tests: its wheel's configs (downloaded at test time, cached), and
read dirs / read buckets in FMBench's layout filled with small generated LongBench-style data."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Self

import pytest

from pytest_fmbench.data.synthetic import synthetic_longbench

FMBENCH_VERSION = "2.1.6"
# A stable cache outside the test's tmp dirs: the wheel is ~10 MB and the same every run.
WHEEL_CACHE = Path(os.environ.get("FMBENCH_WHEEL_CACHE",
                                  Path.home() / ".cache" / "pytest-fmbench" / "wheels"))

# Our own text: a plain question-answering template with FMBench's two keys.
TEMPLATE = "Context:\n{context}\n\nQuestion: {input}\nAnswer briefly:"


def fmbench_wheel(version: str = FMBENCH_VERSION) -> Path:
    """FMBench's wheel from PyPI (cached); skips the test only when PyPI is unreachable."""
    WHEEL_CACHE.mkdir(parents=True, exist_ok=True)
    found = sorted(WHEEL_CACHE.glob(f"fmbench-{version}-*.whl"))
    if found:
        return found[0]
    # Into a private folder first: parallel workers must never read a half-written wheel.
    staging = Path(tempfile.mkdtemp(dir=WHEEL_CACHE, prefix=".download-"))
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               f"fmbench=={version}", "--python-version", "3.12", "-d", str(staging),
               "--quiet", "--disable-pip-version-check"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
        downloaded = sorted(staging.glob(f"fmbench-{version}-*.whl"))
        if done.returncode != 0 or not downloaded:
            pytest.skip(f"cannot download fmbench=={version} from PyPI: "
                        f"{(done.stderr or done.stdout).strip().splitlines()[-1:]}")
        target = WHEEL_CACHE / downloaded[0].name
        os.replace(downloaded[0], target)
        return target
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def fmbench_config_text(relative: str, version: str = FMBENCH_VERSION) -> str:
    """One config file of FMBench's wheel, e.g. ``bedrock/config-bedrock.yml``, verbatim."""
    with zipfile.ZipFile(fmbench_wheel(version)) as wheel:
        return wheel.read(f"fmbench/configs/{relative}").decode("utf-8")


def read_layout_files(section: dict[str, Any], *, records: int = 24, template: str = TEMPLATE,
                      keys: list[str] | tuple[str, ...] = ("input", "context")) -> dict[str, bytes]:
    """Object keys → contents of a read bucket / read dir for a config's ``s3_read_data``:
    generated LongBench-style records (with every prompt-template key) and a template.

    Hugging Face sources are stored the way FMBench's data step stores them in the bucket,
    ``<source_data_prefix>/hf:<id>.jsonl`` (``write_read_dir`` drops the ``hf:``)."""
    files: dict[str, bytes] = {}
    prefix = section.get("source_data_prefix") or "source_data"
    for index, name in enumerate(section.get("source_data_files") or []):
        # Keys LongBench lacks (OpenOrca's system_prompt) get long text too, so every
        # token-length filter of the config finds prompts.
        rows = [{key: f"You are a helpful assistant. {row['context']}" for key in keys} | row
                for row in synthetic_longbench(records, seed=index)]
        key = f"{prefix}/{name}" + (".jsonl" if name.startswith("hf:") else "")
        files[key] = "".join(json.dumps(r) + "\n" for r in rows).encode()
    if section.get("prompt_template_file"):
        directory = section.get("prompt_template_dir") or "prompt_template"
        if tuple(keys) != ("input", "context"):
            template = "\n\n".join(f"{key}: {{{key}}}" for key in keys) + "\nAnswer briefly:"
        files[f"{directory}/{section['prompt_template_file']}"] = template.encode()
    return files


def write_read_dir(root: Path, files: dict[str, bytes]) -> Path:
    """The files in FMBench's local read layout (which drops the "hf:" of stored datasets)."""
    for key, body in files.items():
        path = root / key.replace("/hf:", "/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
    return root


def fill_bucket(s3: Any, bucket: str, files: dict[str, bytes]) -> None:
    s3.create_bucket(Bucket=bucket)
    for key, body in files.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)


def empty_s3(client: Any) -> None:
    """Remove every bucket moto holds (tests share one moto server per module)."""
    for bucket in client.list_buckets().get("Buckets", []):
        for item in client.list_objects_v2(Bucket=bucket["Name"]).get("Contents", []):
            client.delete_object(Bucket=bucket["Name"], Key=item["Key"])
        client.delete_bucket(Bucket=bucket["Name"])


def s3_environment(moto_url: str) -> dict[str, str]:
    return {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL_S3": moto_url,
            "AWS_ENDPOINT_URL_STS": moto_url}


class RestServer:
    """A loopback HTTP server answering like the servers FMBench's REST predictors call:
    ``POST`` → ``{"completions": [{"text"}], "usage"}``; ``GET`` → plain text echoing the
    prompt first (as Ray Serve demos do). ``status`` forces an error reply; every request is
    kept in ``requests`` as (method, path, headers, body)."""

    def __init__(self, answer: str = "a short answer of six words") -> None:
        import http.server
        import threading

        self.answer = answer
        self.status = 200
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self, body: bytes, kind: str) -> None:
                self.send_response(owner.status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                owner.requests.append(("POST", self.path, dict(self.headers), body))
                prompt = json.loads(body).get("prompt", "")
                reply = {"completions": [{"text": owner.answer}],
                         "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": 6}}
                self._reply(json.dumps(reply).encode(), "application/json")

            def do_GET(self) -> None:
                owner.requests.append(("GET", self.path, dict(self.headers), b""))
                from urllib.parse import parse_qs, unquote, urlparse

                parsed = urlparse(self.path)
                prompt = (parse_qs(parsed.query).get("sentence") or [unquote(parsed.path.rsplit("/", 1)[-1])])[-1]
                self._reply(json.dumps([prompt + " " + owner.answer]).encode(), "application/json")

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
