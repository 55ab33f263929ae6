"""An FMBench user's inputs, read where FMBench reads them.

FMBench takes source data, the prompt template and the tokenizer from its read bucket
(``s3_read_data.read_bucket``) or, in its local mode, from a directory laid out the same way
(``fmbench-read`` under the temporary directory by default)::

    <read dir or bucket>/
        source_data/2wikimqa_e.jsonl ...      s3_read_data.source_data_prefix / source_data_files
        prompt_template/prompt_template_llama3.txt   prompt_template_dir / prompt_template_file
        llama3_tokenizer/tokenizer.json ...   tokenizer_prefix
        configs/pricing.yml                   configs_prefix / config_files

The read dir (``--fmbench-read-dir``, or FMBench's own local-mode keys) wins; without one the
bucket is read through boto3 into a cache directory; without either, a usage error says where
it looked and how to provide the files. Nothing here imports pytest; boto3 and ``datasets``
are imported only when used.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pytest_fmbench.config.model import Config
from pytest_fmbench.config.read_data import S3ReadData
from pytest_fmbench.errors import ConfigError

FMBENCH_LOCAL_READ = "fmbench-read"
HF_PREFIX = "hf:"
# FMBench reads this many records of a Hugging Face dataset unless datasets.ds_N says otherwise.
DEFAULT_HF_RECORDS = 100
SECTION = "s3_read_data"
_READ_DIR_HINT = ("pass --fmbench-read-dir DIR (FMBench's local layout: source_data/, "
                  "prompt_template/, <tokenizer_prefix>/, configs/)")


@dataclass(frozen=True)
class FmbenchInputs:
    """Local paths of what the config's ``s3_read_data`` names."""

    origin: str
    source_files: list[Path]
    prompt_template: Path | None
    tokenizer_dir: Path | None


class ReadSource(Protocol):
    """A read dir or a read bucket: object keys in, local paths out (None: not there)."""

    origin: str

    def file(self, key: str) -> Path | None: ...

    def directory(self, prefix: str) -> Path | None: ...

    def where(self, key: str) -> str: ...


def uses_read_data(config: Config) -> bool:
    """FMBench's read section applies unless the config names our own data sources."""
    section = config.s3_read_data
    if section is None or not section.source_data_files:
        return False
    datasets = config.datasets
    return not datasets.source_files and "synthetic" not in datasets.model_fields_set


def configured_read_dir(section: S3ReadData | None) -> Path | None:
    """FMBench's local mode, as its configs spell it (``s3_or_local_file_system: local``)."""
    if section is None or not section.local_mode:
        return None
    if section.local_file_system_path:
        return Path(section.local_file_system_path).expanduser()
    return Path(tempfile.gettempdir()) / FMBENCH_LOCAL_READ


# -- sources -----------------------------------------------------------------------------

class LocalReadDir:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.origin = f"read dir {root}"

    def file(self, key: str) -> Path | None:
        path = self.root / key
        return path if path.is_file() else None

    def directory(self, prefix: str) -> Path | None:
        path = self.root / prefix
        return path if path.is_dir() and any(path.iterdir()) else None

    def where(self, key: str) -> str:
        return str(self.root / key)


class S3ReadBucket:
    """The read bucket, each object downloaded once into ``cache_dir/<bucket>/<key>``."""

    def __init__(self, bucket: str, cache_dir: Path, client: Callable[[], Any]) -> None:
        self.bucket = bucket
        self.cache_dir = cache_dir / bucket
        self.origin = f"s3://{bucket}"
        self._client_factory = client
        self._client: Any = None

    def _s3(self) -> Any:
        if self._client is None:
            client = self._client_factory()
            # A missing bucket answers 404 to every object too: say which it is, once.
            try:
                client.head_bucket(Bucket=self.bucket)
            except Exception as exc:
                if not _not_found(exc):
                    raise
                raise ConfigError(
                    f"the FMBench read bucket '{self.bucket}' does not exist",
                    key=f"{SECTION}.read_bucket",
                    fix=f"check read_bucket (--fmbench-set read_bucket=NAME) and the region, "
                    f"check AWS credentials, or {_READ_DIR_HINT}") from None
            self._client = client
        return self._client

    def where(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def file(self, key: str) -> Path | None:
        with self._errors(key):
            s3 = self._s3()
            try:
                head = s3.head_object(Bucket=self.bucket, Key=key)
            except Exception as exc:
                if _not_found(exc):
                    return None
                raise
            return self._download(key, str(head.get("ETag", "")))

    def directory(self, prefix: str) -> Path | None:
        prefix = prefix.strip("/") + "/"
        with self._errors(prefix):
            paginator = self._s3().get_paginator("list_objects_v2")
            objects = [item for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix)
                       for item in page.get("Contents", ())
                       if not str(item["Key"]).endswith("/")]
            for item in objects:
                self._download(str(item["Key"]), str(item.get("ETag", "")))
        return self.cache_dir / prefix if objects else None

    def _download(self, key: str, etag: str) -> Path:
        target = self.cache_dir / key
        marker = target.with_name(target.name + ".etag")
        # Reused while the object is unchanged: large datasets are not fetched every run.
        if target.is_file() and marker.is_file() and marker.read_text() == etag:
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        # Parallel xdist workers share the cache: write aside, then rename into place.
        fd, partial = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        os.close(fd)
        try:
            self._s3().download_file(self.bucket, key, partial)
            os.replace(partial, target)
        finally:
            if os.path.exists(partial):
                os.unlink(partial)
        marker.write_text(etag)
        return target

    @contextlib.contextmanager
    def _errors(self, key: str) -> Iterator[None]:
        """Credentials, network and permission problems as one usage error."""
        try:
            yield
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - botocore raises many kinds; all are the user's to fix
            raise ConfigError(
                f"cannot read {self.where(key)}: {type(exc).__name__}: {exc}",
                key=f"{SECTION}.read_bucket",
                fix=f"check AWS credentials, region and s3:GetObject/ListBucket on "
                f"'{self.bucket}', or {_READ_DIR_HINT}",
            ) from None


