"""The memory estimate and the gradient-checkpointing decision, for a table of models, batches and devices,
and checkpointing some layers leaving loss and gradients exactly as they were; freed memory going back to the
system during CPU training (slow: the default model's peak RSS with and without it)."""

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qrtrain.training.memory import (
    GIB,
    apply_checkpointing,
    decoder_layers,
    estimate,
    plan_checkpointing,
    plan_for_run,
    tokens_per_micro_batch,
)

SMOLLM2_1_7B = {"hidden": 2048, "intermediate": 8192, "layers": 24, "heads": 32, "kv_heads": 32, "head_dim": 64,
                "vocab": 49152, "tied": True}
LLAMA_3_1_8B = {"hidden": 4096, "intermediate": 14336, "layers": 32, "heads": 32, "kv_heads": 8, "head_dim": 128,
                "vocab": 128256, "tied": False}
H100_FREE = 79 * GIB


def plan(dims, tokens, free, setting="auto", quantization="none", dropout=0.0):
    return plan_checkpointing(dims, tokens, free, setting, 2, quantization, 16, "all-linear", dropout)


# (case, dims, tokens per micro-batch, free memory, setting, quantization, lora dropout, expected layers or error)
TABLE = [
    # The issue's out-of-memory run: batch 16 padded towards max_length 2048, dropout 0.05, on an 80 GB H100.
    ("1.7B padded 16x2048, dropout", SMOLLM2_1_7B, 16 * 2048, H100_FREE, "auto", "none", 0.05, "some"),
    ("1.7B padding-free typical batch", SMOLLM2_1_7B, 16 * 300, H100_FREE, "auto", "none", 0.0, 0),
    ("1.7B padded 16x2048 on a 20 GB card", SMOLLM2_1_7B, 16 * 2048, 18 * GIB, "auto", "none", 0.0, 24),
    ("1.7B padded 16x2048 on an 8 GB card", SMOLLM2_1_7B, 16 * 2048, 8 * GIB, "auto", "none", 0.0, "lower training.batch_size"),
    ("1.7B forced off where it cannot fit", SMOLLM2_1_7B, 16 * 2048, H100_FREE, False, "none", 0.0, "=auto"),
    ("1.7B forced on", SMOLLM2_1_7B, 16 * 300, H100_FREE, True, "none", 0.0, 24),
    ("8B nf4 16 long examples", LLAMA_3_1_8B, 16 * 1250, H100_FREE, "auto", "nf4", 0.0, "some"),
    ("8B nf4 typical batch", LLAMA_3_1_8B, 16 * 300, H100_FREE, "auto", "nf4", 0.0, 0),
    ("8B bf16 padded on a 24 GB card", LLAMA_3_1_8B, 16 * 2048, 22 * GIB, "auto", "none", 0.0, "quantization=nf4"),
    ("CPU: no device limit", SMOLLM2_1_7B, 16 * 2048, None, "auto", "none", 0.0, 0),
]


@pytest.mark.parametrize("case,dims,tokens,free,setting,quantization,dropout,expected", TABLE, ids=[r[0] for r in TABLE])
def test_checkpointing_decision(case, dims, tokens, free, setting, quantization, dropout, expected):
    chosen = plan(dims, tokens, free, setting, quantization, dropout)
    if isinstance(expected, str) and expected not in ("some",):
        # an estimate is never a refusal: the run starts, warned, with what to change if it runs out
        assert chosen.warning is not None and expected in chosen.warning and "starting anyway" in chosen.warning
        assert chosen.checkpointed_layers == (0 if setting is False else dims["layers"])
        return
    assert chosen.warning is None
    if expected == "some":
        assert 0 < chosen.checkpointed_layers < dims["layers"], chosen.line()
    else:
        assert chosen.checkpointed_layers == expected, chosen.line()
    if free is not None:
        assert chosen.needed <= free
    if setting == "auto" and free is not None and chosen.checkpointed_layers > 0:  # the fewest layers that fit
        fewer = estimate(dims, tokens, chosen.checkpointed_layers - 1, 2, quantization, 16, "all-linear", dropout)
        assert sum(fewer.values()) > free
    assert "gradient checkpointing" in chosen.line() and "GiB" in chosen.line()


