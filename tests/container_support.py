"""A server image for the container backend's tests, built here: no registry is reachable.

``podman import`` of a root filesystem that holds only mount points; its entry point is the
project's own OpenAI test server run by this very Python, whose installation (``sys.base_prefix``,
the virtual environment ``sys.prefix``, the repository) and ``/usr`` are bind-mounted read-only
into every container through ``FMBENCH_CONTAINER_RUN_ARGS``, the backend's setting for extra
``run`` options. Paths are discovered at test time: CI's clone and Python live elsewhere.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from pytest_fmbench.endpoints.container_runtime import RUN_ARGS_ENV

REPO = Path(__file__).resolve().parents[1]
# The server inside listens on vLLM's port; `--model ID` is appended by the backend.
CONTAINER_PORT = 8000


def podman() -> str:
    path = shutil.which("podman")
    assert path, "the container tests need podman (.ci/run installs it: apt-get install podman)"
    return path


def _mounted_dirs() -> list[Path]:
    """Host directories the server needs, outermost only."""
    wanted = [Path("/usr"), Path(sys.base_prefix), Path(sys.prefix), REPO]
    for top in ("/lib", "/lib64", "/bin"):
        if Path(top).is_dir() and not Path(top).is_symlink():
            wanted.append(Path(top))
    chosen: list[Path] = []
    for path in sorted({p.resolve() for p in wanted}, key=lambda p: len(p.parts)):
        if not any(path.is_relative_to(outer) for outer in chosen):
            chosen.append(path)
    return chosen


def run_args() -> str:
    """The value for FMBENCH_CONTAINER_RUN_ARGS: the host's Python, read-only."""
    return " ".join(f"-v {path}:{path}:ro" for path in _mounted_dirs())


def _python() -> str:
    # The venv's interpreter (it finds the venv's site-packages); the repo first on the path.
    return str(Path(sys.prefix) / "bin" / "python3") if sys.prefix != sys.base_prefix \
        else sys.executable


def build_server_image() -> str:
    """The image's name (built once per content; a second build is skipped)."""
    entry = [_python(), "-m", "pytest_fmbench.testing.openai_server", "--host", "0.0.0.0",
             "--port", str(CONTAINER_PORT), "--ttft", "0.01", "--token-delay", "0.0005"]
    changes = [f"ENTRYPOINT {__import__('json').dumps(entry)}", f"ENV PYTHONPATH={REPO}",
               f"WORKDIR {REPO}"]
    tag = hashlib.sha256("\n".join(changes).encode()).hexdigest()[:12]
    image = f"localhost/fmbench-test-server:{tag}"
    exists = subprocess.run([podman(), "image", "exists", image], check=False)
    if exists.returncode == 0:
        return image
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "root"
        for name in ("tmp", "etc", "proc", "sys", "dev", "usr", "run", "var/tmp"):
            (root / name).mkdir(parents=True, exist_ok=True)
        for top in ("/lib", "/lib64", "/bin", "/sbin"):
            # Debian's merged /usr: /lib -> usr/lib; the same links inside.
            if Path(top).is_symlink():
                (root / top.lstrip("/")).symlink_to(os.readlink(top))
        (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
        tar = Path(folder) / "root.tar"
        with tarfile.open(tar, "w") as archive:
            archive.add(root, arcname=".")
        command = [podman(), "import"]
        for change in changes:
            command += ["--change", change]
        subprocess.run([*command, str(tar), image], check=True, capture_output=True, timeout=120)
    return image


def containers_of(run_id: str | None = None) -> list[str]:
    """Names of the containers labelled as pytest-fmbench's (of one run), running or not."""
    label = f"label=fmbench.run-id={run_id}" if run_id else "label=fmbench.created-by=pytest-fmbench"
    done = subprocess.run([podman(), "ps", "-a", "--filter", label, "--format", "{{.Names}}"],
                          capture_output=True, text=True, check=True, timeout=60)
    return [line for line in done.stdout.split() if line]


def remove_run(run_id: str) -> None:
    """A test's own clean-up of what a failed assertion may have left."""
    for name in containers_of(run_id):
        subprocess.run([podman(), "rm", "-f", name], capture_output=True, timeout=60, check=False)


__all__ = ["RUN_ARGS_ENV", "build_server_image", "containers_of", "podman", "remove_run", "run_args"]
