"""training.optim: every optimizer that runs on CPU trains the tiny model (the loss on a repeated batch falls),
with one learning rate and with strategy=finetune's per-layer rates, which the built optimizer keeps; the
paged ones and unknown names are refused with exit 2.

    .venv/bin/pytest tests/training/test_optimizers.py
"""

import dataclasses
from pathlib import Path

import pytest
import torch

from qrtrain.config import OPTIMIZER_PACKAGES, OPTIMIZERS, OPTIMIZERS_NOT_TAKEN
from qrtrain.errors import QrtrainError
from qrtrain.training.strategy import build_optimizer, check_optimizer_device, optimizer_groups
from tests.conftest import compose_cfg, invoke

ON_CPU = [name for name in OPTIMIZERS if not name.startswith("paged_") and name not in OPTIMIZER_PACKAGES]
ALIASES = {"adamw_bnb_8bit": "adamw_8bit", "rmsprop_bnb": "rmsprop_bnb_32bit"}  # the same optimizer, the same settings
STEPS = 4
RATE = {"sgd": 0.5}  # a rate per optimizer where 2e-3 is not one that moves the loss in 4 steps


def test_the_lists_cover_the_trainers_optimizer_names():
    from transformers.training_args import OptimizerNames

    assert set(OPTIMIZERS) | set(OPTIMIZERS_NOT_TAKEN) == {name.value for name in OptimizerNames}
    assert not set(OPTIMIZERS) & set(OPTIMIZERS_NOT_TAKEN)


def test_aliases_build_the_same_optimizer(tiny_trainer):
    from transformers import Trainer

    args = tiny_trainer[1].args
    for alias, name in ALIASES.items():
        built = [Trainer.get_optimizer_cls_and_kwargs(dataclasses.replace(args, optim=n)) for n in (alias, name)]
        assert built[0] == built[1]


@pytest.fixture(scope="module")
def tiny_trainer(tmp_path_factory, model_cache):
    """(cfg, trainer, the initial LoRA weights, a batch of 2): the tiny dialogue model with LoRA, built once."""
    from peft import get_peft_model

    from qrtrain.models import loading
    from qrtrain.training.datasets import load_datasets
    from qrtrain.training.lora import lora_config
    from qrtrain.training.trainer import build_trainer

    # lora.r=64: LoRA matrices of 4096+ values, the size from which bitsandbytes keeps 8-bit state
    cfg = compose_cfg("lora.r=64", "lora.alpha=128", "training.learning_rate=1e-2", "training.warmup_ratio=0",
                      "training.eval_steps=0", "training.logging_steps=1", "training.batch_size=4",
                      "data.eval_fraction=0")
    train_set = load_datasets(cfg)[0].select([0, 1, 2, 3] * 4)  # one batch of 4, repeated
    folder = loading.model_folder(cfg.model)
    torch.manual_seed(0)
    model = get_peft_model(loading.load_model(folder, cfg, "cpu", torch.float32, "sdpa"), lora_config(cfg))
    trainer = build_trainer(cfg, model, loading.load_tokenizer(folder, "dialogue"), train_set, None,
                            tmp_path_factory.mktemp("optim"), "cpu", torch.float32)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    batch = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "labels")}
    initial = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return cfg, trainer, initial, batch


@pytest.mark.parametrize("strategy", ["standard", "finetune"])
@pytest.mark.parametrize("name", [name for name in ON_CPU if name not in ALIASES])
def test_each_optimizer_lowers_the_loss_and_keeps_the_groups(tiny_trainer, name, strategy):
    _, trainer, initial, batch = tiny_trainer
    model = trainer.model
    cfg = compose_cfg(f"strategy={strategy}", f"training.optim={name}",
                      f"training.learning_rate={RATE.get(name, 2e-3)}",
                      *(["strategy.layer_decay=0.5"] if strategy == "finetune" else []))
    torch.manual_seed(0)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.copy_(torch.randn_like(p) * 0.02 if "lora_B" in n else initial[n])  # B != 0: A gets gradients too
    optimizer = build_optimizer(model, cfg, dataclasses.replace(trainer.args, optim=name))
    expected = optimizer_groups(model, cfg)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([g["lr"] for g in expected])
    assert [len(g["params"]) for g in optimizer.param_groups] == [len(g["params"]) for g in expected]
    if strategy == "finetune":
        assert len(optimizer.param_groups) == model.config.num_hidden_layers
    model.train()
    losses = []
    for _ in range(STEPS):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    with torch.no_grad():
        losses.append(model(**batch).loss.item())
    assert losses[-1] < losses[0] - 1e-3, losses
    assert all(torch.isfinite(torch.tensor(losses)))
    state_dtypes = {v.dtype for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v)}
    assert (torch.uint8 in state_dtypes) == ("8bit" in name), state_dtypes


