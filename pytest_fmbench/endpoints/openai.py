"""The OpenAI-compatible backend: bring your own server (vLLM, TGI, SGLang, Ollama, ...)."""

from __future__ import annotations

import os
import re
from typing import Any

from pytest_fmbench.config.model import Config, Experiment, OpenAISettings
from pytest_fmbench.endpoints.base import EndpointClient
from pytest_fmbench.endpoints.openai_http import OpenAIClient
from pytest_fmbench.endpoints.registry import EndpointContext
from pytest_fmbench.errors import EndpointError

_API_SUFFIX = re.compile(r"/v1/(chat/completions|completions)/?$")


def split_endpoint_url(url: str) -> tuple[str, str | None]:
    """``http://h:8000/v1/chat/completions`` → (``http://h:8000``, ``chat``)."""
    match = _API_SUFFIX.search(url)
    if not match:
        return url.rstrip("/"), None
    api = "chat" if match.group(1).startswith("chat") else "completions"
    return url[: match.start()], api


class OpenAIEndpoint:
    def __init__(self, config: Config, experiment: Experiment, context: EndpointContext) -> None:
        self.name = experiment.name
        self.experiment = experiment
        self.context = context
        self.settings = experiment.openai or OpenAISettings()
        self.timeout_s = config.load_for(experiment).request_timeout_s or 120.0
        url = self.settings.base_url or experiment.ep_name
        if not url:
            raise EndpointError(
                "no server URL", key=f"experiments ({experiment.name}).openai.base_url",
                fix="set openai.base_url (or FMBench's ep_name) to the server's URL",
            )
        self.base_url, api = split_endpoint_url(url)
        self.api = api or self.settings.api
        if experiment.deploy and experiment.backend is None:
            raise EndpointError(
                "FMBench's docker-based deployment (deploy: yes) is not run by pytest-fmbench",
                key=f"experiments ({experiment.name}).deploy",
                fix="start the server yourself and set 'deploy: no', pointing ep_name at it",
            )

    @property
    def deployed_by_us(self) -> bool:
        return False

    def deploy(self) -> None:
        """Bring-your-own: nothing to create."""

    def teardown(self) -> None:
        """Never deletes what it did not deploy."""

    def _api_key(self) -> str | None:
        variable = self.settings.api_key_env
        if not variable:
            return None
        key = os.environ.get(variable)
        if not key:
            raise EndpointError(
                f"environment variable {variable} is not set",
                key=f"experiments ({self.name}).openai.api_key_env",
                fix=f"export {variable}=<your API key>",
            )
        return key

    def client(self) -> EndpointClient:
        headers = dict(self.settings.headers)
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
        )

    def describe(self) -> dict[str, Any]:
        return {"backend": "openai", "url": self.base_url, "api": self.api,
                "model": self.settings.model or self.experiment.model_id}
