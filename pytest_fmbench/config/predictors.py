"""FMBench's inference scripts (``inference_script``) and the backend that serves each.

FMBench picks a predictor module per experiment; here each maps onto one of our backends:

========================================  ===========  =========================================
FMBench predictor                         backend      requests
========================================  ===========  =========================================
sagemaker_predictor.py                    sagemaker    sagemaker-runtime invoke_endpoint(_with_response_stream)
bedrock_predictor.py (+ _converseAPI)     bedrock      Converse / InvokeModel
ec2_predictor.py                          openai       the server at ep_name (vLLM, TGI, ...)
eks_predictor.py                          rest         GET <ep_name>/<prompt> (Ray Serve on EKS)
rest_predictor.py                         rest         GET <ep_name>?sentence=<prompt>
custom_rest_predictor.py                  rest         POST <ep_name> {model_id, prompt, parameters}
========================================  ===========  =========================================
"""

from __future__ import annotations

PREDICTOR_BACKENDS: dict[str, str] = {
    "sagemaker_predictor.py": "sagemaker",
    "bedrock_predictor.py": "bedrock",
    "bedrock_predictor_converseapi.py": "bedrock",
    "ec2_predictor.py": "openai",
    "eks_predictor.py": "rest",
    "rest_predictor.py": "rest",
    "custom_rest_predictor.py": "rest",
}


def predictor_file(script: str | None) -> str:
    """``inference_script`` without any folder, lower-cased ('' when unset)."""
    return (script or "").strip().replace("\\", "/").rsplit("/", 1)[-1].lower()


def predictor_backend(script: str | None) -> str | None:
    """The backend for one of FMBench's own predictors; None for anything else."""
    return PREDICTOR_BACKENDS.get(predictor_file(script))
