"""The OpenAI-compatible backend: vLLM, TGI, SGLang, Ollama, llama.cpp, NIM, ... servers.

Bring your own server by URL (``openai.base_url``, or FMBench's ``ep_name``), or let the
plugin start one with ``openai.deploy.command`` (stopped on teardown, see ``command.py``).

FMBench's self-hosted experiments (``inference_script: ec2_predictor.py``,
``inference_spec.container_type``, ``ep_name`` the server's URL) map onto this backend:

- vllm / vllm_gpu / sglang / llama_server / huggingface (TGI): ``ep_name`` is an
  OpenAI-compatible URL, used as is (``.../v1/completions`` or ``.../v1/chat/completions``);
- ollama: FMBench calls ``/api/generate``; the same server's OpenAI-compatible API
  (``/v1/completions``, ``/v1/chat/completions`` for ``/api/chat``) is used instead;
- triton / djl: their native APIs are not OpenAI-compatible: a clear error says what to do;
- ``deploy: yes`` with ``deployment_script: ec2_deploy.py``: the container backend starts
  FMBench's container (``container.py``); ``deploy: yes`` without it and without
  ``openai.deploy.command``: the run stops at configure time saying how to start the server.

The API key comes from the environment variable named by ``openai.api_key_env``; it is sent
as ``Authorization: Bearer`` and never logged, described or recorded.
"""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import urlsplit

from pytest_fmbench.config.model import Config, Experiment, OpenAISettings
from pytest_fmbench.endpoints.base import EndpointClient
from pytest_fmbench.endpoints.command import PORT_ENV, CommandServer
from pytest_fmbench.endpoints.http1 import parse_headers
from pytest_fmbench.endpoints.openai_http import OpenAIClient
from pytest_fmbench.endpoints.process import (
    ProcessIdentity,
    StopsOrphanedServer,
    free_port,
    new_cookie,
)
from pytest_fmbench.endpoints.registry import EndpointContext
from pytest_fmbench.errors import ConfigError, EndpointError
from pytest_fmbench.redaction import redact_url
from pytest_fmbench.runlog import LOGS_DIR, private_log_path, publish_log

_API_SUFFIX = re.compile(r"/v1/(chat/completions|completions)/?$")
_OLLAMA_NATIVE = re.compile(r"/api/(generate|chat)/?$")
# FMBench container types whose ec2_predictor requests speak the OpenAI API.
OPENAI_CONTAINERS = frozenset({"vllm", "vllm_gpu", "sglang", "llama_server", "huggingface", "tgi",
                               "ollama"})
NATIVE_CONTAINERS = {
    "triton": "Triton's generate API (/v2/models/<model>/generate)",
    "djl": "DJL Serving's /invocations API",
}
# What to put in openai.deploy.command for FMBench's docker deployments, by container type.
SUGGESTED_COMMANDS = {
    "vllm": "vllm serve {model} --port ${port}",
    "vllm_gpu": "vllm serve {model} --port ${port}",
    "sglang": "python -m sglang.launch_server --model-path {model} --port ${port}",
    "llama_server": "llama-server -m /path/to/model.gguf --port ${port}",
    "ollama": "OLLAMA_HOST=127.0.0.1:${port} ollama serve",
    "huggingface": "text-generation-launcher --model-id {model} --port ${port}",
}


def split_endpoint_url(url: str) -> tuple[str, str | None]:
    """``http://h:8000/v1/chat/completions`` → (``http://h:8000``, ``chat``).

    Ollama's native ``/api/generate`` and ``/api/chat`` map to its OpenAI-compatible API on
    the same server.
    """
    match = _API_SUFFIX.search(url)
    if match:
        api = "chat" if match.group(1).startswith("chat") else "completions"
        return url[: match.start()], api
    match = _OLLAMA_NATIVE.search(url)
    if match:
        return url[: match.start()], "chat" if match.group(1) == "chat" else "completions"
    return url.rstrip("/"), None


def _key(experiment: Experiment, leaf: str) -> str:
    return f"experiments ({experiment.name}).{leaf}"


