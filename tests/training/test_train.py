"""Real training of the tiny model for every model_type x strategy x quantization.

Each run trains a few steps on one repeated batch and checks what happened:
the loss on that batch went down, LoRA weights changed, base weights are
bit-identical, and only LoRA parameters were trainable.
"""

import itertools
from pathlib import Path

import pytest
import torch

from qrtrain.models import loading as models
from qrtrain.training.attention import choose_attention
from qrtrain.training.datasets import load_datasets
from qrtrain.training.lora import check_only_lora_trainable, lora_config
from qrtrain.training.strategy import optimizer_groups
from qrtrain.training.trainer import build_trainer
from tests.conftest import compose_cfg

MATRIX = list(itertools.product(["standard", "dialogue"], ["standard", "finetune"], ["none", "nf4", "int8"]))


def build(tmp_path: Path, *overrides: str):
    from peft import get_peft_model

    cfg = compose_cfg(*overrides, "training.learning_rate=1e-2", "training.warmup_ratio=0", "training.eval_steps=0",
                      "training.logging_steps=1", "training.batch_size=4", "data.eval_fraction=0")
    train_set, _, _ = load_datasets(cfg)
    train_set = train_set.select([0, 1, 2, 3] * 4)  # one batch of 4, repeated
    folder = models.model_folder(cfg.model)
    tokenizer = models.load_tokenizer(folder, cfg.model_type.name)
    device = models.resolve_device(cfg.training.device)  # CUDA where there is one, as `qrtrain train` does
    padding_free, attention = choose_attention(cfg.training.padding_free, cfg.model_type.name, device, torch.float32)
    model = get_peft_model(models.load_model(folder, cfg, device, torch.float32, attention), lora_config(cfg))
    trainer = build_trainer(cfg, model, tokenizer, train_set, None, tmp_path, device, torch.float32,
                            padding_free=padding_free)
    return cfg, model, trainer


def batch_loss(trainer) -> float:
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    device = next(trainer.model.parameters()).device
    trainer.model.eval()
    with torch.no_grad():
        keys = ("input_ids", "attention_mask", "labels", "pixel_values", "position_ids")
        loss = trainer.model(**{k: v.to(device) for k, v in batch.items() if k in keys}).loss
    trainer.model.train()
    return loss.item()


def snapshot(model, lora: bool) -> dict:
    return {n: t.detach().clone() for n, t in model.state_dict().items() if ("lora_" in n) == lora}


@pytest.mark.parametrize("model_type,strategy,quantization", MATRIX, ids=["-".join(c) for c in MATRIX])
def test_training_moves_only_lora(tmp_path, model_type, strategy, quantization):
    cfg, model, trainer = build(tmp_path, f"model_type={model_type}", f"strategy={strategy}",
                                f"quantization={quantization}", "training.max_steps=6")
    trainable, total = check_only_lora_trainable(model)
    assert 0 < trainable < total
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    base_before, lora_before = snapshot(model, lora=False), snapshot(model, lora=True)
    loss_before = batch_loss(trainer)

    trainer.train()

    assert trainer.state.global_step == 6
    loss_after = batch_loss(trainer)
    assert loss_after < loss_before - 0.05, (loss_before, loss_after)
    base_after, lora_after = snapshot(model, lora=False), snapshot(model, lora=True)
    assert base_after.keys() == base_before.keys()
    assert all(torch.equal(base_before[n], base_after[n]) for n in base_before), "base weights changed"
    changed = [n for n in lora_before if not torch.equal(lora_before[n], lora_after[n])]
    assert len(changed) == len(lora_before), f"{len(lora_before) - len(changed)} LoRA tensors did not change"
    if quantization != "none":
        assert any(type(m).__module__.startswith("bitsandbytes") for m in model.modules())


def test_finetune_optimizer_groups_carry_decayed_learning_rates(tmp_path):
    cfg, model, trainer = build(tmp_path, "strategy=finetune", "strategy.layer_decay=0.5", "training.max_steps=1")
    lr, layers = cfg.training.learning_rate, model.config.num_hidden_layers
    groups = optimizer_groups(model, cfg)
    for group in groups:
        for name in group["names"]:
            layer = int(name.split(".layers.")[1].split(".")[0])
            assert group["lr"] == pytest.approx(lr * 0.5 ** (layers - 1 - layer)), name
    assert sorted(g["lr"] for g in groups) == pytest.approx([lr * 0.5 ** (layers - 1 - i) for i in range(layers)])
    optimizer = trainer.create_optimizer()
    assert sorted(g["lr"] for g in optimizer.param_groups) == pytest.approx(sorted(g["lr"] for g in groups))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == trainable