def test_the_issue_oom_is_predicted():
    """Without checkpointing, the issue's run (batch 16 padded to ~2048, dropout 0.05) needs more than 80 GB."""
    parts = estimate(SMOLLM2_1_7B, 16 * 2048, 0, 2, "none", 16, "all-linear", 0.05)
    assert sum(parts.values()) > 80 * GIB


def test_estimate_moves_the_right_way():
    base = sum(estimate(SMOLLM2_1_7B, 8192, 0, 2).values())
    assert sum(estimate(SMOLLM2_1_7B, 16384, 0, 2).values()) > base  # more tokens
    assert sum(estimate(SMOLLM2_1_7B, 8192, 12, 2).values()) < base  # checkpointing
    assert sum(estimate(SMOLLM2_1_7B, 8192, 0, 2, lora_dropout=0.05).values()) > base  # dropout copies
    assert sum(estimate(SMOLLM2_1_7B, 8192, 0, 4).values()) > base  # float32
    nf4 = estimate(LLAMA_3_1_8B, 4096, 0, 2, "nf4")["weights"]
    assert nf4 < 0.4 * estimate(LLAMA_3_1_8B, 4096, 0, 2, "none")["weights"]
    # LoRA r16 on every linear layer of the 1.7B model: 18.1M parameters, 16 bytes each (weights, grads, AdamW)
    assert estimate(SMOLLM2_1_7B, 1, 0, 2)["lora+optimizer"] == 24 * 16 * (4 * 4096 + 3 * (2048 + 8192)) * 16


def test_tokens_per_micro_batch():
    lengths = [100, 700, 3000, 50, 400]
    assert tokens_per_micro_batch(lengths, 2, 2048, padding_free=True)[1] == 2048 + 700
    assert tokens_per_micro_batch(lengths, 2, 2048, padding_free=False)[1] == 2 * 2048
    assert tokens_per_micro_batch(lengths, 8, 512, padding_free=True) == (512 + 512 + 400 + 100 + 50,) * 2
    assert tokens_per_micro_batch([], 4, 256, padding_free=False) == (256, 256)
    typical, largest = tokens_per_micro_batch(lengths * 20, 2, 2048, padding_free=True)
    assert typical <= largest == 2 * 2048


def bench_lengths() -> list[int]:
    """The long-tailed lengths of scripts/bench_gpu.py's 3,000 examples (median answer 200, tail to 1,200)."""
    import math
    import random

    rng = random.Random(0)
    return [7 + rng.randint(20, 60) + min(1200, max(8, round(math.exp(rng.gauss(math.log(200), 0.7)))))
            for _ in range(3000)]


@pytest.mark.parametrize("dims,quantization,budget_gb", [(SMOLLM2_1_7B, "none", 11.4), (LLAMA_3_1_8B, "nf4", 16.5)],
                         ids=["1.7B at plain TRL's 11.4 GB", "8B nf4 at ~16.5 GB"])
def test_the_plan_is_sized_by_the_batches_the_sampler_makes(dims, quantization, budget_gb):
    """bench_gpu's memory-matched run: sized for the 16 longest examples (~19.7k tokens) it asked 12.6 GiB (1.7B)
    or 24.2 GiB (8B nf4) and refused; sized by what random batches of these lengths hold, it fits."""
    typical, largest = tokens_per_micro_batch(bench_lengths(), 16, 2048, padding_free=True)
    assert largest > 15_000 and typical < 0.5 * largest
    worst = plan_checkpointing(dims, largest, int(budget_gb * 1e9), "auto", 2, quantization, 16, "all-linear", 0.0)
    assert worst.warning is not None  # the old sizing could not fit even with every layer checkpointed
    chosen = plan_checkpointing(dims, typical, int(budget_gb * 1e9), "auto", 2, quantization, 16, "all-linear", 0.0,
                                largest)
    assert chosen.warning is None and chosen.needed <= budget_gb * 1e9
    assert "checkpoints all layers" in chosen.line() or chosen.checkpointed_layers == dims["layers"]


def test_cpu_plan_is_off_unless_forced(tiny_folder):
    from tests.conftest import compose_cfg

    cfg = compose_cfg()
    assert plan_for_run(cfg, tiny_folder, [30, 40], "cpu", torch.float32, False).checkpointed_layers == 0
    assert plan_for_run(cfg, tiny_folder, [30, 40], "cpu", torch.float32, False).warning is None
    forced = compose_cfg("training.gradient_checkpointing=true")
    assert plan_for_run(forced, tiny_folder, [30, 40], "cpu", torch.float32, False).checkpointed_layers == 2