def test_the_trainer_runs_an_8bit_optimizer_with_per_layer_rates(tiny_trainer):
    """Through the Trainer itself (its scheduler scales every group alike): bitsandbytes' 8-bit AdamW is the
    optimizer it steps, and the per-layer ratios hold to the end."""
    import bitsandbytes
    from transformers import TrainerCallback

    from qrtrain.training.trainer import build_trainer

    _, trainer, initial, _ = tiny_trainer
    cfg = compose_cfg("lora.r=64", "lora.alpha=128", "strategy=finetune", "strategy.layer_decay=0.5",
                      "training.optim=adamw_8bit", "training.learning_rate=1e-2", "training.warmup_ratio=0",
                      "training.eval_steps=0", "training.logging_steps=1", "training.batch_size=4",
                      "training.max_steps=4", "training.lr_scheduler=linear")
    with torch.no_grad():
        for n, p in trainer.model.named_parameters():
            if p.requires_grad:
                p.copy_(initial[n])
    eight_bit = build_trainer(cfg, trainer.model, trainer.processing_class, trainer.train_dataset, None,
                              Path(trainer.args.output_dir), "cpu", torch.float32, prepared=True)
    rates = []

    class Rates(TrainerCallback):
        def on_step_end(self, args, state, control, optimizer=None, **kwargs):
            rates.append([g["lr"] for g in optimizer.param_groups])

    eight_bit.add_callback(Rates())
    assert eight_bit.args.optim == "adamw_8bit"
    assert isinstance(eight_bit.optimizer, bitsandbytes.optim.AdamW)
    eight_bit.train()
    losses = [h["loss"] for h in eight_bit.state.log_history if "loss" in h]
    assert len(losses) == 4 and losses[-1] < losses[0], losses
    assert rates[0][-1] > rates[1][-1] > 0  # the linear schedule moved every group's rate ...
    for step in rates[:-1]:  # ... and kept the per-layer ratios (the last step's rates are all 0)
        assert [r / step[-1] for r in step] == pytest.approx([0.5 ** (len(step) - 1 - i) for i in range(len(step))])


@pytest.mark.parametrize("name", [n for n in OPTIMIZERS if n.startswith("paged_")])
def test_paged_optimizers_are_refused_off_cuda(name):
    with pytest.raises(QrtrainError) as caught:
        check_optimizer_device(name, "cpu")
    assert caught.value.exit_code == 2 and "paged optimizers need CUDA" in caught.value.message
    unpaged = caught.value.message.rsplit("training.optim=", 1)[1].split()[0]
    assert unpaged in ON_CPU
    check_optimizer_device(name, "cuda")  # no refusal where they page


def test_paged_optimizer_on_cpu_is_exit_2_before_loading(tmp_path):
    result = invoke("train", "model=tiny", "training.device=cpu", "training.optim=paged_adamw_8bit",
                    f"artifact.root={tmp_path}")
    assert result.exit_code == 2
    assert "paged optimizers need CUDA" in result.output and "training.optim=adamw_8bit" in result.output
    assert not list(tmp_path.glob("*/v*"))


@pytest.mark.parametrize("name, expected", [("adamw", "expected one of adamw_torch, adamw_torch_fused"),
                                            ("galore_adamw", "which LoRA keeps frozen"),
                                            ("lomo", "per-layer learning rates")])
def test_unknown_or_unusable_optimizer_is_exit_2(tmp_path, name, expected):
    result = invoke("train", "model=tiny", f"training.optim={name}", f"artifact.root={tmp_path}")
    assert result.exit_code == 2
    assert f"training.optim='{name}'" in result.output and expected in result.output


def test_an_optimizer_without_its_package_names_it(tmp_path):
    import importlib.util

    name = next(n for n, (module, _) in OPTIMIZER_PACKAGES.items() if importlib.util.find_spec(module) is None)
    result = invoke("train", "model=tiny", f"training.optim={name}", f"artifact.root={tmp_path}")
    assert result.exit_code == 2 and f"pip install {OPTIMIZER_PACKAGES[name][1]}" in result.output
