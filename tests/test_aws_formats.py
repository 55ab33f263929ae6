"""Unit tests of the AWS request/response formats and error classes (no server involved)."""

from __future__ import annotations

import json
import re

import pytest
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    EventStreamError,
    ReadTimeoutError,
    ResponseStreamingError,
)

from pytest_fmbench.endpoints import aws
from pytest_fmbench.endpoints.base import InferenceRequest
from pytest_fmbench.endpoints.bedrock_formats import (
    Parameters,
    converse_inference_config,
    get_body_format,
    is_provisioned,
    model_family,
    normalize_parameters,
)
from pytest_fmbench.endpoints.sagemaker import resource_name
from pytest_fmbench.endpoints.sagemaker_formats import (
    Completion,
    FormatError,
    ServerStreamError,
    TgiFormat,
    format_names,
    get_format,
    guess_format,
    register_format,
)

FMBENCH_TGI = {"max_new_tokens": 100, "top_p": 0.92, "temperature": 0.1, "details": True,
               "stop": "<|eot_id|>"}


def feed_all(decoder, parts: list[bytes]) -> list[str]:
    pieces: list[str] = []
    for part in parts:
        pieces += decoder.feed(part)
    return pieces


# --- TGI --------------------------------------------------------------------------------

def test_tgi_body_carries_inputs_and_the_parameter_set_as_is() -> None:
    fmt = get_format("tgi")
    request = InferenceRequest("Why?", {**FMBENCH_TGI, "stream": False})
    assert fmt.body(request, stream=True) == {
        "inputs": "Why?", "parameters": FMBENCH_TGI, "stream": True}
    assert fmt.body(request, stream=False) == {"inputs": "Why?", "parameters": FMBENCH_TGI}


def test_tgi_reply_list_with_details_gives_server_token_count() -> None:
    reply = json.dumps([{"generated_text": "four words of text",
                         "details": {"finish_reason": "length", "generated_tokens": 7}}]).encode()
    completion = get_format("tgi").parse(reply)
    assert (completion.text, completion.completion_tokens) == ("four words of text", 7)
    assert get_format("tgi").parse(b'[{"generated_text": "x"}]').completion_tokens is None


def test_tgi_stream_lines_split_anywhere_across_payload_parts() -> None:
    lines = [
        b'data:{"token": {"id": 1, "text": "Hel", "special": false}, "generated_text": null, "details": null}\n\n',
        b'data:{"token": {"id": 2, "text": "lo", "special": false}, "generated_text": null, "details": null}\n\n',
        (b'data:{"token": {"id": 3, "text": "</s>", "special": true}, "generated_text": "Hello", '
         b'"details": {"finish_reason": "eos_token", "generated_tokens": 3}}\n\n'),
    ]
    stream = b"".join(lines)
    decoder = get_format("tgi").decoder()
    # Cut in odd places: mid-JSON, mid-prefix, between the two newlines.
    parts = [stream[:10], stream[10:57], stream[57:130], stream[130:131], stream[131:]]
    assert feed_all(decoder, parts) == ["Hel", "lo"]
    done = decoder.finish()
    assert (done.text, done.completion_tokens, done.finished) == ("Hello", 3, True)


def test_tgi_stream_error_event_and_garbage_are_told_apart() -> None:
    with pytest.raises(ServerStreamError, match="overloaded"):
        get_format("tgi").decoder().feed(b'data:{"error": "overloaded", "error_type": "generation"}\n')
    with pytest.raises(FormatError):
        get_format("tgi").decoder().feed(b"data:{not json\n")
    with pytest.raises(FormatError):
        get_format("tgi").parse(b"<html>502 Bad Gateway</html>")


# --- LMI / DJL --------------------------------------------------------------------------

