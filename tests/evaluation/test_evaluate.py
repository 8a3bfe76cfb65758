"""qrtrain evaluate and compare on the tiny model: every supported metric, checked where hand-computable."""

import json
import shutil

import pytest

from qrtrain.data.corpus import read_documents
from qrtrain.evaluation.evaluate import load_items, score, with_context
from qrtrain.evaluation.retrieval import build_index
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
    # ROUGE-L per item, like F1: LCS 2 of 3 and 4 words is 4/7; n=2, so no interval (bootstrap needs 5)
    assert aggregate["rougeL"]["mean"] == pytest.approx((1 + 4 / 7) / 2) and aggregate["rougeL"]["ci95"] is None
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
    assert result.exit_code == 2 and "evaluation.corpus=" in result.output and "no such file or folder" in result.output
    assert invoke("compare", "model=tiny", "systems=[oracle]").exit_code == 2


@pytest.mark.parametrize("verb", [["evaluate"], ["package", "--format", "bundle"]])
def test_a_target_that_does_not_exist_is_named_as_missing(verb, tmp_path):
    result = invoke(*verb, tmp_path / "no-such-adapter")
    assert result.exit_code == 2 and f"{tmp_path / 'no-such-adapter'}: no such file or folder" in result.output


def test_compare_retrieves_from_the_folder_of_markdown_files_synth_reads(tmp_path):
    """One corpus reader: the .md folder `synth.corpus` accepts is a corpus for compare's retrieval too."""
    docs = tmp_path / "docs"
    (docs / "places").mkdir(parents=True)
    (docs / "places" / "quillhaven.md").write_text("# Quillhaven\n\nDoran Pell is the mayor of Quillhaven.\n")
    (docs / "food.txt").write_text("Saltfern stew is made with eel and black barley.")
    (docs / "notes.bin").write_bytes(b"\x00\x01")
    out = tmp_path / "cmp"
    result = invoke("compare", "model=tiny", "systems=[rag]", f"evaluation.corpus={docs}", "retrieval.k=1",
                    "generation.max_new_tokens=2", f"output_dir={out}")
    assert result.exit_code == 0, result.output
    cited = {p for item in json.loads((out / "comparison.json").read_text())["systems"][0]["items"]
             for p in item["passages"]}
    assert cited <= {"places/quillhaven.md", "food.txt"} and cited


def test_retrieval_puts_the_right_passage_first(tmp_path):
    docs = [{"id": "rivers", "text": "The Marrow is the longest river, 412 kilometres long."},
            {"id": "food", "text": "Saltfern stew is made with eel and black barley."},
            {"id": "people", "text": "Doran Pell is the mayor of Quillhaven."}]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    index = build_index(read_documents(tmp_path / "docs.jsonl", "evaluation.corpus"), words=40, overlap=10)
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


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


ALPACA = [{"instruction": f"Name fact number {i} about Veloria.", "input": "",
           "output": f"Fact {i}: the harbour of Quillhaven opens at dawn and closes at dusk, every day of the year."}
          for i in range(16)]


def test_evaluate_takes_the_rows_train_takes(tmp_path):
    """Alpaca and prompt/completion rows are evaluation items too: chat prompts for a chat adapter, the
    Alpaca prompt or the prompt as written for one trained on prompts."""
    rows = [ALPACA[0], {"prompt": "Capital of Veloria:", "completion": " Quillhaven"}]
    path = write_rows(tmp_path / "q.jsonl", rows)
    chat = load_items(path)
    assert chat[0]["prompt"] == [{"role": "user", "content": ALPACA[0]["instruction"]}]
    assert chat[0]["reference"] == ALPACA[0]["output"] and chat[1]["reference"] == " Quillhaven"
    alpaca = load_items(path, "alpaca")
    assert alpaca[0]["prompt"] == f"### Instruction:\n{ALPACA[0]['instruction']}\n\n### Response:\n"
    assert load_items(path, "prompt-completion")[1]["prompt"] == "Capital of Veloria:"
    question = write_rows(tmp_path / "x.jsonl", [{"question": "Capital?", "answer": "Quillhaven"}])
    assert load_items(question, "alpaca")[0]["prompt"] == "### Instruction:\nCapital?\n\n### Response:\n"


