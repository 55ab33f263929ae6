"""The embedded local backend: ``transformers serve`` on loopback with a local model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pytest_fmbench.config.model import Config, Experiment, LocalSettings
from pytest_fmbench.endpoints.base import EndpointClient
from pytest_fmbench.endpoints.local_model import LocalServer, ModelSpec, ensure_model
from pytest_fmbench.endpoints.openai_http import OpenAIClient
from pytest_fmbench.endpoints.process import (
    ProcessIdentity,
    StopsOrphanedServer,
    identify,
    new_cookie,
)
from pytest_fmbench.endpoints.registry import EndpointContext
from pytest_fmbench.errors import EndpointError
from pytest_fmbench.runlog import LOGS_DIR, private_log_path, publish_log

MODEL_PRESETS = ("tiny", "small")


def resolve_local_model(model: str, seed: int = 0) -> Path:
    """A preset name builds (once) the random-weight model; anything else is a directory."""
    if model in MODEL_PRESETS:
        return ensure_model(ModelSpec(size=model, seed=seed))
    path = Path(model).expanduser()
    if not path.is_dir():
        raise EndpointError(
            f"local model '{model}' is neither a preset ({', '.join(MODEL_PRESETS)}) "
            "nor a model directory",
            key="local.model",
            fix="give a preset, the path of a local Hugging Face model directory, "
            "or a hub id as 'hf:<org>/<name>' (needs network)",
        )
    return path


class LocalEndpoint(StopsOrphanedServer):
    def __init__(self, config: Config, experiment: Experiment, context: EndpointContext) -> None:
        self.name = experiment.name
        self.settings = experiment.local or LocalSettings()
        self.experiment = experiment
        self.context = context
        self.timeout_s = config.load_for(experiment).request_timeout_s or 120.0
        self._server: LocalServer | None = None
        self._model_dir: Path | None = None
        # Known before deploy, so the journal can name the server before it starts.
        self.cookie = new_cookie()

    @property
    def deployed_by_us(self) -> bool:
        return self._server is not None

    def deploy(self) -> None:
        model = self.settings.model
        hub_id = model.removeprefix("hf:") if model.startswith("hf:") else None
        self._model_dir = Path(hub_id) if hub_id else resolve_local_model(model, self.settings.seed)
        # The raw log stays private until teardown publishes a scrubbed copy (the server
        # inherits the environment, which may hold tokens).
        log_path = private_log_path(self.context.run_id, f"{self.experiment.safe_name}-server.log")
        server = LocalServer(
            self._model_dir,
            continuous_batching=self.settings.continuous_batching,
            device=self.settings.device,
            extra_args=self.settings.server_args,
            log_path=log_path,
            startup_timeout_s=self.settings.startup_timeout_s,
            hub_id=hub_id,
            cookie=self.cookie,
        )
        self._server = server
        server.start()

    def teardown(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            try:
                server.stop()
            finally:
                if server.log_path is not None:
                    publish_log(server.log_path, self.context.results_dir / LOGS_DIR
                                / f"{self.experiment.safe_name}-server.log")

    def reap_plan(self) -> dict[str, Any] | None:
        server = self._server
        pid = server.pid if server is not None else None
        identity = identify(pid, self.cookie) if pid else ProcessIdentity(self.cookie)
        return {"kind": "process", "process": identity.to_json()}

    def client(self) -> EndpointClient:
        url = self._server.url if self._server is not None else None
        if self._server is None or url is None:
            raise EndpointError(f"endpoint '{self.name}' is not deployed")
        return OpenAIClient(
            url,
            api=self.settings.api,
            model=self._server.model_id,
            stream=self.experiment.inference_spec.stream,
            timeout_s=self.timeout_s,
            count_tokens=self.context.count_tokens,
            keep_text=False,
        )

    def metrics_url(self) -> str | None:
        url = self._server.url if self._server is not None else None
        return f"{url}/metrics" if url else None

    def runs_on_this_host(self) -> bool:
        return True

    def describe(self) -> dict[str, Any]:
        return {
            "backend": "local",
            "url": self._server.url if self._server else None,
            "pid": self._server.pid if self._server else None,
            "process": (self.reap_plan() or {}).get("process") if self._server else None,
            "model": self.settings.model,
            "continuous_batching": self.settings.continuous_batching,
            "device": self.settings.device,
        }
