"""Prices: the packaged table, user overrides, per-experiment resolution, AWS refresh.

The table is FMBench's ``pricing.yml`` format::

    pricing:
      instance_based: {ml.g5.xlarge: 1.4084, g5.xlarge: 1.006, ...}        # USD per hour
      token_based:
        anthropic.claude-3-haiku-20240307-v1:0:
          input-per-1k-tokens: 0.00025                                     # USD
          output-per-1k-tokens: 0.00125

The packaged table (``pricing.yml`` next to this module, with the date its prices were
taken) is the base; the config's ``pricing:`` key (a file relative to the config, or an
inline mapping) overrides entries; an experiment's ``price_per_hour:`` wins over both.
An experiment whose price is needed and unknown is a ``ConfigError`` at configure time,
before anything is deployed. ``refresh_prices`` asks the AWS Pricing API, on request only.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import json
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml

from pytest_fmbench.config.model import Config, Experiment
from pytest_fmbench.errors import ConfigError

PACKAGED_TABLE = Path(__file__).with_name("pricing.yml")
# FMBench configs say `pricing: pricing.yml`, meaning FMBench's own bundled file.
FMBENCH_DEFAULT_NAME = "pricing.yml"
INPUT_KEY, OUTPUT_KEY = "input-per-1k-tokens", "output-per-1k-tokens"
# Cross-region inference profiles prefix the model id with a geography.
_GEO_PREFIXES = ("us.", "eu.", "apac.", "us-gov.", "global.")

ADD_PRICE_FIX = (
    "add it to a pricing file in FMBench's format (pricing: {{instance_based: {{'{key}': <USD per "
    "hour>}}}}, or token_based: {{'{key}': {{input-per-1k-tokens: x, output-per-1k-tokens: y}}}}) "
    "and point the config's 'pricing:' key at it (path relative to the config), or set "
    "'price_per_hour: <USD>' on the experiment; "
    "`python -m pytest_fmbench.config.pricing refresh` fetches current prices from AWS"
)


@dataclasses.dataclass(frozen=True)
class Price:
    """How one experiment is priced (METRICS.md "Money")."""

    kind: Literal["instance", "token"]
    key: str
    source: str
    hourly: float | None = None          # per instance, instance-priced
    instance_count: int = 1
    input_per_1k: float | None = None    # token-priced
    output_per_1k: float | None = None

    def token_cost(self, prompt_tokens: float, completion_tokens: float) -> float:
        """USD for these tokens at the token rates (METRICS.md "Money"; 0 for a missing rate)."""
        return (prompt_tokens / 1000 * (self.input_per_1k or 0.0)
                + completion_tokens / 1000 * (self.output_per_1k or 0.0))

    @property
    def price_per_hour(self) -> float:
        if self.kind != "instance" or self.hourly is None:
            return math.nan
        return self.hourly * self.instance_count

    def describe(self) -> str:
        if self.kind == "instance":
            count = f" × {self.instance_count}" if self.instance_count != 1 else ""
            return f"{self.key}: {self.hourly:g} USD/h{count} ({self.source})"
        return (f"{self.key}: {self.input_per_1k:g} / {self.output_per_1k:g} USD per 1k "
                f"input / output tokens ({self.source})")


@dataclasses.dataclass(frozen=True)
class TokenPrice:
    input_per_1k: float
    output_per_1k: float


@dataclasses.dataclass
class PriceTable:
    instance_based: dict[str, float] = dataclasses.field(default_factory=dict)
    token_based: dict[str, TokenPrice] = dataclasses.field(default_factory=dict)
    as_of: str | None = None
    sources: list[str] = dataclasses.field(default_factory=list)

    @classmethod
    def from_data(cls, data: Any, source: str) -> PriceTable:
        """Parse FMBench's format (with or without the top-level ``pricing:`` key)."""
        if not isinstance(data, Mapping):
            raise ConfigError("a pricing table must be a mapping", file=source,
                              fix="use FMBench's format: pricing: {instance_based: {...}, token_based: {...}}")
        as_of = data.get("prices_as_of")
        body = data.get("pricing", data)
        body = _flat_instance_prices(body)
        if not isinstance(body, Mapping):
            raise ConfigError("'pricing' must be a mapping", file=source, key="pricing",
                              fix="use FMBench's format: pricing: {instance_based: {...}, token_based: {...}}")
        unknown = sorted(set(body) - {"instance_based", "token_based", "prices_as_of"})
        if unknown:
            raise ConfigError(f"unknown pricing section '{unknown[0]}'", file=source, key=f"pricing.{unknown[0]}",
                              fix="use 'instance_based' (USD per hour) and 'token_based' (USD per 1k tokens)")
        instance: dict[str, float] = {}
        for key, value in (body.get("instance_based") or {}).items():
            instance[str(key)] = _amount(value, source, f"pricing.instance_based.{key}")
        tokens: dict[str, TokenPrice] = {}
        for key, value in (body.get("token_based") or {}).items():
            where = f"pricing.token_based.{key}"
            if not isinstance(value, Mapping) or INPUT_KEY not in value or OUTPUT_KEY not in value:
                raise ConfigError("a token-based price needs both rates", file=source, key=where,
                                  fix=f"give {{{INPUT_KEY}: x, {OUTPUT_KEY}: y}} in USD per 1,000 tokens")
            tokens[str(key)] = TokenPrice(_amount(value[INPUT_KEY], source, f"{where}.{INPUT_KEY}"),
                                          _amount(value[OUTPUT_KEY], source, f"{where}.{OUTPUT_KEY}"))
        as_of = as_of or body.get("prices_as_of")
        return cls(instance, tokens, str(as_of) if as_of else None, [source])

    def merged(self, other: PriceTable) -> PriceTable:
        """This table with ``other``'s entries on top."""
        return PriceTable({**self.instance_based, **other.instance_based},
                          {**self.token_based, **other.token_based},
                          other.as_of or self.as_of, [*self.sources, *other.sources])

    def to_data(self) -> dict[str, Any]:
        """FMBench's format, ready for ``yaml.safe_dump``."""
        data: dict[str, Any] = {}
        if self.as_of:
            data["prices_as_of"] = self.as_of
        data["pricing"] = {
            "instance_based": dict(sorted(self.instance_based.items())),
            "token_based": {k: {INPUT_KEY: v.input_per_1k, OUTPUT_KEY: v.output_per_1k}
                            for k, v in sorted(self.token_based.items())},
        }
        return data

    def describe(self) -> str:
        date = f", prices as of {self.as_of}" if self.as_of else ""
        return " + ".join(self.sources) + date


