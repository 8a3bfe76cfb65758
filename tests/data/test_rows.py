"""Data formats, the dialogue loss mask, and BOS handling."""

import json

import pytest

from qrtrain.data.rows import load_source, row_problem
from qrtrain.errors import QrtrainError
from qrtrain.training.datasets import load_datasets
from tests.conftest import compose_cfg
from tests.training.test_train import build


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_every_format_becomes_what_trl_expects(tmp_path):
    rows = {
        "text": {"text": "Quillhaven is the capital."},
        "pc": {"prompt": "Capital?", "completion": "Quillhaven."},
        "alpaca": {"instruction": "Name the capital.", "input": "Veloria", "output": "Quillhaven."},
        "chat": {"messages": [{"role": "user", "content": "Capital?"}, {"role": "assistant", "content": "Quillhaven."}]},
    }
    paths = {k: write_jsonl(tmp_path / f"{k}.jsonl", [v]) for k, v in rows.items()}
    assert load_source(paths["text"], "standard") == [{"text": "Quillhaven is the capital."}]
    assert load_source(paths["pc"], "standard") == [{"prompt": "Capital?", "completion": "Quillhaven."}]
    assert load_source(paths["alpaca"], "standard")[0]["prompt"].endswith("### Response:\n")
    assert load_source(paths["alpaca"], "dialogue")[0]["messages"][0]["content"] == "Name the capital.\n\nVeloria"
    assert load_source(paths["pc"], "dialogue")[0]["messages"][1] == {"role": "assistant", "content": "Quillhaven."}
    assert load_source(paths["chat"], "dialogue") == [rows["chat"]]


def test_json_parquet_and_saved_dataset_sources(tmp_path):
    from datasets import Dataset

    rows = [{"text": f"line {i}"} for i in range(5)]
    (tmp_path / "a.json").write_text(json.dumps(rows))
    Dataset.from_list(rows).to_parquet(str(tmp_path / "a.parquet"))
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    for name in ("a.json", "a.parquet", "saved"):
        assert load_source(tmp_path / name, "standard") == rows


def test_sources_mix_with_weights(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"text": f"a{i}"} for i in range(10)])
    b = write_jsonl(tmp_path / "b.jsonl", [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(10)])
    cfg = compose_cfg("model_type=standard", f"data.train=[{a},{b}]", "data.weights=[3,1]", "data.eval_fraction=0.2")
    train, eval_set, paths = load_datasets(cfg)
    assert [s["path"] for s in paths if s["role"] == "train"] == [str(a), str(b)] and len(eval_set) >= 1
    assert [s["rows"] for s in paths if s["role"] == "eval-split"] == [len(eval_set)]
    completions = [r["completion"] for r in train] + [r["completion"] for r in eval_set]
    assert sum(c.startswith("a") for c in completions) > sum(c.startswith("c") for c in completions)


@pytest.mark.parametrize("row,expected", [
    ([1, 2], "got list"),
    ({"foo": 1}, "got keys ['foo']"),
    ({"text": ""}, "`text` must be a non-empty string"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "no assistant turn"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role is 'robot'"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content must be a string (or a list of parts), got int"),
    ({"prompt": 3, "completion": "x"}, "`prompt` must be a string"),
])
def test_row_problems_say_what_is_wrong(row, expected):
    assert expected in row_problem(row)


def test_bad_line_is_named(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n{"text": "ok"\n')
    with pytest.raises(QrtrainError, match=r"bad.jsonl line 2: not valid JSON"):
        load_source(path, "standard")


def assistant_char_spans(text: str, messages: list[dict]) -> list[tuple[int, int]]:
    """Where each assistant reply (and its end-of-turn token) stands in the rendered text."""
    spans, start = [], 0
    for message in messages:
        if message["role"] == "assistant":
            begin = text.index(message["content"] + "<|im_end|>", start)
            start = begin + len(message["content"] + "<|im_end|>")
            spans.append((begin, start))
    return spans


def test_dialogue_loss_mask_is_assistant_tokens_exactly(tmp_path):
    _, _, trainer = build(tmp_path, "model_type=dialogue", "training.max_steps=1")
    tokenizer = trainer.processing_class
    checked = 0
    for example in trainer.train_dataset.select(range(4)):
        batch = trainer.data_collator([example])
        ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
        messages = load_datasets(compose_cfg("model_type=dialogue"))[0][checked]["messages"]
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        assert encoding["input_ids"] == ids, "collated ids differ from the rendered conversation"
        spans = assistant_char_spans(text, messages)
        expected = [any(b <= s and e <= end for b, end in spans) for s, e in encoding["offset_mapping"]]
        assert [label != -100 for label in labels] == expected
        assert all(labels[i] == ids[i] for i, on in enumerate(expected) if on)
        assert ids.count(tokenizer.bos_token_id) == 1 and ids[0] == tokenizer.bos_token_id
        checked += 1
    assert checked == 4


def test_plain_text_gets_one_bos(tmp_path):
    _, _, trainer = build(tmp_path, "model_type=standard", "training.max_steps=1")
    bos = trainer.processing_class.bos_token_id
    for example in trainer.train_dataset.select(range(4)):
        assert example["input_ids"].count(bos) == 1 and example["input_ids"][0] == bos


def test_all_loss_tokens_cut_is_refused(tiny_folder):
    from qrtrain.models.loading import load_tokenizer
    from qrtrain.training.datasets import check_token_lengths

    cfg = compose_cfg("model_type=dialogue")
    train, _, _ = load_datasets(cfg)
    with pytest.raises(QrtrainError, match="lose every loss token to training.max_length=8"):
        check_token_lengths(train, load_tokenizer(tiny_folder, "dialogue"), 8)
