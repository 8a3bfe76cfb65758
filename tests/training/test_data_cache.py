"""The data cache: a rerun on the same data reuses the prepared sets and trains exactly as the first run;
any change to the data or the settings that shape it misses the cache."""

import json

import pytest
from safetensors.numpy import load_file

from tests.conftest import invoke


def train(tmp_path, name: str, data, *extra: str):
    result = invoke("train", "model=tiny", f"data.train={data}", "training.max_steps=3", "training.eval_steps=0",
                    f"artifact.root={tmp_path / 'out'}", f"artifact.name={name}", *extra)
    assert result.exit_code == 0, result.output[-2000:]
    return result.output, tmp_path / "out" / name / "v1"


def test_a_rerun_uses_the_cache_and_trains_the_same(tmp_path, monkeypatch):
    monkeypatch.setenv("QRTRAIN_CACHE", str(tmp_path / "cache"))
    rows = [{"messages": [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": f"Answer {i}."}]}
            for i in range(30)]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    first, v_first = train(tmp_path, "a", data)
    again, v_again = train(tmp_path, "b", data)
    assert "from the data cache" not in first and "from the data cache" in again
    assert "27 training examples" in again  # the same report, from the cache
    a, b = load_file(v_first / "adapter_model.safetensors"), load_file(v_again / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    assert (v_first / "eval_split.jsonl").read_bytes() == (v_again / "eval_split.jsonl").read_bytes()
    assert invoke("verify", v_again).exit_code == 0

    data.write_text("".join(json.dumps(r) + "\n" for r in rows[:-1]))  # one example fewer: a different key
    changed, _ = train(tmp_path, "c", data)
    assert "from the data cache" not in changed
    other, _ = train(tmp_path, "d", data, "training.max_length=24")  # a setting that shapes the data
    assert "from the data cache" not in other


CONVERSATIONS = [{"messages": [{"role": "user", "content": f"Question number {i}?"},
                               {"role": "assistant", "content": f"The answer is {i}, said twice: {i}."}]}
                 for i in range(24)]
PAIRS = [{"prompt": f"Question number {i}?", "completion": f" The answer is {i}."} for i in range(24)]
TEXTS = [{"text": f"Document {i} says that the answer is {i}."} for i in range(24)]


@pytest.mark.parametrize("rows, settings", [
    (CONVERSATIONS, ["training.packing=true"]),
    (PAIRS, ["model_type=standard", "training.packing=true"]),
    pytest.param(TEXTS, ["model_type=standard", "training.packing=true", "training.max_length=16"],
                 marks=pytest.mark.slow),
    pytest.param(CONVERSATIONS, ["training.max_length=48"], marks=pytest.mark.slow),
], ids=["dialogue-packed", "prompt-completion-packed", "text-packed-short", "dialogue-truncated"])
def test_the_cache_gives_what_a_fresh_preparation_gives(tmp_path, monkeypatch, rows, settings):
    """Each setting trained fresh, then again from the cache: both publish, with bit-identical adapters
    (the same prepared rows in the same order, labels included)."""
    monkeypatch.setenv("QRTRAIN_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    first, v_first = train(tmp_path, "fresh", data, "training.batch_size=4", *settings)
    again, v_again = train(tmp_path, "cached", data, "training.batch_size=4", *settings)
    assert "from the data cache" not in first and "from the data cache" in again
    a, b = load_file(v_first / "adapter_model.safetensors"), load_file(v_again / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
