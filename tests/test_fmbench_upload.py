"""Unit tests of pytest_fmbench.report.fmbench_upload against moto's S3 (and STS)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import boto3
import pytest

from pytest_fmbench.config.model import Config
from pytest_fmbench.errors import ConfigError
from pytest_fmbench.report.fmbench_upload import (
    UploadError,
    check_upload,
    metrics_prefix,
    role_name,
    upload_results,
)

WHEN = dt.datetime(2025, 1, 31, 14, 5, tzinfo=dt.UTC)


def config(bucket: str | None = "sagemaker-fmbench-write-us-east-1-123456789012",
           role: str | None = "arn:aws:iam::123456789012:role/fmbench-role") -> Config:
    return Config.model_validate({
        "general": {"name": "llama3-8b-g5"},
        "aws": {"region": "us-east-1", "bucket": bucket, "sagemaker_execution_role": role},
        "datasets": {"filters": [{"payload_file": "p.jsonl"}]},
        "experiments": [{"name": "e", "backend": "openai", "payload_files": ["p.jsonl"],
                         "concurrency_levels": [1]}],
    })


def test_fmbench_names_and_layout() -> None:
    assert role_name("arn:aws:iam::123456789012:role/fmbench-role") == "fmbench-role"
    assert role_name("arn:aws:iam::123456789012:role/path/to/r") == "r"
    assert role_name("arn:aws:sts::123456789012:assumed-role/SSMRole/i-0c5bba16a8b3dac51") == "SSMRole"
    assert metrics_prefix(config(), "fmbench-role", WHEN) == (
        "llama3-8b-g5-fmbench-role/data/metrics/yyyy=2025/mm=01/dd=31/hh=14/mm=05")


def test_upload_needs_a_write_bucket_at_startup() -> None:
    with pytest.raises(ConfigError) as error:
        check_upload(config(bucket=None))
    assert "aws.bucket" in error.value.render() and "write_bucket" in error.value.render()




def results(tmp_path: Path) -> Path:
    for name in ("report.md", "all_metrics.csv", "per_inference_request_results.csv",
                 "plots/latency.png", "payloads/payload_en_1-500.jsonl",
                 "fmbench-read/bucket/source_data/x.jsonl"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(name)
    return tmp_path


def test_results_land_under_fmbench_metrics_prefix(s3: Any, tmp_path: Path) -> None:
    cfg = config()
    s3.create_bucket(Bucket=str(cfg.aws.bucket))
    done = upload_results(results(tmp_path), cfg, client=boto3.client, when=WHEN)
    prefix = "llama3-8b-g5-fmbench-role/data/metrics/yyyy=2025/mm=01/dd=31/hh=14/mm=05"
    assert done.uri == f"s3://{cfg.aws.bucket}/{prefix}/"
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=cfg.aws.bucket)["Contents"])
    assert keys == sorted([f"{prefix}/all_metrics.csv", f"{prefix}/per_inference_request_results.csv",
                           f"{prefix}/plots/latency.png", f"{prefix}/report.md",
                           "llama3-8b-g5-fmbench-role/data/metrics_path.txt"])
    body = s3.get_object(Bucket=cfg.aws.bucket, Key="llama3-8b-g5-fmbench-role/data/metrics_path.txt")
    assert body["Body"].read().decode() == prefix
    report = s3.get_object(Bucket=cfg.aws.bucket, Key=f"{prefix}/report.md")
    assert report["ContentType"] == "text/markdown"


def test_without_a_role_the_caller_identity_names_the_prefix(s3: Any, tmp_path: Path) -> None:
    cfg = config(role=None)
    s3.create_bucket(Bucket=str(cfg.aws.bucket))
    done = upload_results(results(tmp_path), cfg, client=boto3.client, when=WHEN)
    caller = boto3.client("sts").get_caller_identity()["Arn"]
    assert done.prefix.startswith(f"llama3-8b-g5-{role_name(caller)}/data/metrics/")


def test_a_missing_bucket_is_one_clear_error(s3: Any, tmp_path: Path) -> None:
    with pytest.raises(UploadError) as error:
        upload_results(results(tmp_path), config(), client=boto3.client, when=WHEN)
    text = error.value.render()
    assert "NoSuchBucket" in text and str(tmp_path) in text