def test_lmi_replies_an_object_or_a_list_and_streams_plain_json_lines() -> None:
    fmt = get_format("lmi")
    assert fmt.body(InferenceRequest("p", {"max_new_tokens": 5}), stream=True) == {
        "inputs": "p", "parameters": {"max_new_tokens": 5}, "stream": True}
    assert fmt.parse(b'{"generated_text": "ok"}').text == "ok"
    assert fmt.parse(b'[{"generated_text": "ok"}]').text == "ok"
    decoder = fmt.decoder()
    parts = [b'{"token": {"id": [1], "text": "a", "log_prob": -0.1}}\n{"token": {"id": [2], ',
             (b'"text": "b", "log_prob": -0.2}, "generated_text": "ab", "details": '
              b'{"generated_tokens": 2}}\n')]
    assert feed_all(decoder, parts) == ["a", "b"]
    assert decoder.finish().completion_tokens == 2


def test_lmi_older_outputs_stream() -> None:
    decoder = get_format("lmi").decoder()
    assert feed_all(decoder, [b'{"outputs": ["x"]}\n{"outputs": ["y"]}']) == ["x"]
    assert decoder.finish().text == "xy"  # the last line ends without a newline


# --- OpenAI-style messages ------------------------------------------------------------

def test_messages_body_translates_fmbench_parameters() -> None:
    body = get_format("messages").body(InferenceRequest("hi", FMBENCH_TGI), stream=True)
    assert body == {
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 100, "top_p": 0.92, "temperature": 0.1, "stop": "<|eot_id|>",
        "stream": True, "stream_options": {"include_usage": True},
    }
    assert "stream_options" not in get_format("messages").body(InferenceRequest("hi"), stream=False)


def test_messages_reply_and_stream_with_usage() -> None:
    fmt = get_format("messages")
    reply = {"choices": [{"message": {"content": "yes"}, "finish_reason": "stop"}],
             "usage": {"prompt_tokens": 9, "completion_tokens": 1}}
    completion = fmt.parse(json.dumps(reply).encode())
    assert (completion.text, completion.prompt_tokens, completion.completion_tokens) == ("yes", 9, 1)
    decoder = fmt.decoder()
    sse = (b'data: {"choices": [{"delta": {"role": "assistant"}}]}\n\n'
           b'data: {"choices": [{"delta": {"content": "y"}}]}\n\n'
           b'data: {"choices": [{"delta": {"content": "es"}, "finish_reason": "stop"}]}\n\n'
           b'data: {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 2}}\n\n'
           b"data: [DONE]\n\n")
    assert feed_all(decoder, [sse[:40], sse[40:]]) == ["y", "es"]
    done = decoder.finish()
    assert (done.text, done.prompt_tokens, done.completion_tokens, done.finished) == ("yes", 9, 2, True)


# --- choosing and extending formats ----------------------------------------------------

@pytest.mark.parametrize(("container_type", "image", "expected"), [
    (None, "763104351884.dkr.ecr.us-east-1.amazonaws.com/huggingface-pytorch-tgi-inference:2.4.0", "tgi"),
    (None, "763104351884.dkr.ecr.us-east-1.amazonaws.com/djl-inference:0.27.0-deepspeed0.12.6-cu121", "lmi"),
    (None, "vllm/vllm-openai:latest", "messages"),
    ("djl", None, "lmi"),
    ("vllm", "x/tgi", "messages"),
    ("messages", None, "messages"),
    (None, None, "tgi"),
])
def test_format_from_container_type_then_image(container_type, image, expected) -> None:
    assert guess_format(container_type, image) == expected


def test_a_registered_format_is_usable_by_name() -> None:
    class Upper(TgiFormat):
        name = "upper"

        def parse(self, data: bytes) -> Completion:
            return Completion(text=data.decode().upper())

    register_format("upper", Upper)
    try:
        assert "upper" in format_names()
        assert guess_format("upper", None) == "upper"
        assert get_format("upper").parse(b"abc").text == "ABC"
    finally:
        from pytest_fmbench.endpoints import sagemaker_formats

        sagemaker_formats._FORMATS.pop("upper")


# --- Bedrock ------------------------------------------------------------------------------

def test_fmbench_bedrock_parameters_are_normalized_and_fmbench_keys_dropped() -> None:
    p = normalize_parameters({"temperature": 0.1, "max_tokens": 100, "top_p": 0.92,
                              "caching": False, "use_boto3": True, "stop": "<|eot_id|>",
                              "presence_penalty": 1})
    assert (p.max_tokens, p.temperature, p.top_p, p.stop) == (100, 0.1, 0.92, ["<|eot_id|>"])
    assert p.unknown == ["presence_penalty"]
    assert converse_inference_config(p) == {
        "maxTokens": 100, "temperature": 0.1, "topP": 0.92, "stopSequences": ["<|eot_id|>"]}
    assert normalize_parameters({"max_new_tokens": 7}).max_tokens == 7
    assert converse_inference_config(Parameters()) == {}