def test_layer_rates_set_embeddings_and_head_apart():
    from qrtrain.training.strategy import layer_learning_rate

    assert layer_learning_rate("model.embed_tokens.weight", 4, 1.0, 0.5) == 0.5**4
    assert layer_learning_rate("model.layers.0.self_attn.q_proj.lora_A.weight", 4, 1.0, 0.5) == 0.5**3
    assert layer_learning_rate("model.layers.3.mlp.up_proj.lora_B.weight", 4, 1.0, 0.5) == 1.0
    assert layer_learning_rate("lm_head.weight", 4, 1.0, 0.5) == 1.0


def summed_loss(trainer) -> tuple[float, int]:
    """Total loss over every label token of one epoch of the trainer's dataloader, at the current weights."""
    total, count = 0.0, 0
    device = next(trainer.model.parameters()).device
    trainer.model.eval()
    with torch.no_grad():
        for batch in trainer.get_train_dataloader():
            tokens = int((batch["labels"][:, 1:] != -100).sum())
            keys = ("input_ids", "attention_mask", "labels", "position_ids")
            loss = trainer.model(**{k: v.to(device) for k, v in batch.items() if k in keys}).loss
            total, count = total + loss.item() * tokens, count + tokens
    return total, count


@pytest.mark.parametrize("model_type", ["dialogue", "standard"])
def test_packed_sequences_do_not_attend_across_examples(tmp_path, model_type):
    """Packing changes the batches, not the loss: packed examples see only themselves."""
    _, _, padded = build(tmp_path / "a", f"model_type={model_type}", "training.max_steps=1")
    _, _, packed = build(tmp_path / "b", f"model_type={model_type}", "training.max_steps=1", "training.packing=true",
                         "training.max_length=256")
    batch = next(iter(packed.get_train_dataloader()))
    assert "position_ids" in batch and batch["input_ids"].shape[0] == 1  # padding-free: one flat row
    assert (batch["position_ids"][0] == 0).sum() > 1  # several examples in it
    padded_total, padded_count = summed_loss(padded)
    packed_total, packed_count = summed_loss(packed)
    assert packed_count == padded_count
    assert packed_total / packed_count == pytest.approx(padded_total / padded_count, rel=1e-4)


def test_bf16_lora_inputs_stay_bf16_and_train_alike(tiny_folder):
    """On a bf16 base under autocast (as the Trainer runs it), LoRA inputs are no longer copied to float32:
    the loss and LoRA gradients stay those of PEFT's casting path, within bf16 rounding."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from qrtrain.training.lora import keep_lora_inputs_in_compute_dtype

    results = []
    for keep in (False, True):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(tiny_folder, dtype=torch.bfloat16)
        model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
        assert keep_lora_inputs_in_compute_dtype(model, torch.bfloat16 if keep else torch.float32) == (14 if keep else 0)
        seen = []
        model.base_model.model.model.layers[0].self_attn.q_proj.lora_A["default"].register_forward_pre_hook(
            lambda module, args: seen.append(args[0].dtype))
        ids = torch.arange(5, 45).reshape(2, 20)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        assert seen == [torch.bfloat16 if keep else torch.float32]
        results.append((loss.float().item(), {n: p.grad.float() for n, p in model.named_parameters() if p.requires_grad}))
    (cast_loss, cast_grads), (kept_loss, kept_grads) = results
    assert abs(cast_loss - kept_loss) < 2e-2
    for name in cast_grads:
        scale = cast_grads[name].abs().max().item() + 1e-6
        assert (cast_grads[name] - kept_grads[name]).abs().max().item() / scale < 5e-2, name


def test_training_on_a_new_file_publishes_its_own_artifact_and_list_shows_its_data(tmp_path):
    """The default artifact.name keeps data apart: the demo's artifact does not get the new file's version."""
    import json

    from tests.conftest import invoke

    root = tmp_path / "out"
    data = tmp_path / "Harbour Notes.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Tide {i}?"},
                                                    {"role": "assistant", "content": f"Tide {i} is high."}]}) + "\n"
                            for i in range(12)))
    common = ["model=tiny", "training.max_steps=1", "training.eval_steps=0", f"artifact.root={root}"]
    assert invoke("train", *common).exit_code == 0
    assert invoke("train", *common, f"data.train={data}").exit_code == 0
    assert sorted(str(p.relative_to(root)) for p in root.glob("*/v*")) == [
        "tiny-dialogue/v1", "tiny-harbour-notes-dialogue/v1"]
    rows = {r["artifact"]: r for r in json.loads(invoke("list", "--root", root, "--json").output)}
    train = next(d for d in rows["tiny-harbour-notes-dialogue"]["data"] if d["role"] == "train")
    assert train["source"] == "Harbour Notes.jsonl" and train["rows"] == 12 and len(train["sha256"]) == 64
    assert "harbour" not in json.dumps(rows["tiny-dialogue"]["data"]).lower()
    assert "Harbour Notes.jsonl" in invoke("list", "--root", root).output
