"""FMBench's ``s3_read_data`` section: where its users keep source data, prompt templates,
tokenizers and pricing (a read bucket on S3, or a directory in FMBench's local mode).

FMBench never validated this section and its configs carry keys for its notebooks too
(``scripts_prefix``, ``script_files``, ...), so unknown keys are kept, not refused. What the
plugin reads from it is resolved in ``pytest_fmbench.data.fmbench_read``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

# FMBench's defaults (its configs always spell them out; these keep a partial section usable).
DEFAULT_SOURCE_DATA_PREFIX = "source_data"
DEFAULT_PROMPT_TEMPLATE_DIR = "prompt_template"
DEFAULT_TOKENIZER_PREFIX = "tokenizer"
DEFAULT_CONFIGS_PREFIX = "configs"


class S3ReadData(BaseModel):
    model_config = ConfigDict(extra="allow")

    read_bucket: str | None = None
    source_data_prefix: str = DEFAULT_SOURCE_DATA_PREFIX
    source_data_files: list[str] = Field(default_factory=list)
    prompt_template_dir: str = DEFAULT_PROMPT_TEMPLATE_DIR
    prompt_template_file: str | None = None
    tokenizer_prefix: str | None = None
    configs_prefix: str = DEFAULT_CONFIGS_PREFIX
    config_files: list[str] = Field(default_factory=list)
    # FMBench's local mode: "local" reads from local_file_system_path instead of the bucket.
    s3_or_local_file_system: str | None = None
    local_file_system_path: str | None = None

    @field_validator("source_data_files", "config_files", mode="before")
    @classmethod
    def _blank_list(cls, value: Any) -> Any:
        # FMBench configs leave lists empty as a bare key (YAML null).
        return [] if value is None else [str(v) for v in value] if isinstance(value, list) else value

    @field_validator("source_data_prefix", "prompt_template_dir", "configs_prefix", mode="before")
    @classmethod
    def _blank_prefix(cls, value: Any, info: ValidationInfo) -> Any:
        default = cls.model_fields[str(info.field_name)].default
        return str(value).strip("/") if value else default

    @property
    def local_mode(self) -> bool:
        return (self.s3_or_local_file_system or "").strip().lower() == "local"
