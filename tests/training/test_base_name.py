"""An adapter trained on `model.path=FOLDER` names the model it was trained on, never the default option's.

    .venv/bin/pytest tests/training/test_base_name.py

The folder holds a tiny random Qwen2 (another architecture than the default's Llama), with the tiny
tokenizer: adapter_config.json, the card, metadata.json and the artifact's name all name that model.
"""

import json
import shutil

import pytest

from tests.conftest import invoke

DEFAULT_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.fixture(scope="module")
def qwen_folder(tmp_path_factory, tiny_folder):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    folder = tmp_path_factory.mktemp("bases") / "My Qwen Tiny"
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=1024, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512)
    Qwen2ForCausalLM(config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(tiny_folder / name, folder / name)
    return folder


def with_recorded_name(folder, name: str | None):
    config = json.loads((folder / "config.json").read_text())
    config.pop("_name_or_path", None)
    if name:
        config["_name_or_path"] = name
    (folder / "config.json").write_text(json.dumps(config))


def train(root, folder, *extra):
    return invoke("train", f"model.path={folder}", "training.max_steps=1", "training.eval_steps=0",
                  "training.batch_size=2", "checkpoint.every_steps=0", f"artifact.root={root}", *extra)


def test_a_folder_without_a_hub_id_is_named_from_the_folder(tmp_path, qwen_folder):
    with_recorded_name(qwen_folder, None)
    result = train(tmp_path, qwen_folder)
    assert result.exit_code == 0, result.output[-2000:]
    (version,) = tmp_path.glob("*/v1")
    assert version.parent.name.startswith("my-qwen-tiny-") and version.parent.name.endswith("-dialogue")
    adapter = json.loads((version / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(qwen_folder)
    metadata = json.loads((version / "metadata.json").read_text())
    assert metadata["base_model"]["hub_id"] is None and metadata["base_model"]["name"].startswith("my-qwen-tiny-")
    card = (version / "README.md").read_text()
    assert DEFAULT_HUB_ID not in card and "smollm2" not in card.lower()
    assert "smollm2" not in version.parent.name


def test_a_folder_with_a_hub_id_is_named_by_it(tmp_path, qwen_folder):
    with_recorded_name(qwen_folder, "acme/Qwen-Tiny")
    result = train(tmp_path, qwen_folder)
    assert result.exit_code == 0, result.output[-2000:]
    version = tmp_path / "qwen-tiny-dialogue" / "v1"
    assert json.loads((version / "adapter_config.json").read_text())["base_model_name_or_path"] == "acme/Qwen-Tiny"
    assert "base_model: acme/Qwen-Tiny" in (version / "README.md").read_text()
    assert json.loads((version / "metadata.json").read_text())["base_model"]["hub_id"] == "acme/Qwen-Tiny"


def test_a_given_hub_id_that_contradicts_the_folder_is_an_error(tmp_path, qwen_folder):
    with_recorded_name(qwen_folder, "acme/Qwen-Tiny")
    result = train(tmp_path, qwen_folder, "model.hub_id=someone/Other-Model")
    assert result.exit_code == 2 and "acme/Qwen-Tiny" in result.output
    assert not any(tmp_path.glob("*/v1"))