def test_an_adapter_trained_on_alpaca_is_evaluated_with_the_alpaca_prompt(tmp_path):
    data = write_rows(tmp_path / "alpaca.jsonl", ALPACA)
    root = tmp_path / "out"
    assert invoke("train", "model=tiny", "model_type=standard", f"data.train={data}", "training.max_steps=2",
                  f"artifact.root={root}", "artifact.name=s").exit_code == 0
    version = root / "s" / "v1"
    metadata = json.loads((version / "metadata.json").read_text())
    assert metadata["datasets"][0]["format"] == "alpaca"
    # the card and metadata state the exact prompt and stop rule, for users of PEFT alone
    assert metadata["prompt"]["format"] == "alpaca" and metadata["prompt"]["stop_token_id"] is not None
    card = (version / "README.md").read_text()
    assert "### Instruction:" in card and "### Response:" in card and metadata["prompt"]["stop_token"] in card
    result = invoke("evaluate", version, f"evaluation.questions={data}", f"output_dir={tmp_path / 'r'}")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["prompt_format"] == "alpaca" and report["suite"] == "alpaca"  # labelled by its file, not "demo"
    assert report["metrics"]["loss"]["mean"] is not None

    # compare presents the adapter exactly as evaluate does: the same prompts, so the same greedy answers
    result = invoke("compare", "model=tiny", "systems=[base,adapter]", f"adapters=[{version}]",
                    f"evaluation.questions={data}", f"output_dir={tmp_path / 'c'}")
    assert result.exit_code == 0, result.output
    comparison = json.loads((tmp_path / "c" / "comparison.json").read_text())
    assert comparison["suite"] == "alpaca"
    base, adapter = comparison["systems"]
    assert base["prompt_format"] == "chat" and adapter["prompt_format"] == "alpaca"
    assert adapter["max_new_tokens"] == report["max_new_tokens"]
    assert [i["answer"] for i in adapter["items"]] == [i["answer"] for i in report["items"]]
    assert "s/v1 alpaca" in (tmp_path / "c" / "comparison.md").read_text()


def test_the_held_out_split_is_published_and_evaluates_like_training(tmp_path):
    """data.eval_fraction's examples travel in the version (eval_split.jsonl, hashed in metadata.json);
    evaluating on them truncates as training did, so the two losses agree."""
    conversations = [{"messages": [{"role": "user", "content": f"Tell me about harbour {i}."},
                                   {"role": "assistant", "content": "The harbour of Quillhaven " * (3 + i % 5)}]}
                     for i in range(20)]
    data = write_rows(tmp_path / "chat.jsonl", conversations)
    root = tmp_path / "out"
    result = invoke("train", "model=tiny", f"data.train={data}", "data.eval_fraction=0.25", "training.max_steps=3",
                    "training.max_length=40", "training.batch_size=8", f"artifact.root={root}", "artifact.name=h")
    assert result.exit_code == 0, result.output
    version = root / "h" / "v1"
    split = version / "eval_split.jsonl"
    assert len(split.read_text().splitlines()) == 5
    entry = next(d for d in json.loads((version / "metadata.json").read_text())["datasets"] if d["role"] == "eval-split")
    from qrtrain.files import sha256_file

    assert entry["rows"] == 5 and entry["sha256"] == sha256_file(split)
    assert invoke("verify", version).exit_code == 0
    result = invoke("evaluate", version, f"evaluation.questions={split}", f"output_dir={tmp_path / 'r'}")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    trained_loss = json.loads((version / "training_metrics.json").read_text())["final"]["eval_loss"]
    assert report["suite"] == "eval_split"
    assert report["metrics"]["loss"]["mean"] == pytest.approx(trained_loss, abs=2e-3)


def test_an_alpaca_adapter_is_packaged_with_the_alpaca_prompt(tmp_path):
    data = write_rows(tmp_path / "alpaca.jsonl", ALPACA)
    root = tmp_path / "out"
    assert invoke("train", "model=tiny", "model_type=standard", f"data.train={data}", "training.max_steps=1",
                  f"artifact.root={root}", "artifact.name=s").exit_code == 0
    result = invoke("package", root / "s" / "v1", "--format", "ollama", "--output", tmp_path / "ollama")
    assert result.exit_code == 0, result.output
    modelfile = (tmp_path / "ollama" / "Modelfile").read_text()
    assert 'TEMPLATE """### Instruction:\n{{ .Prompt }}\n\n### Response:\n"""' in modelfile
    assert "<|im_start|>" not in modelfile.split("TEMPLATE")[1].split('"""')[1]


def test_training_eval_loss_equals_evaluate_loss_on_the_same_file(tmp_path):
    """Both are the mean over every answer token of the file (not a mean of per-batch means), with the same
    truncation; answers of very different lengths in different batches would tell the two apart."""
    import torch

    rows = [{"messages": [{"role": "user", "content": f"What is item {i} of the Veloria list?"},
                          {"role": "assistant", "content": ("It is the bell. " if i % 3 else
                                                            "It is the harbour bell, rung at dawn and at dusk. " * 6)
                                                           + f"Number {i}."}]} for i in range(40)]
    train, held = write_rows(tmp_path / "train.jsonl", rows[:28]), write_rows(tmp_path / "held.jsonl", rows[28:])
    root = tmp_path / "out"
    result = invoke("train", "model=tiny", f"data.train={train}", f"data.eval={held}", "training.max_steps=3",
                    "training.batch_size=4", "training.max_length=96", f"artifact.root={root}", "artifact.name=el")
    assert result.exit_code == 0, result.output
    trained = json.loads((root / "el" / "v1" / "training_metrics.json").read_text())["final"]["eval_loss"]
    assert invoke("evaluate", root / "el" / "v1", f"evaluation.questions={held}", "generation.max_new_tokens=2",
                  f"output_dir={tmp_path / 'r'}").exit_code == 0
    evaluated = json.loads((tmp_path / "r" / "report.json").read_text())["metrics"]["loss"]["mean"]
    tolerance = 1e-3 if torch.cuda.is_available() else 1e-5  # relative; bf16 GPU kernels are not bit-exact
    assert trained == pytest.approx(evaluated, rel=tolerance)
