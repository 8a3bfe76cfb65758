"""An artifact works where it is used: PEFT alone loads it from another path, with no qrtrain cache, by the
base model's name; qrtrain finds the base on a machine where the recorded folder does not exist."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qrtrain.artifacts.resolve import locate_base
from qrtrain.files import sha256_file
from tests.conftest import invoke

HUB_ID = "qrtrain-test/tiny"
IDS = [[5, 17, 42, 99, 7, 3]]


@pytest.fixture(scope="module")
def published(tmp_path_factory, model_cache):
    root = tmp_path_factory.mktemp("portable")
    result = invoke("train", "model=tiny", f"model.hub_id={HUB_ID}", "training.max_steps=3",
                    "training.learning_rate=1e-2", f"artifact.root={root}", "artifact.name=p")
    assert result.exit_code == 0, result.output
    return root / "p" / "v1"


def fake_hub_cache(cache, model_folder, hub_id: str):
    """What `hf download` leaves in a Hugging Face cache, made by hand from a local folder."""
    repo = cache / ("models--" + hub_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(model_folder, repo / "snapshots" / commit, ignore=shutil.ignore_patterns(".complete"))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def test_the_artifact_names_its_base_portably(published):
    adapter_config = json.loads((published / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == HUB_ID
    card = (published / "README.md").read_text()
    assert f"base_model: {HUB_ID}" in card and "/tmp" not in card.split("---")[1]
    base = json.loads((published / "metadata.json").read_text())["base_model"]
    assert base["hub_id"] == HUB_ID and os.path.isdir(base["path"]) and base["files"]


def test_peft_alone_loads_a_copy_elsewhere_by_the_base_name(published, tiny_folder, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    copy = tmp_path / "elsewhere" / "adapter"
    shutil.copytree(published, copy)
    fake_hub_cache(tmp_path / "hf" / "hub", tiny_folder, HUB_ID)
    script = ("import sys, torch, json\n"
              "from peft import AutoPeftModelForCausalLM\n"
              "model = AutoPeftModelForCausalLM.from_pretrained(sys.argv[1]).eval()\n"
              f"print(json.dumps(model(input_ids=torch.tensor({IDS})).logits[0, -1, :8].tolist()))\n")
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path / "home"), "HF_HUB_CACHE": str(tmp_path / "hf" / "hub"),
           "HF_HUB_OFFLINE": "1", "QRTRAIN_CACHE": str(tmp_path / "no-qrtrain-cache")}
    result = subprocess.run([sys.executable, "-c", script, str(copy)], capture_output=True, text=True, env=env,
                            cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    elsewhere = torch.tensor(json.loads(result.stdout.strip().splitlines()[-1]))
    base = AutoModelForCausalLM.from_pretrained(tiny_folder, dtype=torch.float32)
    here = PeftModel.from_pretrained(base, published).eval()
    with torch.no_grad():
        expected = here(input_ids=torch.tensor(IDS)).logits[0, -1, :8]
    assert torch.allclose(elsewhere, expected, atol=1e-5)
    assert not (tmp_path / "no-qrtrain-cache").exists()


def test_qrtrain_finds_the_base_where_the_recorded_folder_does_not_exist(published, tiny_folder, tmp_path, monkeypatch):
    metadata = json.loads((published / "metadata.json").read_text())
    moved = {**metadata, "base_model": {**metadata["base_model"], "path": "/no/such/machine/path"}}
    assert locate_base(moved) == tiny_folder  # by the model option's name, files checked by hash
    fake_hub_cache(tmp_path / "hub", tiny_folder, HUB_ID)
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # read at import time
    unnamed = {**moved, "base_model": {**moved["base_model"], "name": "not-an-option"}}
    found = locate_base(unnamed)  # by the Hub id, in the local Hugging Face cache
    assert found.parent.name == "snapshots" and sha256_file(found / "model.safetensors") == sha256_file(tiny_folder / "model.safetensors")
    wrong = {**unnamed, "base_model": {**unnamed["base_model"], "files": {"model.safetensors": "0" * 64}}}
    assert locate_base(wrong) == Path("/no/such/machine/path")  # the hashes must match
