"""Unit tests of pytest_fmbench.cases: ids, order, markers."""

from __future__ import annotations

from typing import Any

import pytest

from pytest_fmbench.cases import (
    Case,
    all_markers,
    case_id,
    expand_cases,
    experiment_markers,
    marker_name,
    payload_stem,
)
from pytest_fmbench.config import Config


def make_config(experiments: list[dict[str, Any]], **top: Any) -> Config:
    payloads = sorted({p for e in experiments for p in e["payload_files"]})
    data = {
        "datasets": {"filters": [{"payload_file": p} for p in payloads]},
        "experiments": experiments,
        **top,
    }
    return Config.model_validate(data)


def exp(name: str, payloads: list[str], levels: list[int], **fields: Any) -> dict[str, Any]:
    return {"name": name, "payload_files": payloads, "concurrency_levels": levels,
            "backend": "local", **fields}


TWO = [
    exp("small", ["payload_en_1-500.jsonl", "payload_en_500-1000.jsonl"], [1, 2, 4]),
    exp("large", ["payload_en_1-500.jsonl"], [4, 1], instance_type="ml.g5.12xlarge",
        backend="sagemaker"),
]


def test_ids() -> None:
    ids = [c.id for c in expand_cases(make_config(TWO))]
    assert ids == [
        "small-payload_en_1-500-c1", "small-payload_en_1-500-c2", "small-payload_en_1-500-c4",
        "small-payload_en_500-1000-c1", "small-payload_en_500-1000-c2",
        "small-payload_en_500-1000-c4",
        "large-payload_en_1-500-c4", "large-payload_en_1-500-c1",
    ]


def test_ids_unique_and_stable_across_calls() -> None:
    first = expand_cases(make_config(TWO))
    second = expand_cases(make_config(TWO))
    assert first == second
    assert [c.id for c in first] == [c.id for c in second]
    assert len({c.id for c in first}) == len(first)


def test_grouped_by_experiment_in_config_order() -> None:
    reversed_config = make_config(list(reversed(TWO)))
    cases = expand_cases(reversed_config)
    experiments = [c.experiment for c in cases]
    assert experiments == ["large"] * 2 + ["small"] * 6
    assert [c.experiment_index for c in cases] == [0] * 2 + [1] * 6
    # Each experiment's cases are contiguous.
    seen: list[str] = []
    for name in experiments:
        if not seen or seen[-1] != name:
            assert name not in seen
            seen.append(name)


def test_case_fields() -> None:
    case = expand_cases(make_config(TWO))[3]
    assert case == Case("small", "payload_en_500-1000.jsonl", 1, 0, case.markers)
    assert case.payload_name == "payload_en_500-1000"
    assert case.id == "small-payload_en_500-1000-c1"


def test_payload_stem_and_case_id() -> None:
    assert payload_stem("payload_en_1-500.jsonl") == "payload_en_1-500"
    assert payload_stem("plain") == "plain"
    assert payload_stem("x.json") == "x.json"
    assert case_id("my exp/v1", "p.jsonl", 8) == "my-exp-v1-p-c8"
    assert case_id("llama-3-8b-instruct-g5-djl-deepspeed0.12.6-cu121", "payload_en_1-500.jsonl",
                   2) == "llama-3-8b-instruct-g5-djl-deepspeed0.12.6-cu121-payload_en_1-500-c2"


def test_markers_backend_and_family() -> None:
    small, large = make_config(TWO).experiments
    config = make_config(TWO)
    assert experiment_markers(config, small) == ("local",)
    assert experiment_markers(config, large) == ("sagemaker", "g5")


def test_markers_from_config_and_experiment_sanitised() -> None:
    config = make_config(
        [exp("a", ["p.jsonl"], [1], instance_type="p4d.24xlarge",
             markers=["my team", "nightly", "9lives", "local"])],
        markers=["nightly", "cost-check"],
    )
    cases = expand_cases(config)
    assert cases[0].markers == ("local", "p4d", "nightly", "cost_check", "my_team", "m_9lives")
    assert all(c.markers == cases[0].markers for c in cases)


@pytest.mark.parametrize(("text", "name"), [
    ("p4d", "p4d"),
    ("my team", "my_team"),
    ("a.b-c", "a_b_c"),
    ("__x__", "x"),
    ("9lives", "m_9lives"),
    ("!!!", "m_"),
])
def test_marker_name(text: str, name: str) -> None:
    assert marker_name(text) == name
    assert name.isidentifier()


def test_inferred_backend_is_a_marker() -> None:
    config = make_config([
        {"name": "fm", "payload_files": ["p.jsonl"], "concurrency_levels": [1],
         "inference_script": "bedrock_predictor.py"},
    ])
    assert expand_cases(config)[0].markers == ("bedrock",)


def test_all_markers_sorted_and_unique() -> None:
    config = make_config(TWO, markers=["zeta", "alpha"])
    assert all_markers(config) == ["alpha", "g5", "local", "sagemaker", "zeta"]


def test_collision_between_experiment_names_is_an_error() -> None:
    config = make_config([exp("exp a", ["p.jsonl"], [1]), exp("exp-a", ["p.jsonl"], [1])])
    with pytest.raises(ValueError, match="case ids collide: exp-a-p-c1"):
        expand_cases(config)


def test_collision_between_payload_names_is_an_error() -> None:
    config = make_config([exp("e", ["p.jsonl", "p"], [1, 2])])
    with pytest.raises(ValueError, match="case ids collide: e-p-c1, e-p-c2"):
        expand_cases(config)