def _flat_instance_prices(body: Any) -> Any:
    """FMBench's older inline form, ``pricing: {ml.g5.2xlarge: 1.515, ...}``: instance prices."""
    if (isinstance(body, Mapping) and body
            and not {"instance_based", "token_based", "prices_as_of"} & set(body)
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in body.values())):
        return {"instance_based": dict(body)}
    return body


def missing_pricing_file(config: Config) -> str | None:
    """The config's ``pricing:`` file when it names a local file that does not exist (and is
    not FMBench's bundled ``pricing.yml``, which the packaged table stands for)."""
    pricing = config.pricing
    if not isinstance(pricing, str) or not pricing.strip():
        return None
    text = pricing.strip()
    if text.startswith(("s3://", "http://", "https://")):
        return None
    if Path(text).name == FMBENCH_DEFAULT_NAME and Path(text).parent == Path("."):
        return None
    folder = config.source_path.parent if config.source_path else Path.cwd()
    return None if (folder / text).expanduser().is_file() else text


def _amount(value: Any, source: str, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"price {value!r} is not a non-negative number", file=source, key=key,
                          fix="give the price in USD as a number, e.g. 1.006")
    return float(value)


@functools.lru_cache(maxsize=1)
def packaged_table() -> PriceTable:
    data = yaml.safe_load(PACKAGED_TABLE.read_text(encoding="utf-8"))
    table = PriceTable.from_data(data, "packaged pricing.yml")
    return table