@pytest.mark.parametrize(("model_id", "family"), [
    ("anthropic.claude-3-haiku-20240307-v1:0", "anthropic"),
    ("us.anthropic.claude-3-5-sonnet-20241022-v2:0", "anthropic"),
    ("meta.llama3-1-8b-instruct-v1:0", "meta"),
    ("eu.meta.llama3-2-3b-instruct-v1:0", "meta"),
    ("mistral.mistral-7b-instruct-v0:2", "mistral"),
    ("amazon.titan-text-express-v1", "titan"),
    ("us.amazon.nova-micro-v1:0", "nova"),
    ("arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.meta.llama3-1-8b-instruct-v1:0", "meta"),
    ("arn:aws:bedrock:us-east-1::foundation-model/amazon.nova-lite-v1:0", "nova"),
    ("arn:aws:bedrock:us-east-1:123456789012:provisioned-model/abc123", None),
    ("cohere.command-r-v1:0", None),
])
def test_model_family_from_ids_profiles_and_arns(model_id: str, family: str | None) -> None:
    assert model_family(model_id) == family


def test_provisioned_throughput_arns_are_recognised() -> None:
    assert is_provisioned("arn:aws:bedrock:us-east-1:123456789012:provisioned-model/abc123")
    assert not is_provisioned("us.amazon.nova-micro-v1:0")


P = Parameters(max_tokens=50, temperature=0.2, top_p=0.9, stop=["END"])


@pytest.mark.parametrize(("family", "expected"), [
    ("anthropic", {"anthropic_version": "bedrock-2023-05-31",
                   "messages": [{"role": "user", "content": "Q"}], "max_tokens": 50,
                   "temperature": 0.2, "top_p": 0.9, "stop_sequences": ["END"]}),
    ("meta", {"prompt": "Q", "max_gen_len": 50, "temperature": 0.2, "top_p": 0.9}),
    ("mistral", {"prompt": "Q", "max_tokens": 50, "temperature": 0.2, "top_p": 0.9, "stop": ["END"]}),
    ("titan", {"inputText": "Q", "textGenerationConfig": {
        "maxTokenCount": 50, "temperature": 0.2, "topP": 0.9, "stopSequences": ["END"]}}),
    ("nova", {"schemaVersion": "messages-v1",
              "messages": [{"role": "user", "content": [{"text": "Q"}]}],
              "inferenceConfig": {"max_new_tokens": 50, "temperature": 0.2, "top_p": 0.9,
                                  "stopSequences": ["END"]}}),
])
def test_invoke_model_bodies_per_family(family: str, expected: dict) -> None:
    assert get_body_format(family).body("Q", P) == expected


def test_anthropic_body_always_has_max_tokens() -> None:
    assert get_body_format("anthropic").body("Q", Parameters())["max_tokens"] > 0


@pytest.mark.parametrize(("family", "reply", "text", "tokens"), [
    ("anthropic", {"content": [{"type": "text", "text": "hi"}],
                   "usage": {"input_tokens": 3, "output_tokens": 1}}, "hi", (3, 1)),
    ("meta", {"generation": "hi", "prompt_token_count": 3, "generation_token_count": 1}, "hi", (3, 1)),
    ("mistral", {"outputs": [{"text": "hi", "stop_reason": "stop"}]}, "hi", (None, None)),
    ("titan", {"inputTextTokenCount": 3, "results": [{"tokenCount": 1, "outputText": "hi"}]}, "hi", (3, 1)),
    ("nova", {"output": {"message": {"content": [{"text": "hi"}]}},
              "usage": {"inputTokens": 3, "outputTokens": 1}}, "hi", (3, 1)),
])
def test_invoke_model_replies_per_family(family, reply, text, tokens) -> None:
    completion = get_body_format(family).parse(reply)
    assert (completion.text, (completion.prompt_tokens, completion.completion_tokens)) == (text, tokens)