class OpenAIEndpoint(StopsOrphanedServer):
    def __init__(self, config: Config, experiment: Experiment, context: EndpointContext) -> None:
        self.preflight(config, experiment)
        self.name = experiment.name
        self.experiment = experiment
        self.context = context
        self.settings = experiment.openai or OpenAISettings()
        self.timeout_s = config.load_for(experiment).request_timeout_s or 120.0
        self.deploy_settings = self.settings.deploy
        self.port = 0
        url = self.settings.base_url or experiment.ep_name
        if self.deploy_settings is not None:
            self.port = self.deploy_settings.port or _url_port(url) or _free_port()
            url = url or f"http://127.0.0.1:{self.port}"
        assert url, "preflight checks there is a URL"
        self.base_url, api = split_endpoint_url(url)
        self.api = api or self.settings.api
        self._server: CommandServer | None = None
        # Known before deploy, so the journal can name the server before it starts.
        self.cookie = new_cookie()

    @classmethod
    def preflight(cls, config: Config, experiment: Experiment) -> None:
        """Mistakes found before anything starts (raised as ``ConfigError``)."""
        settings = experiment.openai or OpenAISettings()
        container = (experiment.inference_spec.container_type or "").lower()
        url = settings.base_url or experiment.ep_name
        if container in NATIVE_CONTAINERS and url and not _API_SUFFIX.search(url):
            raise ConfigError(
                f"inference_spec.container_type '{container}' is served through "
                f"{NATIVE_CONTAINERS[container]}, which is not OpenAI-compatible",
                key=_key(experiment, "inference_spec.container_type"),
                fix="serve the model behind an OpenAI-compatible API (e.g. Triton's OpenAI "
                    "frontend, vLLM, SGLang, TGI) and point openai.base_url (or ep_name) at it")
        explicit_no = "deploy" in experiment.model_fields_set and not experiment.deploy
        if settings.deploy is not None:
            if explicit_no:
                raise ConfigError(
                    "'deploy: no' but openai.deploy.command is set",
                    key=_key(experiment, "deploy"),
                    fix="remove 'deploy: no' to start the server with the command, or remove "
                        "openai.deploy to use a server that is already running")
        elif experiment.deploy and experiment.backend is None:
            # An FMBench config that asks FMBench to deploy the server with docker.
            raise ConfigError(
                "FMBench deploys this server with docker (deploy: yes); pytest-fmbench does "
                "not run FMBench's deployment scripts",
                key=_key(experiment, "deploy"),
                fix=_deploy_fix(experiment, container, url))
        if not url and settings.deploy is None:
            raise ConfigError(
                "no server URL", key=_key(experiment, "openai.base_url"),
                fix="set openai.base_url (or FMBench's ep_name) to the server's URL, or "
                    "openai.deploy.command to start one")
        if settings.api_key_env and not os.environ.get(settings.api_key_env):
            raise ConfigError(
                f"environment variable {settings.api_key_env} is not set",
                key=_key(experiment, "openai.api_key_env"),
                fix=f"export {settings.api_key_env}=<your API key>")
        _check_headers_env(experiment, settings)
        try:
            parse_headers(settings.headers)
            parse_headers(experiment.inference_spec.headers)
        except ValueError as exc:
            raise ConfigError(str(exc), key=_key(experiment, "openai.headers / inference_spec.headers"),
                              fix="one line per header value, names without spaces or colons"
                              ) from None
        if settings.api_key_env and any(c in os.environ[settings.api_key_env] for c in "\r\n"):
            raise ConfigError(f"environment variable {settings.api_key_env} holds a line break",
                              key=_key(experiment, "openai.api_key_env"),
                              fix=f"export {settings.api_key_env} without a trailing newline "
                                  "(e.g. $(tr -d '\\n' < keyfile))")

    @property
    def deployed_by_us(self) -> bool:
        return self._server is not None

    def deploy(self) -> None:
        """Start the server with ``openai.deploy.command``; bring-your-own: nothing to do."""
        deploy = self.deploy_settings
        if deploy is None:
            return
        # The raw log stays outside the results dir (it may quote secrets); teardown
        # publishes a scrubbed copy to logs/<experiment>-server.log (see runlog.py).
        log_path = private_log_path(self.context.run_id, f"{self.experiment.safe_name}-server.log")
        server = CommandServer(
            deploy.command, health_url=deploy.health_url or f"{self.base_url}/health",
            port=self.port, log_path=log_path, startup_timeout_s=deploy.startup_timeout_s,
            stop_timeout_s=deploy.stop_timeout_s, env=deploy.env, cwd=deploy.cwd,
            key=_key(self.experiment, "openai.deploy.command"), cookie=self.cookie)
        # Registered before it is up, so an interrupted start is still stopped on teardown.
        self._server = server
        self.context.log(f"[fmbench] starting the server of '{self.name}' "
                         f"({PORT_ENV}={self.port}; log {log_path})")
        server.start()

    def teardown(self) -> None:
        """Stops only what ``deploy`` started (never a bring-your-own server)."""
        server, self._server = self._server, None
        if server is not None:
            try:
                server.stop()
            finally:
                publish_log(server.log_path, self.context.results_dir / LOGS_DIR
                            / f"{self.experiment.safe_name}-server.log")

    def reap_plan(self) -> dict[str, Any] | None:
        """The command's processes (found by cookie; the shell by pid and start time)."""
        if self.deploy_settings is None:
            return None  # bring your own: nothing of ours to stop
        identity = self._server.identity() if self._server is not None else ProcessIdentity(self.cookie)
        return {"kind": "process", "process": identity.to_json()}

    def _api_key(self) -> str | None:
        variable = self.settings.api_key_env
        if not variable:
            return None
        key = os.environ.get(variable)
        if not key:
            raise EndpointError(
                f"environment variable {variable} is not set",
                key=_key(self.experiment, "openai.api_key_env"),
                fix=f"export {variable}=<your API key>",
            )
        return key

    def _env_headers(self) -> dict[str, str]:
        """``openai.headers_env``: header values read from the environment (never logged)."""
        headers = {}
        for name, variable in self.settings.headers_env.items():
            value = os.environ.get(variable)
            if not value:
                raise EndpointError(
                    f"environment variable {variable} (header {name}) is not set",
                    key=_key(self.experiment, "openai.headers_env"),
                    fix=f"export {variable}=<the {name} value>")
            headers[name] = value
        return headers

    def client(self) -> EndpointClient:
        # FMBench's REST predictors send inference_spec.headers; ours (openai.headers,
        # openai.headers_env) win.
        headers = {**self.experiment.inference_spec.headers, **self.settings.headers}
        headers.update(self._env_headers())
        key = self._api_key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return OpenAIClient(
            self.base_url,
            api=self.api,  # type: ignore[arg-type]
            model=self.settings.model or self.experiment.model_id,
            stream=self.experiment.inference_spec.stream,
            timeout_s=self.timeout_s,
            headers=headers,
            extra_body=self.settings.extra_body,
            count_tokens=self.context.count_tokens,
            keep_text=False,
        )

    def metrics_url(self) -> str | None:
        """vLLM, SGLang and TGI serve Prometheus metrics at /metrics beside the API."""
        return f"{self.base_url}/metrics"

    def runs_on_this_host(self) -> bool:
        """Started here by the deploy command, or addressed on loopback."""
        if self.deploy_settings is not None:
            return True
        try:
            host = urlsplit(self.base_url).hostname or ""
        except ValueError:
            return False
        return host in ("localhost", "::1") or host.startswith("127.")

    def describe(self) -> dict[str, Any]:
        """Never the headers or the command (they may carry secrets)."""
        facts: dict[str, Any] = {
            "backend": "openai", "url": redact_url(self.base_url), "api": self.api,
            "model": self.settings.model or self.experiment.model_id,
            "stream": self.experiment.inference_spec.stream,
            "deploy": "command" if self.deploy_settings is not None else "bring-your-own",
        }
        if self.experiment.inference_spec.container_type:
            facts["container_type"] = self.experiment.inference_spec.container_type
        if self._server is not None:
            facts["pid"] = self._server.pid
            facts["process"] = self._server.identity().to_json()
        return facts


