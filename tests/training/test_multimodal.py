"""model_type=multimodal: a tiny vision-language model trains, publishes, verifies and evaluates."""

import json

import pytest
import torch

from tests.conftest import invoke
from tests.training.test_train import batch_loss, build, snapshot


def test_tiny_vlm_trains_language_lora_only(tmp_path):
    cfg, model, trainer = build(tmp_path, "model=tiny-vlm", "model_type=multimodal", "training.max_steps=6")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and "language_model" in n for n in trainable)
    vision = {n: p.detach().clone() for n, p in model.named_parameters() if "vision_tower" in n or "multi_modal_projector" in n}
    assert vision
    base_before, lora_before = snapshot(model, lora=False), snapshot(model, lora=True)
    assert "pixel_values" in trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    loss_before = batch_loss(trainer)
    trainer.train()
    assert batch_loss(trainer) < loss_before - 0.05
    assert all(torch.equal(base_before[n], t) for n, t in snapshot(model, lora=False).items())
    assert all(torch.equal(vision[n], p) for n, p in model.named_parameters() if n in vision)
    assert all(not torch.equal(lora_before[n], t) for n, t in snapshot(model, lora=True).items())


def test_multimodal_artifact_publishes_verifies_and_evaluates(tmp_path):
    result = invoke("train", "model=tiny-vlm", "model_type=multimodal", "training.max_steps=3", f"artifact.root={tmp_path}")
    assert result.exit_code == 0, result.output
    version = tmp_path / "tiny-vlm-multimodal" / "v1"
    assert invoke("verify", version).exit_code == 0
    assert (version / "processor_config.json").is_file()
    result = invoke("evaluate", version, "generation.max_new_tokens=4", f"output_dir={tmp_path / 'eval'}")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["metrics"]["loss"]["mean"] > 0 and len(report["items"]) == 6


@pytest.mark.parametrize("overrides,expected", [
    (["model=tiny", "model_type=multimodal"], "needs a vision-language model"),
    (["model=tiny", "model_type=dialogue", "data.train={shapes}"], "use model_type=multimodal"),
])
def test_mismatched_model_and_data_are_refused(tmp_path, overrides, expected):
    from qrtrain.data.rows import DEMO_DIR

    overrides = [o.format(shapes=DEMO_DIR / "shapes_train.jsonl") for o in overrides]
    result = invoke("train", *overrides, "training.max_steps=1", f"artifact.root={tmp_path}")
    assert result.exit_code == 2 and expected in result.output, result.output
    assert not list(tmp_path.glob("*/v1"))


def test_missing_image_is_named(tmp_path):
    row = {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]},
                        {"role": "assistant", "content": "Red."}], "images": ["nope.png"]}
    (tmp_path / "d.jsonl").write_text(json.dumps(row) + "\n")
    result = invoke("train", "model=tiny-vlm", "model_type=multimodal", f"data.train={tmp_path / 'd.jsonl'}",
                    f"artifact.root={tmp_path / 'out'}")
    assert result.exit_code == 2 and "d.jsonl line 1: images[0] cannot be opened" in result.output