def _not_found(exc: Exception) -> bool:
    response = getattr(exc, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    return code in ("404", "NoSuchKey", "NotFound")


def read_source(config: Config, *, read_dir: Path | None, cache_dir: Path,
                s3_client: Callable[[], Any]) -> ReadSource:
    """The read dir when one is given (or the config's local mode), else the read bucket."""
    section = config.s3_read_data or S3ReadData()
    local = read_dir or configured_read_dir(section)
    if local is not None:
        if not local.is_dir():
            raise ConfigError(f"FMBench read dir '{local}' does not exist",
                              key=f"{SECTION} (--fmbench-read-dir)",
                              fix=f"create it with FMBench's layout, or {_READ_DIR_HINT}")
        return LocalReadDir(local)
    if not section.read_bucket:
        raise ConfigError(
            "the config reads FMBench source data but names no read bucket and no read dir",
            file=_source(config), key=f"{SECTION}.read_bucket",
            fix=f"{_READ_DIR_HINT}, or set read_bucket ({{read_bucket}}: --fmbench-set "
            "read_bucket=NAME), or set datasets.synthetic to use generated prompts",
        )
    return S3ReadBucket(section.read_bucket, cache_dir, s3_client)


# -- resolution --------------------------------------------------------------------------

HfLoader = Callable[[str, int], list[dict[str, Any]]]


def resolve_inputs(config: Config, source: ReadSource, *, cache_dir: Path,
                   hf_loader: HfLoader | None = None) -> FmbenchInputs:
    """Local paths of the config's source data, prompt template and tokenizer.

    A missing data file or template is a usage error naming both places; a missing
    tokenizer is not (FMBench falls back to hf_tokenizer_model_id or a word estimate too).
    """
    section = config.s3_read_data or S3ReadData()
    files = [_source_file(config, section, source, name, cache_dir, hf_loader or load_hf_dataset)
             for name in section.source_data_files]
    template = None
    if section.prompt_template_file:
        key = f"{section.prompt_template_dir}/{section.prompt_template_file}"
        template = source.file(key)
        if template is None:
            raise _missing(config, source, key, f"{SECTION}.prompt_template_file",
                           "FMBench ships its templates in the fmbench wheel's "
                           "fmbench/prompt_template/ folder; copy the one you use there")
    tokenizer = source.directory(section.tokenizer_prefix) if section.tokenizer_prefix else None
    return FmbenchInputs(source.origin, files, template, tokenizer)


def _source_file(config: Config, section: S3ReadData, source: ReadSource, name: str,
                 cache_dir: Path, hf_loader: HfLoader) -> Path:
    key = f"{section.source_data_prefix}/{name}"
    if name.startswith(HF_PREFIX):
        # FMBench's data step stores a Hugging Face dataset next to the others: as
        # "hf:<id>.jsonl" in the bucket, as "<id>.jsonl" in its local read dir.
        for stored_name in (name, name[len(HF_PREFIX):]):
            stored = source.file(f"{section.source_data_prefix}/{stored_name}.jsonl")
            if stored is not None:
                return stored
        return _hf_file(config, name, cache_dir, hf_loader)
    found = source.file(key)
    if found is None:
        raise _missing(config, source, key, f"{SECTION}.source_data_files",
                       "LongBench-style JSON lines (input, context, length, language, ...)")
    return found


def _missing(config: Config, source: ReadSource, key: str, config_key: str,
             what: str) -> ConfigError:
    other = ("a read bucket is used when no read dir is given" if isinstance(source, LocalReadDir)
             else "a read dir is used instead when given")
    return ConfigError(
        f"'{key}' not found in the FMBench {source.origin} (looked at {source.where(key)}; "
        f"{other})",
        file=_source(config), key=config_key,
        fix=f"put the file there ({what}), or {_READ_DIR_HINT}",
    )


def _source(config: Config) -> str | None:
    return str(config.source_path) if config.source_path else None


# -- Hugging Face datasets ------------------------------------------------------------------

def hf_dataset_parts(name: str) -> tuple[str, str, str]:
    """FMBench's ``hf:<org>/<dataset>[/<subset>[/<split>]]`` → (id, subset, split)."""
    parts = name[len(HF_PREFIX):].strip("/").split("/")
    if len(parts) < 2 or not all(parts[:2]):
        raise ConfigError(f"'{name}' is not a Hugging Face dataset id",
                          key=f"{SECTION}.source_data_files",
                          fix="write hf:<org>/<dataset>[/<subset>[/<split>]]")
    subset = parts[2] if len(parts) > 2 and parts[2] else "default"
    split = parts[3] if len(parts) > 3 and parts[3] else "train"
    return "/".join(parts[:2]), subset, split


def load_hf_dataset(name: str, records: int) -> list[dict[str, Any]]:
    """The first ``records`` rows of a hub dataset (streamed), through ``datasets``."""
    dataset_id, subset, split = hf_dataset_parts(name)
    try:
        import datasets
    except ImportError:
        raise ConfigError(f"'{name}' needs the 'datasets' library, which is not installed",
                          key=f"{SECTION}.source_data_files",
                          fix="pip install datasets, or store the rows as JSON lines under "
                          "source_data/ in the read dir") from None
    try:
        stream = datasets.load_dataset(dataset_id, name=subset, split=split, streaming=True,
                                       token=os.environ.get("HF_TOKEN") or None)
        rows: list[dict[str, Any]] = []
        for row in stream:
            if len(rows) >= records:
                break
            rows.append(dict(row))
        return rows
    except Exception as exc:  # noqa: BLE001 - offline, gated, missing subset: all the user's to fix
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"cannot load Hugging Face dataset '{dataset_id}' (subset '{subset}', split "
            f"'{split}'): {reason}",
            key=f"{SECTION}.source_data_files",
            fix="check the network and the id (hf:<org>/<dataset>/<subset>/<split>), set "
            "HF_TOKEN for gated datasets, or store the rows as "
            f"source_data/{name}.jsonl in the read dir",
        ) from None