def _check_headers_env(experiment: Experiment, settings: OpenAISettings) -> None:
    """Every ``headers_env`` variable set, one line, and a valid header name."""
    for name, variable in settings.headers_env.items():
        value = os.environ.get(variable)
        if not value:
            raise ConfigError(f"environment variable {variable} (header {name}) is not set",
                              key=_key(experiment, "openai.headers_env"),
                              fix=f"export {variable}=<the {name} value>")
        if any(c in value for c in "\r\n"):
            raise ConfigError(f"environment variable {variable} (header {name}) holds a line break",
                              key=_key(experiment, "openai.headers_env"),
                              fix=f"export {variable} without a trailing newline")
        try:
            parse_headers({name: "x"})
        except ValueError as exc:
            raise ConfigError(str(exc), key=_key(experiment, "openai.headers_env"),
                              fix="header names without spaces or colons") from None


def _deploy_fix(experiment: Experiment, container: str, url: str | None) -> str:
    model = experiment.model_id or "MODEL"
    command = SUGGESTED_COMMANDS.get(container, "<command that starts the server> --port ${port}")
    command = command.format(model=model, port=PORT_ENV)
    where = f" (ep_name {url})" if url else ""
    return ("either start the server yourself and set 'deploy: no'" + where + ", or let "
            "pytest-fmbench start and stop it, e.g.\n"
            "    openai:\n"
            "      deploy:\n"
            f"        command: \"{command}\"\n"
            "        health_url: <the server's health URL, default <base_url>/health>")


def _url_port(url: str | None) -> int | None:
    if not url:
        return None
    try:
        return urlsplit(url).port
    except ValueError:
        return None


def _free_port() -> int:
    return free_port("127.0.0.1")