# --- error classes ---------------------------------------------------------------------

def client_error(code: str, status: int, **extra) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "m"},
                        "ResponseMetadata": {"HTTPStatusCode": status}, **extra}, "Invoke")


@pytest.mark.parametrize(("exc", "started", "expected"), [
    (client_error("ThrottlingException", 429), False, "throttled"),
    (client_error("ThrottlingException", 400), False, "throttled"),
    (client_error("ServiceQuotaExceededException", 400), False, "throttled"),
    (client_error("ValidationException", 400), False, "http_4xx"),
    (client_error("InternalServerException", 500), False, "http_5xx"),
    (client_error("ServiceUnavailable", 503), False, "http_5xx"),
    (client_error("ModelError", 424, OriginalStatusCode=500), False, "http_5xx"),
    (client_error("ModelError", 424, OriginalStatusCode=422), False, "http_4xx"),
    (client_error("ModelErrorException", 424), False, "http_5xx"),
    (EventStreamError({"Error": {"Code": "ModelStreamError", "Message": "m"}}, "Invoke"), True, "http_5xx"),
    (EventStreamError({"Error": {"Code": "throttlingException", "Message": "m"}}, "Converse"), True, "throttled"),
    (ReadTimeoutError(endpoint_url="http://x"), True, "timeout"),
    (TimeoutError("deadline"), True, "timeout"),
    (EndpointConnectionError(endpoint_url="http://x"), False, "connection"),
    (ConnectionClosedError(endpoint_url="http://x"), False, "connection"),
    (ResponseStreamingError(error="IncompleteRead"), True, "stream_truncated"),
    (ValueError("bad json"), True, "bad_response"),
    (RuntimeError("bug"), False, "client"),
])
def test_error_classes(exc: BaseException, started: bool, expected: str) -> None:
    assert aws.classify_exception(exc, started=started)[0] == expected


def test_token_fallbacks_server_then_tokenizer_then_estimate() -> None:
    from pytest_fmbench.endpoints.base import InferenceResult

    request = InferenceRequest("p", prompt_tokens=11)
    result = InferenceResult(0, 1, text="one two three")
    aws.fill_tokens(result, request, server_prompt=None, server_completion=5, content_chunks=3,
                    count_tokens=len)
    assert (result.prompt_tokens, result.completion_tokens, result.token_source) == (11, 5, "server")
    aws.fill_tokens(result, request, server_prompt=None, server_completion=None, content_chunks=3,
                    count_tokens=lambda text: 42)
    assert (result.completion_tokens, result.token_source) == (42, "tokenizer")
    aws.fill_tokens(result, request, server_prompt=None, server_completion=None, content_chunks=3,
                    count_tokens=None)
    assert (result.completion_tokens, result.token_source) == (3, "estimate")
    aws.fill_tokens(result, request, server_prompt=None, server_completion=None, content_chunks=None,
                    count_tokens=None)
    assert (result.completion_tokens, result.token_source) == (4, "estimate")  # 3 words * 4/3


def test_resource_names_fit_sagemaker_rules_and_differ_per_run_and_experiment() -> None:
    name = resource_name("Llama-3.1 8B instruct on g5.12xlarge" * 3, "20250101T000000-abc", "e1")
    assert len(name) <= 63 and re.fullmatch(r"[a-zA-Z0-9](-*[a-zA-Z0-9])*", name)
    assert name == resource_name("Llama-3.1 8B instruct on g5.12xlarge" * 3, "20250101T000000-abc", "e1")
    assert name != resource_name("Llama-3.1 8B instruct on g5.12xlarge" * 3, "20250101T000000-abd", "e1")
    assert name != resource_name("Llama-3.1 8B instruct on g5.12xlarge" * 3, "20250101T000000-abc", "e2")


# --- FMBench keys of SageMaker and Bedrock configs load ----------------------------------

