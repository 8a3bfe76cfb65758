"""qrtrain gate and qrtrain diff on versions trained differently: a real regression fails (exit 1), an equal
version passes with a drop of exactly 0, and what cannot be compared is exit 2."""

import json
import shutil

import pytest

from qrtrain.data.rows import DEMO_DIR
from tests.conftest import invoke

QUESTIONS = 12


@pytest.fixture(scope="module")
def trained(tmp_path_factory, model_cache):
    """g/v1: 40 steps; g/v2: 2 steps; g/v3: v1's training again (the same seed: the same adapter)."""
    root = tmp_path_factory.mktemp("gate")
    questions = root / "questions.jsonl"
    questions.write_text("".join((DEMO_DIR / "qa_train.jsonl").read_text().splitlines(True)[:QUESTIONS]))
    for steps in (40, 2, 40):
        result = invoke("train", "model=tiny", f"training.max_steps={steps}", "training.learning_rate=2e-2",
                        f"artifact.root={root}", "artifact.name=g")
        assert result.exit_code == 0, result.output
    return root, questions


def run_gate(root, questions, *args):
    result = invoke("gate", *args, "--root", root, "--json", f"evaluation.questions={questions}",
                    "generation.max_new_tokens=16")
    return result.exit_code, result.output


def test_the_gate_fails_the_worse_version_and_passes_an_equal_one(trained):
    root, questions = trained
    code, output = run_gate(root, questions, "g/v2", "--baseline", "g/v1", "--metric", "rougeL",
                            "--max-drop", "0.02")
    assert code == 1, output
    verdict = json.loads(output[output.index("{"):])
    check = verdict["checks"][0]
    assert not verdict["passed"] and check["drop"] > 0.02 and check["ci"][0] > 0, check
    assert set(verdict["evaluated_now"]) == {"g/v1", "g/v2"}  # neither had a report: both were evaluated
    code, output = run_gate(root, questions, "g/v3", "--baseline", "g/v1", "--metric", "rougeL")
    verdict = json.loads(output[output.index("{"):])
    assert code == 0 and verdict["checks"][0]["drop"] == 0 and verdict["checks"][0]["ci"] == [0, 0], output
    assert verdict["evaluated_now"] == ["g/v3"]  # v1's report was reused
    code, output = run_gate(root, questions, "g/v3", "--baseline", "previous", "--metric", "rougeL",
                            "--metric", "f1", "--max-drop", "0.9", "--max-drop", "0")
    assert code == 0, output  # rougeL improved on v2; f1 is 0 on both (the tiny model has no words yet)


def test_what_cannot_be_gated_is_exit_2(trained, tmp_path):
    root, questions = trained
    code, output = run_gate(root, questions, "g/v1", "--baseline", "previous")
    assert code == 2 and "first version" in output
    code, output = run_gate(root, questions, "g/v3", "--baseline", "latest")
    assert code == 2 and "itself the latest" in output
    code, output = run_gate(root, questions, "g/v3", "--baseline", "g/v1", "--metric", "loss")
    assert code == 2 and "per-question" in output
    code, output = run_gate(root, questions, "g/v3", "--baseline", "g/v9")
    assert code == 2 and "no such version" in output
    other = tmp_path / "questions.jsonl"  # the same suite name, other questions: not comparable
    other.write_text("".join((DEMO_DIR / "qa_train.jsonl").read_text().splitlines(True)[QUESTIONS:2 * QUESTIONS]))
    shutil.copytree(root / "g", tmp_path / "g")
    for report in (tmp_path / "g" / "evaluations").glob("v3-*"):
        shutil.rmtree(report)
    code, output = run_gate(tmp_path, other, "g/v3", "--baseline", "g/v1", "--metric", "rougeL")
    assert code == 2 and "not on the same questions" in output, output


def test_diff_shows_what_differs_between_two_trainings(trained):
    root, _ = trained
    result = invoke("diff", "g/v1", "g/v2", "--root", root, "--json")
    assert result.exit_code == 0, result.output
    diff = json.loads(result.output)
    assert {"key": "training.max_steps", "a": 40, "b": 2} in diff["config"]
    steps = next(m for m in diff["metrics"] if m["metric"] == "global_step")
    assert (steps["a"], steps["b"], steps["delta"]) == (40, 2, -38)
    assert any(m["metric"].startswith("questions:rougeL") for m in diff["metrics"])  # both evaluated on it
    same = json.loads(invoke("diff", "g/v1", "g/v3", "--root", root, "--json").output)
    assert same["config"] == [] and same["data"] == [] and same["a"]["root_digest"] != same["b"]["root_digest"]