def load_price_table(config: Config) -> PriceTable:
    """The packaged table with the config's ``pricing:`` (file or inline) on top."""
    base = packaged_table()
    pricing = config.pricing
    if pricing is None:
        return base
    config_file = str(config.source_path) if config.source_path else None
    if isinstance(pricing, Mapping):
        return base.merged(PriceTable.from_data(dict(pricing), f"{config_file or 'config'} (pricing:)"))
    text = str(pricing).strip()
    if text.startswith(("s3://", "http://", "https://")):
        raise ConfigError(f"pricing file '{text}' is remote", file=config_file, key="pricing",
                          fix="download it and give its local path (relative to the config file)")
    folder = config.source_path.parent if config.source_path else Path.cwd()
    path = (folder / text).expanduser()
    if not path.is_file():
        if Path(text).name == FMBENCH_DEFAULT_NAME and Path(text).parent == Path("."):
            return base  # FMBench's own bundled table: ours carries its entries
        raise ConfigError(f"pricing file '{text}' not found (looked at {path})", file=config_file,
                          key="pricing", fix="give a pricing file in FMBench's format, relative to the "
                          "config file, or remove the key to use the packaged table")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read pricing file: {exc}", file=str(path), key="pricing",
                          fix="fix the YAML (FMBench's pricing.yml format)") from None
    return base.merged(PriceTable.from_data(data, str(path)))


# -- resolving one experiment's price -------------------------------------------------------------

def _strip_geo(model_id: str) -> str | None:
    for prefix in _GEO_PREFIXES:
        if model_id.startswith(prefix):
            return model_id[len(prefix):]
    return None


def resolve_price(config: Config, experiment: Experiment, table: PriceTable) -> Price | None:
    """The experiment's price, or None where none is needed (local/openai without a type).

    Raises ``ConfigError`` naming the key and how to add it when a needed price is unknown.
    """
    count = experiment.instance_count or 1
    if experiment.price_per_hour is not None:
        return Price("instance", experiment.instance_type or experiment.name,
                     "experiment price_per_hour", hourly=experiment.price_per_hour, instance_count=count)
    backend = experiment.resolved_backend
    index = config.experiments.index(experiment)
    where = f"experiments[{index}] ({experiment.name})"
    source = table.describe()
    if backend == "bedrock":
        settings = getattr(experiment, "bedrock", None)
        candidates = [getattr(settings, "model_id", None), experiment.model_id,
                      experiment.instance_type, experiment.ep_name]
        keys = [str(c) for c in dict.fromkeys(candidates) if c]
        for key in keys:
            if key in table.instance_based:  # provisioned throughput, priced per model unit-hour
                return Price("instance", key, source, hourly=table.instance_based[key], instance_count=count)
            for candidate in (key, _strip_geo(key)):
                if candidate and candidate in table.token_based:
                    rates = table.token_based[candidate]
                    return Price("token", key, source, input_per_1k=rates.input_per_1k,
                                 output_per_1k=rates.output_per_1k)
        key = keys[0] if keys else experiment.name
        raise ConfigError(
            f"no price for Bedrock model '{key}' in the pricing table ({source})",
            key=f"{where}.model_id", fix=ADD_PRICE_FIX.format(key=key))
    instance_type = experiment.instance_type
    if not instance_type:
        if backend == "sagemaker":
            raise ConfigError("a SageMaker experiment needs an instance type to be priced",
                              key=f"{where}.instance_type",
                              fix="set 'instance_type: ml.<family>.<size>' (or 'price_per_hour:')")
        return None  # local / bring-your-own without a named instance: no price, costs undefined
    keys = [instance_type]
    if backend == "sagemaker" and not instance_type.startswith("ml."):
        keys.insert(0, f"ml.{instance_type}")  # SageMaker prices its ml.* types
    for key in keys:
        if key in table.instance_based:
            return Price("instance", key, source, hourly=table.instance_based[key], instance_count=count)
    raise ConfigError(
        f"no price for instance type '{instance_type}' in the pricing table ({source})",
        key=f"{where}.instance_type", fix=ADD_PRICE_FIX.format(key=instance_type))


