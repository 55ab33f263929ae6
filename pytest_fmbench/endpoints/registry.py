"""Backend registry: built-in backends by name, third-party ones by entry point."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Protocol

from pytest_fmbench.config.model import Config, Experiment, is_import_path
from pytest_fmbench.endpoints.base import Endpoint, SupportsPreflight

ENTRY_POINT_GROUP = "pytest_fmbench.backends"

_BUILTIN = {
    "local": "pytest_fmbench.endpoints.local:LocalEndpoint",
    "openai": "pytest_fmbench.endpoints.openai:OpenAIEndpoint",
    "sagemaker": "pytest_fmbench.endpoints.sagemaker:SageMakerEndpoint",
    "bedrock": "pytest_fmbench.endpoints.bedrock:BedrockEndpoint",
    "rest": "pytest_fmbench.endpoints.rest:RestEndpoint",
    "container": "pytest_fmbench.endpoints.container:ContainerEndpoint",
}


@dataclass
class EndpointContext:
    """What a backend may need beyond its experiment: run identity and where to write."""

    run_id: str
    results_dir: Path
    log: Callable[[str], None] = print
    # ``(text) -> int`` from the configured tokenizer, for backends without server usage.
    count_tokens: Callable[[str], int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class EndpointFactory(Protocol):
    def __call__(self, config: Config, experiment: Experiment, context: EndpointContext) -> Endpoint: ...


def backend_names() -> list[str]:
    names = set(_BUILTIN)
    names.update(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
    return sorted(names)


def backend_factory(name: str) -> EndpointFactory:
    target = _BUILTIN.get(name) or (name if is_import_path(name) else None)
    if target is None:
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if ep.name == name:
                factory: EndpointFactory = ep.load()
                return factory
        raise KeyError(name)
    module_name, _, attr = target.partition(":")
    # Imported lazily: backends pull heavy or optional dependencies (boto3, transformers).
    factory = getattr(importlib.import_module(module_name), attr)
    return factory  # type: ignore[no-any-return]


def preflight(config: Config, experiments: Sequence[Experiment] | None = None) -> None:
    """Checks each backend can make before anything is deployed (raise ``ConfigError``).

    A backend's factory may define ``preflight(config, experiment)``: missing region or
    credentials, an unknown instance price, a missing role. Run for the selected
    experiments (all by default) once cases are selected (``selection.check_selected``),
    so a mistake costs no money and ends as one usage error, and collecting needs none.
    """
    for experiment in config.experiments if experiments is None else experiments:
        factory = backend_factory(experiment.resolved_backend or "")
        if isinstance(factory, SupportsPreflight):
            factory.preflight(config, experiment)


def create_endpoint(config: Config, experiment: Experiment, context: EndpointContext) -> Endpoint:
    backend = experiment.resolved_backend
    assert backend is not None, "the loader checks every experiment has a backend"
    return backend_factory(backend)(config, experiment, context)