def test_checkpointing_some_layers_keeps_loss_and_gradients(tiny_folder):
    """Layer 0 checkpointed, layer 1 not: the same loss and LoRA gradients as without checkpointing."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    results = []
    for layers in (0, 1):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(tiny_folder, dtype=torch.float32)
        model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
        apply_checkpointing(model, layers)
        flags = [m.gradient_checkpointing for m in model.base_model.model.model.layers]
        assert flags == [layers > 0, False]
        model.train()
        ids = torch.arange(5, 45).reshape(2, 20)
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert torch.equal(loss_a, loss_b)
    assert all(torch.allclose(grads_a[n], grads_b[n], atol=1e-7) for n in grads_a)


def test_a_batch_above_the_plan_checkpoints_every_layer_for_its_step(tmp_path):
    """The plan's fallback: a micro-batch with more tokens than planned runs with every layer checkpointed,
    and the next normal batch with the plan's layers again."""
    from tests.training.test_train import build

    _, model, trainer = build(tmp_path, "training.max_steps=1")
    unplanned = apply_checkpointing(model, 0, fallback=True)
    assert len(unplanned) == 2 and not any(layer.gradient_checkpointing for layer in unplanned)
    seen = []
    for layer in unplanned:
        layer.register_forward_pre_hook(lambda module, args: seen.append(module.gradient_checkpointing))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    trainer.current_gradient_accumulation_steps = 1  # what train() sets before its first step
    trainer.checkpoint_above = (batch["input_ids"].numel() - 1, unplanned)
    trainer.training_step(model, dict(batch))
    assert seen == [True, True] and not any(layer.gradient_checkpointing for layer in unplanned)
    seen.clear()
    trainer.checkpoint_above = (batch["input_ids"].numel(), unplanned)
    trainer.training_step(model, dict(batch))
    assert seen == [False, False]


def test_partial_checkpointing_of_a_vision_language_model_picks_text_layers(tmp_path):
    """k is computed for the text decoder's layers; the vision tower's layers are never among the first k."""
    from tests.training.test_train import build

    _, model, _ = build(tmp_path, "model=tiny-vlm", "model_type=multimodal", "training.max_steps=1")
    from transformers.modeling_layers import GradientCheckpointingLayer

    named = {id(m): n for n, m in model.named_modules() if isinstance(m, GradientCheckpointingLayer)}
    text = decoder_layers(model)
    assert text and all("language_model" in named[id(m)] for m in text)
    assert len(named) > len(text)  # the vision tower has checkpointable layers too
    apply_checkpointing(model, 1)
    on = [n for n, m in model.named_modules() if isinstance(m, GradientCheckpointingLayer) and m.gradient_checkpointing]
    assert on == [named[id(text[0])]]


def test_the_activation_estimate_is_what_backward_keeps():
    """Calibration: the bytes autograd keeps for backward (saved_tensors_hooks, each storage once, weights
    not counted) in one bf16 forward of a small Llama prepared as qrtrain prepares it (LoRA r16 on every
    linear layer, LoRA inputs kept bf16), per token and layer, against the estimate's figure. Measured:
    12,598 bytes against 12,992 estimated (+3%; before counting RMSNorm's float32 copies: -5%)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig

    from qrtrain.training.lora import keep_lora_inputs_in_compute_dtype

    dims = {"hidden": 256, "intermediate": 1024, "layers": 4, "heads": 8, "kv_heads": 2, "head_dim": 32,
            "vocab": 2048, "tied": True}
    config = LlamaConfig(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=8,
                         num_key_value_heads=2, vocab_size=2048, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, attn_implementation="sdpa")
    model = get_peft_model(model, LoraConfig(r=16, target_modules="all-linear", lora_dropout=0.0))
    keep_lora_inputs_in_compute_dtype(model, torch.bfloat16)
    model.train()
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = {}

    def keep(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    ids = torch.randint(0, 2048, (4, 256))
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        model.base_model.model.model(input_ids=ids)
    tokens = ids.numel()
    final_norm = tokens * dims["hidden"] * (4 + 2)
    measured = (sum(saved.values()) - final_norm) / tokens / dims["layers"]
    estimated = estimate(dims, tokens, 0, 2)["activations"] / tokens / (dims["layers"] + 1)
    assert 1.0 <= estimated / measured < 1.1, (estimated, measured)  # never below what backward keeps


def test_the_lm_head_term_is_trls_chunked_head():
    """TRL 1.16's fused head projects [4096 tokens x 32768 vocabulary] tiles, one buffer at a time: the
    estimate's head is that tile plus per-token hidden states and statistics, not [4096 x vocab] float32 logits."""
    from trl.kernels.chunked_logprob import TOKEN_CHUNK_SIZE
    from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE

    for dims in (SMOLLM2_1_7B, LLAMA_3_1_8B):
        tokens = 16_000
        tile = TOKEN_CHUNK_SIZE * min(dims["vocab"], _CHUNKED_LOGPROB_CHUNK_SIZE) * 2
        per_token = tokens * (dims["hidden"] * (2 + 4) + 7 * 4)
        assert estimate(dims, tokens, 0, 2)["lm head"] == tile + per_token