def experiment_prices(config: Config, table: PriceTable | None = None,
                      experiments: Sequence[Experiment] | None = None) -> dict[str, Price | None]:
    """The price of each experiment (all by default; ``ConfigError`` on the first unknown)."""
    table = table if table is not None else load_price_table(config)
    chosen = config.experiments if experiments is None else experiments
    return {experiment.name: resolve_price(config, experiment, table) for experiment in chosen}


def check_prices(config: Config, experiments: Sequence[Experiment] | None = None
                 ) -> dict[str, Price | None]:
    """Every needed price is known, before anything is deployed (the selected experiments)."""
    return experiment_prices(config, experiments=experiments)


# -- the AWS Pricing API (on request only) --------------------------------------------------------

def _term(field: str, value: str) -> dict[str, str]:
    return {"Type": "TERM_MATCH", "Field": field, "Value": value}


def _products(client: Any, service: str, filters: list[dict[str, str]]) -> list[dict[str, Any]]:
    products: list[dict[str, Any]] = []
    token: str | None = None
    while True:
        kwargs: dict[str, Any] = {"ServiceCode": service, "Filters": filters, "MaxResults": 100}
        if token:
            kwargs["NextToken"] = token
        page = client.get_products(**kwargs)
        for item in page.get("PriceList", []):
            products.append(json.loads(item) if isinstance(item, str) else item)
        token = page.get("NextToken")
        if not token:
            return products


def _on_demand(product: Mapping[str, Any]) -> list[tuple[float, str, str]]:
    """(USD, unit, description) of every on-demand price dimension of a product."""
    out = []
    for term in (product.get("terms", {}).get("OnDemand") or {}).values():
        for dimension in (term.get("priceDimensions") or {}).values():
            usd = dimension.get("pricePerUnit", {}).get("USD")
            try:
                out.append((float(usd), str(dimension.get("unit", "")), str(dimension.get("description", ""))))
            except (TypeError, ValueError):
                continue
    return out


def fetch_instance_price(client: Any, instance_type: str, region: str) -> float | None:
    """On-demand USD per hour of a SageMaker hosting (``ml.*``) or EC2 Linux instance type."""
    if instance_type.startswith("ml."):
        products = _products(client, "AmazonSageMaker", [
            _term("instanceName", instance_type), _term("regionCode", region)])
        products = [p for p in products
                    if p.get("product", {}).get("attributes", {}).get("component") == "Hosting"
                    or "Host:" in p.get("product", {}).get("attributes", {}).get("usagetype", "")]
    else:
        products = _products(client, "AmazonEC2", [
            _term("instanceType", instance_type), _term("regionCode", region),
            _term("operatingSystem", "Linux"), _term("tenancy", "Shared"),
            _term("preInstalledSw", "NA"), _term("capacitystatus", "Used")])
    prices = [usd for product in products for usd, unit, _ in _on_demand(product)
              if unit.lower().startswith("hr") and usd > 0]
    return min(prices) if prices else None


def fetch_token_price(client: Any, model_name: str, region: str) -> TokenPrice | None:
    """On-demand Bedrock input/output USD per 1k tokens of a model (its Pricing API name)."""
    found: dict[str, float] = {}
    for service in ("AmazonBedrock", "AmazonBedrockFoundationModels"):
        for product in _products(client, service, [_term("model", model_name), _term("regionCode", region)]):
            attributes = product.get("product", {}).get("attributes", {})
            label = " ".join(str(attributes.get(k, "")) for k in ("usagetype", "inferenceType")).lower()
            if any(word in label for word in ("batch", "cache", "provisioned", "image")):
                continue
            side = "input" if "input" in label else "output" if "output" in label else None
            if side is None or side in found:
                continue
            for usd, unit, description in _on_demand(product):
                text = f"{unit} {description}".lower()
                per = 1_000_000 if ("1m" in text or "million" in text) else 1000
                found[side] = usd * 1000 / per
                break
    if "input" in found and "output" in found:
        return TokenPrice(found["input"], found["output"])
    return None