def _hf_file(config: Config, name: str, cache_dir: Path, loader: HfLoader) -> Path:
    # datasets.ds_N is FMBench's key (accepted once the config model knows it).
    records = int(getattr(config.datasets, "ds_N", None) or DEFAULT_HF_RECORDS)
    rows = loader(name, records)
    if not rows:
        raise ConfigError(f"Hugging Face dataset '{name}' returned no rows",
                          key=f"{SECTION}.source_data_files", fix="check the subset and split")
    target = cache_dir / "hf" / (name[len(HF_PREFIX):].replace("/", "__") + ".jsonl")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("".join(json.dumps(row, default=str) + "\n" for row in rows),
                      encoding="utf-8")
    return target


# -- pricing ----------------------------------------------------------------------------------

def use_read_dir_pricing(config: Config, read_dir: Path | None) -> Path | None:
    """Point ``pricing: <file>`` at the read dir's ``configs/<file>`` when it is there.

    FMBench downloads its pricing file from the read bucket's configs prefix; at startup only
    the local read dir is looked at (no network before the run). A file next to the config
    wins, as before. Returns the file used, or None.
    """
    pricing = config.pricing if config.pricing is not None else config.missing_pricing_file
    local = read_dir or configured_read_dir(config.s3_read_data)
    if not isinstance(pricing, str) or local is None or "://" in pricing:
        return None
    folder = config.source_path.parent if config.source_path else Path.cwd()
    if (folder / pricing).is_file():
        return None
    section = config.s3_read_data or S3ReadData()
    candidate = local / section.configs_prefix / pricing
    if not candidate.is_file():
        return None
    config.use_pricing_file(str(candidate.resolve()))
    return candidate


def pricing_may_be_in_bucket(config: Config, read_dir: Path | None) -> bool:
    """A custom pricing file missing next to the config may still be in the read bucket's
    configs/ (FMBench downloads it from there); looked up before the first deploy."""
    section = config.s3_read_data
    return (config.missing_pricing_file is not None and section is not None
            and bool(section.read_bucket) and uses_read_data(config)
            and read_dir is None and configured_read_dir(section) is None)


def use_bucket_pricing(config: Config, bucket: ReadSource) -> Path | None:
    """Point ``pricing:`` at the read bucket's ``configs/<file>`` (downloaded) when it is there."""
    name = config.missing_pricing_file
    if name is None:
        return None
    section = config.s3_read_data or S3ReadData()
    found = bucket.file(f"{section.configs_prefix}/{name}")
    if found is not None:
        config.use_pricing_file(str(found))
    return found