def test_release_freed_memory_only_where_it_pays():
    from qrtrain.training.memory import release_freed_memory

    assert not release_freed_memory(False, "cpu", 8 * GIB)
    assert not release_freed_memory("auto", "cuda", 8 * GIB)
    assert not release_freed_memory("auto", "cpu", GIB)  # small steps: glibc's heap reuse is faster
    if sys.platform == "linux" and platform.libc_ver()[0] == "glibc":
        assert release_freed_memory("auto", "cpu", 3 * GIB)
        assert release_freed_memory(True, "cpu", 0)


PEAK_RSS = """import resource, subprocess, sys
subprocess.run(sys.argv[1:], check=True, capture_output=True)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"""


@pytest.mark.slow
@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's mallopt")
def test_released_memory_lowers_peak_rss_of_cpu_training(tmp_path, monkeypatch):
    """The default model at batch 8 x 256 tokens (2.6 GB of activations), 2 steps, as the previous release ran
    it (glibc's heap, 4 KiB pages: 7.45 GB measured) and as it runs now (huge pages, freed tensors returned to
    the system: 5.61 GB)."""
    monkeypatch.delenv("QRTRAIN_CACHE", raising=False)  # the default model, from the user's cache
    rows = [json.dumps({"instruction": "describe the harbour " * 20, "input": "", "output": "ships and salt " * 150})
            for _ in range(16)]
    (tmp_path / "long.jsonl").write_text("\n".join(rows) + "\n")
    qrtrain = str(Path(sys.executable).parent / "qrtrain")
    peak = {}
    for setting, huge_pages in (("false", "0"), ("auto", "1")):
        command = [qrtrain, "train", f"data.train={tmp_path / 'long.jsonl'}", "model_type=standard",
                   "training.max_steps=2", "training.max_length=256", "training.batch_size=8", "data.eval_fraction=0",
                   "checkpoint.every_steps=0", "resume=never", f"artifact.root={tmp_path / setting}",
                   f"training.release_freed_memory={setting}"]
        env = {**os.environ, "THP_MEM_ALLOC_ENABLE": huge_pages}
        result = subprocess.run([sys.executable, "-c", PEAK_RSS, *command], capture_output=True, text=True, env=env)
        assert result.returncode == 0, result.stderr[-3000:]
        peak[setting] = int(result.stdout) / 2**20  # GiB
    assert peak["auto"] < peak["false"] - 1.0, peak


@pytest.mark.parametrize("method,sides,reference", [("sft", 1, False), ("dpo", 2, True), ("kto", 1, True),
                                                    ("orpo", 2, False), ("simpo", 2, False)])
def test_preference_plans_count_both_answers_and_the_reference_forward(tiny_folder, method, sides, reference):
    from tests.conftest import compose_cfg

    cfg = compose_cfg(f"method={method}", "training.batch_size=4")
    plan = plan_for_run(cfg, tiny_folder, [30, 40, 50, 60, 70], "cpu", torch.float32, False)
    assert plan.tokens == sides * 4 * 70 and ("reference" in plan.parts) == reference
    with_reference = estimate(LLAMA_3_1_8B, 8192, 0, 2, reference=True)
    without = estimate(LLAMA_3_1_8B, 8192, 0, 2)
    assert with_reference["reference"] > 0 and sum(with_reference.values()) > sum(without.values())
