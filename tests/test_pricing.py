"""Unit tests of pytest_fmbench.config.pricing: table, overrides, resolution, AWS refresh (Stubber)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import botocore.session
import pytest
import yaml
from botocore.stub import Stubber

from pytest_fmbench.config.loader import load_config
from pytest_fmbench.config.pricing import (
    PriceTable,
    check_prices,
    fetch_instance_price,
    load_price_table,
    main,
    packaged_table,
    refresh_prices,
)
from pytest_fmbench.errors import ConfigError

# Instance types and Bedrock model ids used by FMBench's shipped configs (and its pricing files).
FMBENCH_INSTANCE_TYPES = [
    "ml.g5.xlarge", "ml.g5.2xlarge", "ml.g5.4xlarge", "ml.g5.12xlarge", "ml.g5.24xlarge", "ml.g5.48xlarge",
    "ml.g6.12xlarge", "ml.g6.24xlarge", "ml.g6.48xlarge", "ml.inf2.xlarge", "ml.inf2.24xlarge",
    "ml.inf2.48xlarge", "ml.p4d.24xlarge", "ml.p5.48xlarge", "ml.p5en.48xlarge", "ml.trn1.32xlarge",
    "ml.g4dn.xlarge", "ml.g4dn.12xlarge", "ml.c7i.xlarge", "ml.c5.xlarge", "ml.m5.xlarge", "ml.p3.2xlarge",
    "g5.xlarge", "g5.2xlarge", "g5.12xlarge", "g5.24xlarge", "g5.48xlarge", "g6e.xlarge", "g6e.2xlarge",
    "g6e.4xlarge", "g6e.12xlarge", "g6e.24xlarge", "g6e.48xlarge", "inf2.24xlarge", "inf2.48xlarge",
    "trn1.32xlarge", "p4d.24xlarge", "p4de.24xlarge", "p5.48xlarge", "p5e.48xlarge", "c5.18xlarge",
    "c8g.24xlarge", "m7a.24xlarge", "m7i.12xlarge", "m5.16xlarge",
]
FMBENCH_MODEL_IDS = [
    "anthropic.claude-3-haiku-20240307-v1:0", "anthropic.claude-3-sonnet-20240229-v1:0",
    "anthropic.claude-3-5-sonnet-20240620-v1:0", "us.anthropic.claude-3-5-sonnet-20241022-v2:0",
    "meta.llama3-1-8b-instruct-v1:0", "meta.llama3-1-70b-instruct-v1:0", "meta.llama3-8b-instruct-v1:0",
    "meta.llama3-70b-instruct-v1:0", "us.meta.llama3-2-1b-instruct-v1:0", "us.meta.llama3-2-3b-instruct-v1:0",
    "us.meta.llama3-2-11b-instruct-v1:0", "us.meta.llama3-2-90b-instruct-v1:0",
    "us.meta.llama3-3-70b-instruct-v1:0", "amazon.titan-text-express-v1", "amazon.nova-micro-v1:0",
    "amazon.nova-lite-v1:0", "amazon.nova-pro-v1:0", "us.amazon.nova-pro-v1:0", "cohere.command-text-v14",
    "cohere.command-light-text-v14", "cohere.command-r-plus-v1:0", "mistral.mistral-7b-instruct-v0:2",
    "mistral.mixtral-8x7b-instruct-v0:1",
]


def write_config(folder: Path, experiments: str, extra: str = "") -> Path:
    path = folder / "cfg.yml"
    path.write_text(textwrap.dedent("""\
        datasets:
          filters: [{payload_file: p.jsonl}]
        """) + "experiments:\n" + textwrap.indent(textwrap.dedent(experiments), "  ") + textwrap.dedent(extra))
    return path


def experiment(name: str, backend: str, **fields: Any) -> str:
    lines = [f"- name: {name}", f"  backend: {backend}", "  deploy: no", "  payload_files: [p.jsonl]",
             "  concurrency_levels: [1]"]
    if backend == "openai":
        lines.append('  openai: {base_url: "http://127.0.0.1:9"}')
    lines += [f"  {key}: {json.dumps(value)}" for key, value in fields.items()]
    return "\n".join(lines) + "\n"


def test_packaged_table_is_dated_and_covers_fmbench_configs() -> None:
    table = packaged_table()
    assert table.as_of
    missing = [t for t in FMBENCH_INSTANCE_TYPES if t not in table.instance_based]
    assert not missing
    missing = [m for m in FMBENCH_MODEL_IDS if m not in table.token_based]
    assert not missing
    assert table.instance_based["ml.g5.xlarge"] == 1.4084 and table.instance_based["g5.xlarge"] == 1.006


def test_fmbench_format_with_and_without_the_top_level_key() -> None:
    data = {"pricing": {"instance_based": {"x.large": 2}, "token_based": {
        "m": {"input-per-1k-tokens": 0.1, "output-per-1k-tokens": 0.2}}}}
    for source in (data, data["pricing"]):
        table = PriceTable.from_data(source, "test")
        assert table.instance_based == {"x.large": 2.0}
        assert table.token_based["m"].output_per_1k == 0.2


@pytest.mark.parametrize(("data", "key"), [
    ({"pricing": {"instance_based": {"x": "cheap"}}}, "pricing.instance_based.x"),
    ({"pricing": {"instance_based": {"x": -1}}}, "pricing.instance_based.x"),
    ({"pricing": {"token_based": {"m": {"input-per-1k-tokens": 1}}}}, "pricing.token_based.m"),
    ({"pricing": {"spot": {}}}, "pricing.spot"),
])
def test_bad_pricing_tables_name_the_key(data: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        PriceTable.from_data(data, "mine.yml")
    assert info.value.key == key and info.value.file == "mine.yml"


def test_instance_price_from_table_times_count(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, experiment("a", "openai", instance_type="g5.xlarge",
                                                            instance_count=2)))
    price = check_prices(config)["a"]
    assert (price.kind, price.hourly, price.price_per_hour) == ("instance", 1.006, 2.012)


def test_experiment_price_per_hour_wins_over_the_table(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, experiment("a", "openai", instance_type="g5.xlarge",
                                                            price_per_hour=0.5)))
    price = check_prices(config)["a"]
    assert price.hourly == 0.5 and price.source == "experiment price_per_hour"


def test_user_file_overrides_and_adds(tmp_path: Path) -> None:
    (tmp_path / "prices").mkdir()
    (tmp_path / "prices" / "mine.yml").write_text(yaml.safe_dump(
        {"pricing": {"instance_based": {"g5.xlarge": 0.75, "my.box": 9.0}}}))
    config = load_config(write_config(
        tmp_path, experiment("a", "openai", instance_type="g5.xlarge") + experiment("b", "openai", instance_type="my.box"),
        "pricing: prices/mine.yml\n"))
    prices = check_prices(config)
    assert prices["a"].hourly == 0.75 and prices["b"].hourly == 9.0
    assert "mine.yml" in prices["b"].source


def test_inline_pricing_dict(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, experiment("a", "openai", instance_type="my.box"),
                                      "pricing:\n  instance_based: {my.box: 4.5}\n"))
    assert check_prices(config)["a"].hourly == 4.5


def test_fmbench_default_pricing_file_name_uses_the_packaged_table(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, experiment("a", "openai", instance_type="g5.xlarge"),
                                      "pricing: pricing.yml\n"))
    assert check_prices(config)["a"].hourly == 1.006


def test_missing_pricing_file_falls_back_to_the_packaged_table_with_a_warning(tmp_path: Path) -> None:
    # FMBench's sample configs name a custom_pricing.yml they don't ship; FMBench falls back.
    config = load_config(write_config(tmp_path, experiment("a", "openai", instance_type="g5.xlarge"),
                                      "pricing: custom_pricing.yml\n"))
    assert config.pricing is None
    [warning] = config.warnings
    assert "'custom_pricing.yml' was not found" in warning and "packaged price table" in warning
    assert check_prices(config)["a"].hourly == 1.006


def test_a_pricing_file_that_vanishes_after_loading_is_an_error(tmp_path: Path) -> None:
    path = write_config(tmp_path, experiment("a", "openai", instance_type="g5.xlarge"),
                        "pricing: mine.yml\n")
    (tmp_path / "mine.yml").write_text("pricing:\n  instance_based: {g5.xlarge: 2.0}\n")
    config = load_config(path)
    assert config.warnings == [] and check_prices(config)["a"].hourly == 2.0
    (tmp_path / "mine.yml").unlink()
    with pytest.raises(ConfigError, match="not found"):
        load_price_table(config)


def test_fmbench_older_inline_pricing_is_instance_prices(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, experiment("a", "openai", instance_type="my.box"),
                                      "pricing:\n  my.box: 3.25\n  ml.g5.2xlarge: 1.515\n"))
    assert check_prices(config)["a"].hourly == 3.25


def test_unknown_instance_price_names_the_key_and_the_fix(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, experiment("a", "openai", instance_type="g9.mega")))
    with pytest.raises(ConfigError) as info:
        check_prices(config)
    message = info.value.render()
    assert "no price for instance type 'g9.mega'" in message
    assert info.value.key == "experiments[0] (a).instance_type"
    assert "price_per_hour" in message and "pricing:" in message and "instance_based" in message


def test_sagemaker_accepts_the_type_without_ml_prefix(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, experiment("a", "sagemaker", instance_type="g5.2xlarge")))
    assert check_prices(config)["a"].hourly == 1.515  # ml.g5.2xlarge, not EC2's g5.2xlarge


def test_bedrock_token_prices_geo_prefix_and_provisioned(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, "".join([
        experiment("haiku", "bedrock", model_id="anthropic.claude-3-haiku-20240307-v1:0"),
        # FMBench puts the model id in instance_type too
        experiment("eu", "bedrock", instance_type="eu.anthropic.claude-3-haiku-20240307-v1:0"),
        experiment("pt", "bedrock", instance_type="anthropic.claude-v3-sonnet-pt-nc"),
    ])))
    prices = check_prices(config)
    assert (prices["haiku"].kind, prices["haiku"].input_per_1k, prices["haiku"].output_per_1k) == (
        "token", 0.00025, 0.00125)
    assert prices["eu"].input_per_1k == 0.00025
    assert (prices["pt"].kind, prices["pt"].hourly) == ("instance", 88.0)


def test_unknown_bedrock_model_is_an_error(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, experiment("x", "bedrock", model_id="acme.unknown-v9")))
    with pytest.raises(ConfigError, match="no price for Bedrock model 'acme.unknown-v9'"):
        check_prices(config)


def test_local_or_byo_without_instance_or_price_is_unpriced(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, experiment("a", "openai")))
    assert check_prices(config) == {"a": None}


# -- the AWS Pricing API, through botocore's Stubber ------------------------------------------------

def pricing_client() -> Any:
    session = botocore.session.get_session()
    return session.create_client("pricing", region_name="us-east-1", aws_access_key_id="test",
                                 aws_secret_access_key="test")


def product(attributes: dict[str, str], usd: str, unit: str = "Hrs", description: str = "") -> str:
    return json.dumps({
        "product": {"attributes": attributes},
        "terms": {"OnDemand": {"T1": {"priceDimensions": {"D1": {
            "unit": unit, "description": description, "pricePerUnit": {"USD": usd}}}}}},
    })


def term(field: str, value: str) -> dict[str, str]:
    return {"Type": "TERM_MATCH", "Field": field, "Value": value}


def test_refresh_sagemaker_ec2_and_bedrock_prices() -> None:
    client = pricing_client()
    with Stubber(client) as stub:
        stub.add_response("get_products", {"PriceList": [
            product({"instanceName": "ml.g5.xlarge", "component": "Training"}, "1.41"),
            product({"instanceName": "ml.g5.xlarge", "component": "Hosting"}, "1.4084"),
        ], "NextToken": "page2"}, {"ServiceCode": "AmazonSageMaker", "MaxResults": 100,
                                   "Filters": [term("instanceName", "ml.g5.xlarge"), term("regionCode", "us-east-1")]})
        stub.add_response("get_products", {"PriceList": []}, {
            "ServiceCode": "AmazonSageMaker", "MaxResults": 100, "NextToken": "page2",
            "Filters": [term("instanceName", "ml.g5.xlarge"), term("regionCode", "us-east-1")]})
        stub.add_response("get_products", {"PriceList": [product({"instanceType": "g5.xlarge"}, "1.006")]}, {
            "ServiceCode": "AmazonEC2", "MaxResults": 100, "Filters": [
                term("instanceType", "g5.xlarge"), term("regionCode", "us-east-1"),
                term("operatingSystem", "Linux"), term("tenancy", "Shared"),
                term("preInstalledSw", "NA"), term("capacitystatus", "Used")]})
        stub.add_response("get_products", {"PriceList": [
            product({"model": "Claude 3 Haiku", "usagetype": "USE1-Claude3Haiku-input-tokens"}, "0.00025",
                    "1K tokens"),
            product({"model": "Claude 3 Haiku", "usagetype": "USE1-Claude3Haiku-output-tokens"}, "1.25",
                    "1M tokens", "per million output tokens"),
            product({"model": "Claude 3 Haiku", "usagetype": "USE1-Claude3Haiku-batch-input-tokens"}, "9"),
        ]}, {"ServiceCode": "AmazonBedrock", "MaxResults": 100,
             "Filters": [term("model", "Claude 3 Haiku"), term("regionCode", "us-east-1")]})
        stub.add_response("get_products", {"PriceList": []}, {
            "ServiceCode": "AmazonBedrockFoundationModels", "MaxResults": 100,
            "Filters": [term("model", "Claude 3 Haiku"), term("regionCode", "us-east-1")]})
        table = refresh_prices(["ml.g5.xlarge", "g5.xlarge"],
                               {"anthropic.claude-3-haiku-20240307-v1:0": "Claude 3 Haiku"}, client=client)
        stub.assert_no_pending_responses()
    assert table.instance_based == {"ml.g5.xlarge": 1.4084, "g5.xlarge": 1.006}
    rates = table.token_based["anthropic.claude-3-haiku-20240307-v1:0"]
    assert rates.input_per_1k == pytest.approx(0.00025) and rates.output_per_1k == pytest.approx(0.00125)
    assert table.as_of and "AWS Pricing API" in table.sources[0]
    # the refreshed table is FMBench's format and loads back
    again = PriceTable.from_data(yaml.safe_load(yaml.safe_dump(table.to_data())), "again")
    assert again.instance_based == table.instance_based


def test_refresh_reports_what_it_cannot_price() -> None:
    client = pricing_client()
    lines: list[str] = []
    with Stubber(client) as stub:
        stub.add_response("get_products", {"PriceList": []})
        table = refresh_prices(["g9.mega"], client=client, log=lines.append)
    assert table.instance_based == {}
    assert lines == ["no on-demand price found for instance type g9.mega in us-east-1"]


def test_refresh_command_writes_a_pricing_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    client = pricing_client()
    stub = Stubber(client)
    stub.add_response("get_products", {"PriceList": [product({"instanceType": "g5.xlarge"}, "1.1")]})
    stub.activate()
    import boto3

    monkeypatch.setattr(boto3, "client", lambda *args, **kwargs: client)
    config = write_config(tmp_path, experiment("a", "openai", instance_type="g5.xlarge"))
    out = tmp_path / "fresh.yml"
    assert main(["refresh", "--config", str(config), "--out", str(out)]) == 0
    data = yaml.safe_load(out.read_text())
    assert data["pricing"]["instance_based"] == {"g5.xlarge": 1.1}
    assert data["prices_as_of"]


def test_fetch_instance_price_ignores_non_hourly_dimensions() -> None:
    client = pricing_client()
    with Stubber(client) as stub:
        stub.add_response("get_products", {"PriceList": [
            product({"instanceType": "g5.xlarge"}, "0.0", "Hrs"),
            product({"instanceType": "g5.xlarge"}, "5.0", "Quantity"),
            product({"instanceType": "g5.xlarge"}, "1.2", "Hrs")]})
        assert fetch_instance_price(client, "g5.xlarge", "us-east-1") == 1.2
