"""FMBench's Bedrock evaluation config, unchanged, against the Bedrock runtime emulator: its
default three-judge panel answers with scripted verdicts."""

from __future__ import annotations

import csv

from pytest_fmbench.accuracy.settings import FMBENCH_PANEL
from pytest_fmbench.testing.judges import ScriptedJudges
from tests import test_fmbench_e2e as e2e
from tests.test_fmbench_e2e import Aws, fmbench_file, run, with_read_dir

# The AWS fixtures (moto, the runtime emulator) of the FMBench end-to-end tests.
aws, servers = e2e.aws, e2e.servers

BEDROCK_EVAL_FILE = "bedrock/config-bedrock-evals-only-conc-1.yml"
CANDIDATE = "meta.llama3-1-8b-instruct-v1:0"


class EveryAnswer(dict[str, str]):
    """One verdict for whatever the candidate answered."""

    def __init__(self, verdict: str) -> None:
        super().__init__()
        self.verdict = verdict

    def get(self, key: str, default: object = None) -> str:  # type: ignore[override]
        return self.verdict


def test_fmbench_bedrock_evaluation_config_runs_its_panel_on_the_emulator(aws: Aws) -> None:
    llama, claude, cohere = FMBENCH_PANEL
    judges = ScriptedJudges({})
    # Two judges say correct, Cohere's reply does not parse: quorum 2 still decides.
    judges.verdicts = {llama: EveryAnswer("correct"), claude: EveryAnswer("fenced-correct"),
                       cohere: EveryAnswer("garbage")}
    aws.emulator.converse_reply = judges.reply
    # Bedrock throttles the Claude judge twice: retried by the backend, nothing lost.
    throttled = aws.emulator.inject("throttle", times=2, api="bedrock", target=claude)
    path = fmbench_file(aws.pytester, BEDROCK_EVAL_FILE)
    result = run(aws.pytester, with_read_dir(aws.pytester, path, records=24),
                 "-k", "llama3-1-8b and (en_1-500 or accuracy)")
    result.assert_outcomes(passed=2)
    assert result.ret == 0
    n = judges.calls[llama]
    assert throttled.fired == 2
    assert n > 0 and dict(judges.calls) == {llama: n, claude: n, cohere: n}
    result.stdout.fnmatch_lines([
        f"*accuracy: {CANDIDATE}: majority accuracy 1.000 ?*? n={n}, undecided 0*",
        f"*accuracy budget PASS*{CANDIDATE} majority accuracy 1.000 vs accuracy_budget 1.000*",
        "*cosine_similarity_budget not checked*",
    ])
    out = aws.pytester.path / "out" / "accuracy"
    with open(out / "eval_cost_per_llm_evaluator.csv", encoding="utf-8") as handle:
        costs = {r["judge_model_id"]: r for r in csv.DictReader(handle)}
    # Claude and Cohere are in the pricing table; whatever is not is "unpriced", never $0.
    assert float(costs[claude]["total_cost"]) > 0
    assert costs[llama]["total_cost"] == "unpriced" or float(costs[llama]["total_cost"]) > 0
    assert costs[cohere]["parse_failed"] == str(n)
    assert (out / "accuracy_trajectory_per_payload.png").exists()
    assert (out / "overall_candidate_model_majority_voting_accuracy.png").exists()
    # Judges ran after the candidate's last request (the accuracy pass), never during load.
    targets = [q.target for q in aws.emulator.requests]
    last_candidate = max(i for i, t in enumerate(targets) if t == CANDIDATE)
    first_judge = min(i for i, t in enumerate(targets) if t in FMBENCH_PANEL)
    assert last_candidate < first_judge
