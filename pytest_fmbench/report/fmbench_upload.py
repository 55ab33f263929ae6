"""Results where FMBench users look for them: the write bucket, in FMBench's layout.

FMBench writes each run's metrics and report under::

    s3://<aws.bucket>/<general.name>-<role name>/data/metrics/yyyy=2025/mm=01/dd=31/hh=14/mm=05/
        report.md, all_metrics.csv, per_inference_request_results.csv, ...

and the latest such prefix into ``<general.name>-<role name>/data/metrics_path.txt``. With
``--fmbench-upload`` the results directory (whose report files already carry FMBench's names)
is uploaded there after the report is written. boto3 is imported only when uploading.
"""

from __future__ import annotations

import datetime as dt
import mimetypes
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_fmbench.config.model import Config
from pytest_fmbench.errors import ConfigError, FmbenchError

# FMBench's dir_paths.data_prefix; every config it ships keeps this value.
DATA_PREFIX = "data"
METRICS_PATH_FILE = "metrics_path.txt"
# Not results: the read-bucket cache and payload files, which FMBench keeps elsewhere.
SKIPPED_DIRS = frozenset({"fmbench-read", "payloads"})


class UploadError(FmbenchError):
    """The results could not be uploaded (the run's results are still on disk)."""


@dataclass(frozen=True)
class Upload:
    bucket: str
    prefix: str
    files: list[str]

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}/"


def role_name(role_arn: str) -> str:
    """FMBench's ``ROLE_NAME``: the last path segment of the role (or assumed role) ARN."""
    if ":assumed-role/" in role_arn:
        return role_arn.split("/")[-2]
    return role_arn.rstrip("/").split("/")[-1]


def metrics_prefix(config: Config, role: str, when: dt.datetime) -> str:
    """``<name>-<role>/data/metrics/yyyy=…/mm=…/dd=…/hh=…/mm=…`` (FMBench's METRICS_DIR)."""
    stamp = when.strftime("yyyy=%Y/mm=%m/dd=%d/hh=%H/mm=%M")
    return f"{config.general.name}-{role}/{DATA_PREFIX}/metrics/{stamp}"


def check_upload(config: Config) -> None:
    """At startup, without network: the write bucket must be named."""
    if not config.aws.bucket:
        raise ConfigError(
            "--fmbench-upload needs the write bucket, and aws.bucket is not set",
            file=str(config.source_path) if config.source_path else None, key="aws.bucket",
            fix="set aws.bucket (FMBench's {write_bucket}: --fmbench-set write_bucket=NAME or "
            "FMBENCH_WRITE_BUCKET), or drop --fmbench-upload",
        )


def result_files(results_dir: Path) -> Iterator[Path]:
    for path in sorted(results_dir.rglob("*")):
        relative = path.relative_to(results_dir)
        if path.is_file() and not SKIPPED_DIRS.intersection(relative.parts[:-1]):
            yield path


def upload_results(results_dir: Path, config: Config, *, client: Callable[[str], Any],
                   when: dt.datetime | None = None) -> Upload:
    """Upload every result file under FMBench's metrics prefix; ``client(service)`` makes
    boto3 clients (``s3``, and ``sts`` when the config names no execution role)."""
    check_upload(config)
    bucket = str(config.aws.bucket)
    moment = when or dt.datetime.now(dt.UTC)
    try:
        role = role_name(config.aws.sagemaker_execution_role
                         or client("sts").get_caller_identity()["Arn"])
        prefix = metrics_prefix(config, role, moment)
        s3 = client("s3")
        uploaded = []
        for path in result_files(results_dir):
            key = f"{prefix}/{path.relative_to(results_dir).as_posix()}"
            kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            s3.upload_file(str(path), bucket, key, ExtraArgs={"ContentType": kind})
            uploaded.append(key)
        # FMBench's analysis steps find the latest run's prefix through this file.
        s3.put_object(Bucket=bucket, Key=f"{config.general.name}-{role}/{DATA_PREFIX}/{METRICS_PATH_FILE}",
                      Body=prefix.encode())
    except FmbenchError:
        raise
    except Exception as exc:  # noqa: BLE001 - credentials, permissions, network: all the user's to fix
        raise UploadError(
            f"uploading the results to s3://{bucket} failed: {type(exc).__name__}: {exc}",
            key="aws.bucket",
            fix=f"check the bucket name, credentials and s3:PutObject; the results stay in "
            f"{results_dir}",
        ) from None
    return Upload(bucket, prefix, uploaded)
