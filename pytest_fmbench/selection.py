"""Checks for the experiments that will run, once, before the first deploy (no pytest here).

Loading a config only validates it: no network, no credentials, no optional SDK, so
``--collect-only`` and ``-m``/``-k`` on any config work offline. Once pytest has selected the
cases (after ``-k``/``-m``/deselection), the controller calls ``check_selected`` for the
experiments of those cases: backend preflight (region, credentials, roles, the JumpStart SDK:
AWS calls happen here) and prices. A problem is a ``ConfigError`` (a usage error, exit 4).
xdist workers call ``price_selected`` leniently: the controller has already checked.
"""

from __future__ import annotations

from collections.abc import Iterable

from pytest_fmbench.budgets import require_prices
from pytest_fmbench.config.model import Config, Experiment
from pytest_fmbench.config.pricing import check_prices
from pytest_fmbench.endpoints.registry import preflight
from pytest_fmbench.errors import ConfigError
from pytest_fmbench.report.session import ReportSettings


def selected_experiments(config: Config, names: Iterable[str | None]) -> list[Experiment]:
    """The experiments named (``None`` entries ignored), in config order, each once."""
    wanted = {name for name in names if name is not None}
    return [experiment for experiment in config.experiments if experiment.name in wanted]


def check_selected(config: Config, settings: ReportSettings, experiments: list[Experiment]) -> None:
    """Preflight and prices of the experiments about to run; ``ConfigError`` on a problem."""
    if not experiments:
        return
    preflight(config, experiments)
    settings.prices = check_prices(config, experiments)
    require_prices(config, settings.budgets, settings.prices, experiments)


def price_selected(config: Config, settings: ReportSettings, experiments: list[Experiment]) -> None:
    """Prices on an xdist worker: an unknown price is the controller's error to report.

    A bring-your-own SageMaker endpoint's instance type is learned by its preflight
    (DescribeEndpoint); the worker repeats the preflight of an experiment without an
    instance type and without a price, as the controller's learned type stays there.
    """
    for experiment in experiments:
        try:
            settings.prices.update(check_prices(config, [experiment]))
        except ConfigError:
            settings.prices[experiment.name] = None
        if settings.prices[experiment.name] is not None or experiment.instance_type:
            continue
        try:
            preflight(config, [experiment])
            settings.prices.update(check_prices(config, [experiment]))
        except Exception:  # noqa: BLE001, S110 - the controller reports it; a worker goes on
            pass