def refresh_prices(instance_types: Iterable[str] = (), model_names: Mapping[str, str] | None = None, *,
                   client: Any = None, region: str = "us-east-1",
                   log: Any = print) -> PriceTable:
    """A table fetched from the AWS Pricing API for the given instance types and models.

    ``model_names`` maps a Bedrock model id to its Pricing API model name (e.g.
    ``anthropic.claude-3-haiku-20240307-v1:0: Claude 3 Haiku``). Keys with no price found are
    reported through ``log`` and left out.
    """
    if client is None:
        import boto3

        # The Pricing API is served from us-east-1 (and a few others) whatever region is priced.
        client = boto3.client("pricing", region_name="us-east-1")
    table = PriceTable(as_of=datetime.date.today().isoformat(), sources=[f"AWS Pricing API ({region})"])
    for instance_type in dict.fromkeys(instance_types):
        price = fetch_instance_price(client, instance_type, region)
        if price is None:
            log(f"no on-demand price found for instance type {instance_type} in {region}")
        else:
            table.instance_based[instance_type] = price
    for model_id, name in (model_names or {}).items():
        rates = fetch_token_price(client, name, region)
        if rates is None:
            log(f"no on-demand token price found for {model_id} ('{name}') in {region}")
        else:
            table.token_based[model_id] = rates
    return table


def priced_keys(config: Config) -> tuple[list[str], list[str]]:
    """(instance types, Bedrock model ids) a config's experiments are priced by."""
    instances, models = [], []
    for experiment in config.experiments:
        if experiment.price_per_hour is not None:
            continue
        if experiment.resolved_backend == "bedrock":
            models.append(experiment.model_id or experiment.instance_type or experiment.name)
        elif experiment.instance_type:
            instances.append(experiment.instance_type)
    return sorted(set(instances)), sorted(set(models))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pytest_fmbench.config.pricing refresh [...]``: write a fresh pricing file."""
    parser = argparse.ArgumentParser(prog="python -m pytest_fmbench.config.pricing")
    sub = parser.add_subparsers(dest="command", required=True)
    refresh = sub.add_parser("refresh", help="fetch current prices from the AWS Pricing API")
    refresh.add_argument("keys", nargs="*", help="instance types (ml.g5.xlarge, g5.xlarge, ...)")
    refresh.add_argument("--config", help="also price every instance type this config uses")
    refresh.add_argument("--model-name", action="append", default=[], metavar="MODEL_ID=NAME",
                         help="a Bedrock model id and its Pricing API model name (repeatable)")
    refresh.add_argument("--region", default="us-east-1")
    refresh.add_argument("--out", default="-", help="output file (FMBench format); '-': stdout")
    args = parser.parse_args(argv)
    instances = list(args.keys)
    if args.config:
        from pytest_fmbench.config.loader import load_config

        try:
            config = load_config(Path(args.config))
        except ConfigError as exc:
            print(exc.render(), file=sys.stderr)
            return 4
        found, models = priced_keys(config)
        instances += found
        named = {pair.partition("=")[0] for pair in args.model_name}
        for model in models:
            if model not in named:
                print(f"Bedrock model {model}: pass --model-name {model}='<Pricing API name>' "
                      "to refresh it", file=sys.stderr)
    names = dict(pair.split("=", 1) for pair in args.model_name if "=" in pair)
    table = refresh_prices(instances, names, region=args.region,
                           log=lambda line: print(line, file=sys.stderr))
    text = yaml.safe_dump(table.to_data(), sort_keys=False)
    if args.out == "-":
        sys.stdout.write(text)
    else:
        Path(args.out).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
