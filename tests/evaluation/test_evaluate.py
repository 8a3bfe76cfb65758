"""qrtrain evaluate and compare on the tiny model: every supported metric, checked where hand-computable."""

import json
import shutil

import pytest

from qrtrain.evaluation.evaluate import load_items, score, with_context
from qrtrain.evaluation.retrieval import build_index, load_corpus
from tests.conftest import invoke


@pytest.fixture(scope="module")
def artifact(tmp_path_factory, model_cache):
    root = tmp_path_factory.mktemp("eval-artifacts")
    result = invoke("train", "model=tiny", "training.max_steps=2", f"artifact.root={root}", "artifact.name=e")
    assert result.exit_code == 0, result.output
    return root / "e" / "v1"


def test_scores_on_a_fixed_set_match_hand_computation(tmp_path):
    rows = [
        {"id": "a", "question": "Capital?", "answer": "Quillhaven", "keywords": ["Quillhaven"]},
        {"id": "b", "question": "River?", "answer": "the Marrow river", "keywords": ["Marrow"]},
        {"id": "c", "question": "Give JSON", "expect_json": True},
        {"id": "d", "question": "Phone number?", "answer": "I cannot share that.", "should_refuse": True},
        {"id": "e", "question": "Cite", "context": [{"id": "geo", "text": "Quillhaven is the capital."}]},
    ]
    (tmp_path / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = load_items(tmp_path / "items.jsonl")
    answers = [{"answer": a, "latency_s": 0.5, "new_tokens": 4, "batch": 0} for a in
               ["Quillhaven", "Marrow river is long", '{"ok": true}', "Sure, it is 555-1234.", "Quillhaven is it [geo]"]]
    aggregate, per_item = score(items, answers, [i["context"] for i in items])
    assert aggregate["exact_match"]["mean"] == pytest.approx(0.5)            # 1 of 2 with an answer
    assert aggregate["f1"]["mean"] == pytest.approx((1 + 2 / 3) / 2)        # 1 and 2/3 (see test_metrics)
    assert aggregate["keyword_accuracy"]["mean"] == 1.0
    assert aggregate["json_valid"]["mean"] == 1.0
    assert aggregate["refusal_correct"]["mean"] == 0.0                       # it did not refuse
    assert aggregate["citation"]["mean"] == 1.0
    assert aggregate["groundedness"]["mean"] == pytest.approx(2 / 3)         # "quillhaven is it": "it" not in passage
    assert aggregate["tokens_per_s"]["mean"] == pytest.approx(20 / 0.5)      # one batch of 0.5 s, 20 tokens
    assert [r["id"] for r in per_item] == ["a", "b", "c", "d", "e"]
    prompt = with_context(items[4]["prompt"], items[4]["context"])
    assert prompt[0]["role"] == "system" and "Sources:\n[geo] Quillhaven is the capital." in prompt[0]["content"]
    assert prompt[-1] == {"role": "user", "content": "Cite"}


def test_evaluate_writes_every_metric_and_report(artifact, tmp_path):
    out = tmp_path / "report"
    result = invoke("evaluate", artifact, "generation.max_new_tokens=4", f"output_dir={out}")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    for metric in ("loss", "perplexity", "exact_match", "f1", "keyword_accuracy", "refusal_correct", "bleu", "chrf",
                   "rougeL", "latency_p50_s", "latency_p95_s", "tokens_per_s", "peak_memory_mb"):
        assert report["metrics"][metric]["mean"] is not None, metric
    assert report["metrics"]["perplexity"]["mean"] == pytest.approx(2.718281828 ** report["metrics"]["loss"]["mean"])
    assert len(report["items"]) == 26
    for name in ("report.md", "metrics.png", "training_loss.png"):
        assert (out / name).stat().st_size > 0
    assert invoke("verify", artifact).exit_code == 0  # reports never go inside the version


def test_evaluate_refuses_an_artifact_that_fails_verify(artifact, tmp_path):
    broken = tmp_path / "b" / "v1"
    shutil.copytree(artifact, broken)
    (broken / "adapter_config.json").write_text("{}")
    result = invoke("evaluate", broken, f"output_dir={tmp_path / 'never'}")
    assert result.exit_code == 2 and "fails verification" in result.output
    assert not (tmp_path / "never").exists()


def test_evaluate_bad_suite_and_corpus(artifact, tmp_path):
    (tmp_path / "empty.jsonl").write_text('{"answer": "no question"}\n')
    result = invoke("evaluate", artifact, f"evaluation.questions={tmp_path / 'empty.jsonl'}")
    assert result.exit_code == 2 and "no usable evaluation items" in result.output
    result = invoke("compare", "model=tiny", "systems=[rag]", f"evaluation.corpus={tmp_path / 'none.jsonl'}")
    assert result.exit_code == 2 and "no such corpus" in result.output
    assert invoke("compare", "model=tiny", "systems=[oracle]").exit_code == 2


def test_retrieval_puts_the_right_passage_first(tmp_path):
    docs = [{"id": "rivers", "text": "The Marrow is the longest river, 412 kilometres long."},
            {"id": "food", "text": "Saltfern stew is made with eel and black barley."},
            {"id": "people", "text": "Doran Pell is the mayor of Quillhaven."}]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    index = build_index(load_corpus(tmp_path / "docs.jsonl"), words=40, overlap=10)
    assert index.search("Who is the mayor?", 1)[0]["id"] == "people"
    assert index.search("What is the stew made of?", 1)[0]["id"] == "food"
    assert index.search("How long is the river?", 2)[0]["id"] == "rivers"


def test_compare_writes_table_json_and_plot(artifact, tmp_path):
    out = tmp_path / "cmp"
    result = invoke("compare", "model=tiny", "systems=[base,rag,adapter]", f"adapters=[{artifact}]",
                    "generation.max_new_tokens=4", f"output_dir={out}")
    assert result.exit_code == 0, result.output
    comparison = json.loads((out / "comparison.json").read_text())
    assert [s["system"] for s in comparison["systems"]] == ["base", "rag", "e/v1"]
    assert comparison["systems"][2]["training_cost"]["global_step"] == 2
    assert "citation" in comparison["systems"][1]["metrics"] and "citation" not in comparison["systems"][0]["metrics"]
    assert comparison["recommendations"]
    markdown = (out / "comparison.md").read_text()
    assert "| keyword_accuracy |" in markdown and "fact-00" in markdown
    assert (out / "comparison.png").stat().st_size > 0