FMBENCH_EXPERIMENTS = [
    {   # a JumpStart SageMaker experiment (config-llama3-8b-instruct-p4d-djl-lmi-dist.yml)
        "name": "llama-3-8b-instruct-p4d-djl", "model_id": "meta-textgeneration-llama-3-8b-instruct",
        "hf_tokenizer_model_id": "meta-llama/Meta-Llama-3-8B-Instruct", "model_version": "*",
        "model_name": "llama3-8b-instruct", "ep_name": "llama-3-8b-instruct-p4d",
        "instance_type": "ml.p4d.24xlarge", "deploy": True, "instance_count": 1,
        "image_uri": "763104351884.dkr.ecr.us-east-1.amazonaws.com/djl-inference:0.27.0-deepspeed0.12.6-cu121",
        "deployment_script": "jumpstart.py", "inference_script": "sagemaker_predictor.py",
        "inference_spec": {"parameter_set": "sagemaker", "stream": True},
        "payload_files": ["p.jsonl"], "concurrency_levels": [1, 2], "accept_eula": True,
        "additional_metadata": "option.rolling_batch: lmi-dist\n",
        "env": {"SAGEMAKER_PROGRAM": "inference.py", "MAX_TOTAL_TOKENS": "4096"},
    },
    {   # a Bedrock experiment (config-bedrock.yml): blanks where FMBench leaves them empty
        "name": "meta.llama3-8b-instruct-v1:0", "model_id": "meta.llama3-8b-instruct-v1:0",
        "model_version": None, "model_name": "meta.llama3-8b-instruct-v1:0",
        "ep_name": "meta.llama3-8b-instruct-v1:0", "instance_type": "meta.llama3-8b-instruct-v1:0",
        "image_uri": None, "deploy": False, "instance_count": None, "deployment_script": None,
        "inference_script": "bedrock_predictor.py",
        "inference_spec": {"split_input_and_parameters": False, "parameter_set": "bedrock",
                           "stream": True, "start_token": None, "stop_token": "<|eot_id|>"},
        "payload_files": ["p.jsonl"], "concurrency_levels": [1], "env": None,
    },
    {   # a Nova experiment (config-nova-all-models.yml): no model_id, no deploy key
        "name": "us.amazon.nova-micro-v1:0", "model_name": "us.amazon.nova-micro-v1:0",
        "ep_name": "us.amazon.nova-micro-v1:0", "instance_type": "us.amazon.nova-micro-v1:0",
        "instance_count": None, "inference_script": "bedrock_predictor.py",
        "inference_spec": {"split_input_and_parameters": False, "parameter_set": "bedrock"},
        "payload_files": ["p.jsonl"], "concurrency_levels": [1], "env": None,
    },
]


def test_fmbench_sagemaker_and_bedrock_experiment_keys_load() -> None:
    from pytest_fmbench.config.model import Config
    from pytest_fmbench.endpoints.bedrock import model_id_of
    from pytest_fmbench.endpoints.sagemaker import format_name, is_jumpstart

    config = Config.model_validate({
        "datasets": {"prompt_template_keys": ["input", "context"], "ground_truth_col_key": "answers",
                     "question_col_key": "input", "min_iters_per_combination": 5,
                     "max_iters_per_combination": 105, "filters": [{"payload_file": "p.jsonl"}]},
        "model_evaluations": "model_eval_all_info.yml",
        "inference_parameters": {
            "sagemaker": {"max_new_tokens": 100, "top_p": 0.92, "temperature": 0.1,
                          "details": True, "stop": "<|eot_id|>"},
            "bedrock": {"temperature": 0.1, "max_tokens": 100, "top_p": 0.92, "caching": False,
                        "use_boto3": True}},
        "experiments": FMBENCH_EXPERIMENTS,
    })
    jumpstart, llama, nova = config.experiments
    assert [e.resolved_backend for e in config.experiments] == ["sagemaker", "bedrock", "bedrock"]
    assert is_jumpstart(jumpstart) and jumpstart.accept_eula and jumpstart.model_version == "*"
    assert format_name(jumpstart) == "lmi"  # from the DJL image
    assert (model_id_of(llama), model_id_of(nova)) == (
        "meta.llama3-8b-instruct-v1:0", "us.amazon.nova-micro-v1:0")
    assert config.load_for(llama).max_iters_per_combination == 105  # FMBench's datasets keys
