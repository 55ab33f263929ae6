"""The config keys FMBench knows, by section.

FMBench never validated its configs: its notebooks and scripts read whatever keys they need,
and its users' files carry keys from two years of releases. This table is what FMBench 1.0.52,
2.0.26 and 2.1.6 read or ship, collected from

- every benchmark config in those wheels (``fmbench/configs/**.yml``), and
- FMBench's own code in those wheels (``config['section']['key']`` and ``.get('key')`` reads
  in its ``*.py`` modules and notebooks, predictor ``inference_spec.get(...)`` reads).

A key listed here is accepted by the loader; one that pytest-fmbench does not act on is kept
(``Config.ignored_fmbench_keys``) and listed in the terminal summary and the report, never
silently dropped. A key known to neither FMBench nor us is a usage error with "did you mean".
``benchmarks/fmbench_corpus.py --keys`` prints the keys found in the corpora that are missing
here, so the table can be refreshed when FMBench ships a new release.
"""

from __future__ import annotations

# Sections FMBench reads as a whole and pytest-fmbench has no use for (its S3 layout, its
# notebook sequence, its LLM-as-judge evaluation): accepted whole, content unchecked.
OPAQUE_SECTIONS: frozenset[str] = frozenset(
    {"dir_paths", "s3_read_data", "run_steps", "model_evaluations"}
)

# Section path → keys FMBench knows there. "experiments" is one experiment entry;
# "datasets.filters" one filter entry.
FMBENCH_KEYS: dict[str, frozenset[str]] = {
    "": frozenset(
        {"general", "aws", "dir_paths", "s3_read_data", "run_steps", "datasets", "metrics",
         "pricing", "inference_parameters", "experiments", "report", "model_evaluations"}
    ),
    "general": frozenset({"name", "model_name"}),
    "aws": frozenset(
        {"region", "sagemaker_execution_role", "bucket", "s3_and_or_local_file_system",
         "local_file_system_path"}
    ),
    "datasets": frozenset(
        {"prompt_template_keys", "filters", "min_iters_per_combination",
         "max_iters_per_combination", "ground_truth_col_key", "question_col_key", "image_col",
         "ds_N", "source_data_prefix", "prompt_template_dir"}
    ),
    "datasets.filters": frozenset(
        {"language", "min_length_in_tokens", "max_length_in_tokens", "payload_file"}
    ),
    "metrics": frozenset({"dataset_of_interest", "weights"}),
    "report": frozenset(
        {"latency_budget", "cost_per_10k_txn_budget", "error_rate_budget", "accuracy_budget",
         "accuracy_error_rate_budget", "cosine_similarity_budget", "per_inference_request_file",
         "all_metrics_file", "txn_count_for_showing_cost", "v_shift_w_single_instance",
         "v_shift_w_gt_one_instance", "latency_vs_token_len_chart", "title",
         "generate_html_report", "latency_latitude"}
    ),
    "experiments": frozenset(
        {"name", "model_id", "model_version", "model_name", "ep_name", "instance_type",
         "instance_count", "image_uri", "deploy", "deployment_script", "inference_script",
         "inference_spec", "payload_files", "concurrency_levels", "accept_eula", "env",
         "serving.properties", "region", "ec2", "eks", "bucket", "prefix", "model_data",
         "model_s3_path", "hf_model_id", "hf_tokenizer_model_id", "additional_metadata",
         "download_from_hf_place_in_s3", "sagemaker_execution_role", "model_id_wo_repo",
         "model_id_wo_repo_split", "production_variant_name",
         # older releases and FMBench's user guide
         "model_copies", "sagemaker_role", "deploy_docker", "download_model", "tokenizer_dir",
         "model_loading_timeout", "ecr_repo", "agent", "additional_instance_types",
         "instance_name"}
    ),
    # Open-ended in FMBench (the whole mapping is handed to the predictor, custom ones
    # included); listed so the report can say which of them are FMBench's.
    "experiments.inference_spec": frozenset(
        {"parameter_set", "parameters", "split_input_and_parameters", "start_token",
         "stop_token", "stream", "container_type", "headers", "auth", "timeout", "model_id",
         "inference_url_format", "shm_size", "model_copies", "model_loading_timeout",
         "tp_degree", "batch_size", "backend", "container_params", "cli_params", "context_len",
         "max_new_tokens", "n_positions", "neuron_config", "vllm_model_params"}
    ),
}


def fmbench_knows(section: str, key: str) -> bool:
    """Whether FMBench reads or ships ``key`` in ``section`` (a key of ``FMBENCH_KEYS``)."""
    return key in FMBENCH_KEYS.get(section, frozenset())
