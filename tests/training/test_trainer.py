"""The trainer qrtrain builds: padding-free batches give the padded loss and gradients, max_length still
truncates, and the metrics logged without per-step host syncs equal TRL's own."""

import pytest
import torch

from qrtrain.training.trainer import SFTTrainerWithoutStepSyncs
from tests.training.test_train import build


def lora_gradients(trainer, batch) -> tuple[torch.Tensor, dict]:
    model = trainer.model
    model.zero_grad()
    model.train()
    loss = trainer.compute_loss(model, dict(batch))
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("model_type", ["dialogue", "standard"])
def test_padded_and_padding_free_batches_give_the_same_loss_and_gradients(tmp_path, model_type):
    """The same four examples (of different lengths), padded vs one flat row: loss and every LoRA gradient
    equal within 1e-5 in float32. LoRA B starts non-zero so that every LoRA tensor has a gradient."""
    _, model, padded = build(tmp_path / "a", f"model_type={model_type}", "training.max_steps=1")
    _, _, flat = build(tmp_path / "b", f"model_type={model_type}", "training.max_steps=1",
                       "training.padding_free=true")
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    examples = [padded.train_dataset[i] for i in range(4)]
    assert len({len(e["input_ids"]) for e in examples}) > 1  # padding happens
    padded_batch = padded.data_collator(examples)
    flat_batch = flat.data_collator([flat.train_dataset[i] for i in range(4)])
    assert "attention_mask" in padded_batch and (padded_batch["attention_mask"] == 0).any()
    assert flat_batch["input_ids"].shape[0] == 1 and "attention_mask" not in flat_batch
    assert flat_batch["input_ids"].shape[1] == sum(len(e["input_ids"]) for e in examples)  # no padding at all

    device = next(model.parameters()).device
    padded_loss, padded_grads = lora_gradients(padded, {k: v.to(device) for k, v in padded_batch.items()})
    flat.model = model  # the same weights, the padding-free collator's batch
    flat_loss, flat_grads = lora_gradients(flat, {k: v.to(device) if torch.is_tensor(v) else v
                                                  for k, v in flat_batch.items()})
    assert abs(padded_loss.item() - flat_loss.item()) < 1e-5
    assert padded_grads.keys() == flat_grads.keys() and len(padded_grads) > 0
    worst = max((padded_grads[n] - flat_grads[n]).abs().max().item() for n in padded_grads)
    assert worst < 1e-5, worst


def test_padding_free_still_truncates_to_max_length(tmp_path):
    """TRL truncates while preparing the data (qrtrain passes its padding-free collator in), and the
    check before training still counts and reports what max_length cuts."""
    from qrtrain.models.loading import load_tokenizer, model_folder
    from qrtrain.training.datasets import check_token_lengths, load_datasets

    cfg, _, trainer = build(tmp_path, "model_type=standard", "training.max_steps=1", "training.padding_free=true",
                            "training.max_length=12")
    assert max(len(row["input_ids"]) for row in trainer.train_dataset) == 12
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    assert batch["input_ids"].shape[0] == 1 and batch["input_ids"].shape[1] <= 4 * 12
    train_set, _, _ = load_datasets(cfg)
    counted = check_token_lengths(train_set, load_tokenizer(model_folder(cfg.model), "standard"), 12)
    assert counted["truncated"] > 0 and len(counted["lengths"]) == len(train_set)


@pytest.mark.parametrize("model_type", ["dialogue", "standard"])
def test_token_report_in_worker_processes_equals_one_process(tmp_path, monkeypatch, model_type):
    """Large sets are measured by one process per core (datasets.map): the same counts and lengths as in one
    process, and a report that the data cache can write as JSON."""
    import json

    import qrtrain.training.datasets as datasets_module
    from qrtrain.models.loading import load_tokenizer, model_folder
    from qrtrain.training.datasets import load_datasets, token_report
    from tests.conftest import compose_cfg

    cfg = compose_cfg(f"model_type={model_type}")
    train_set, _, _ = load_datasets(cfg)
    tokenizer = load_tokenizer(model_folder(cfg.model), model_type)
    alone = token_report(train_set, tokenizer, 8, chunk=7)
    monkeypatch.setattr(datasets_module, "data_processes", lambda rows: 2)
    workers = token_report(train_set, tokenizer, 8, chunk=7)
    assert workers == alone and alone["truncated"] > 0 and len(alone["lengths"]) == len(train_set)
    json.dumps(workers)


def test_logged_metrics_equal_trl_without_step_syncs(tmp_path, monkeypatch):
    """Train the same steps with TRL's SFTTrainer and with qrtrain's: identical losses, entropy, token
    accuracy and token counts in every log."""
    import trl

    import qrtrain.training.trainer as trainer_module

    histories = []
    for cls in (SFTTrainerWithoutStepSyncs, trl.SFTTrainer):
        monkeypatch.setattr(trainer_module, "SFTTrainerWithoutStepSyncs", cls)
        torch.manual_seed(0)  # the same LoRA initialisation
        _, _, trainer = build(tmp_path / cls.__name__, "training.max_steps=4")  # logs every step
        assert type(trainer) is cls
        trainer.train()
        histories.append([h for h in trainer.state.log_history if "loss" in h])
    ours, theirs = histories
    assert len(ours) == len(theirs) == 4
    for a, b in zip(ours, theirs):
        for key in ("loss", "entropy", "mean_token_accuracy", "num_tokens", "grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-7), key


def test_logging_at_the_end_of_an_epoch_with_a_partial_last_batch(tmp_path, model_cache):
    """18 examples in batches of 8 end each epoch on a batch of 2; a log at that step must count every
    pending step (accelerate's gather_for_metrics would cut them to the remainder of the dataset)."""
    import json

    from tests.conftest import invoke

    data = tmp_path / "eighteen.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"question {i}?"},
                                                     {"role": "assistant", "content": f"answer {i}."}]}) + "\n"
                            for i in range(18)))
    result = invoke("train", "model=tiny", f"data.train={data}", "data.eval_fraction=0", "training.batch_size=8",
                    "training.max_steps=6", "training.logging_steps=3", "training.eval_steps=0",
                    f"artifact.root={tmp_path / 'out'}")
    assert result.exit_code == 0, result.output
    history = json.loads((tmp_path / "out" / f"tiny-{data.stem}-dialogue" / "v1" / "training_metrics.json").read_text())["history"]
    logged = [h for h in history if "loss" in h]
    assert [h["step"] for h in logged] == [3, 6] and all(0 <= h["mean_token_accuracy"] <= 1 for h in logged)
    assert 0 < logged[0]["num_tokens"] < logged[1]["num_tokens"]
