"""GPU memory a run needs, and how many decoder layers to checkpoint so that it fits.

    qrtrain train training.gradient_checkpointing=auto    # the default: estimated, decided, printed in one line
    qrtrain train training.gradient_checkpointing=true    # every layer; false: none

The estimate is made before the model is loaded, from the model's config, the LoRA settings, the
dtype and the tokens the sampler's micro-batches really hold: the 99th percentile of random batches
of the data's own lengths (padding-free: their sum; padded: batch_size times their longest), not the
worst case of the `batch_size` longest examples landing together. Checkpointing k of L layers keeps
only those layers' inputs for backward and recomputes one layer at a time. The smallest k that fits
the device's free memory wins. A rarer, larger batch checkpoints every layer for its own step and
says so once (the trainer's `training_step`). An estimate is never a refusal: when even every layer
checkpointed does not fit, the run says so with what to change, and starts. On CPU there is nothing
to plan: checkpointing is off unless forced.
"""

from dataclasses import dataclass, field

GIB = 1024**3
# CUDA context, cuBLAS workspaces and allocator fragmentation, beyond what the tensors need.
RESERVE_FRACTION = 0.10
RESERVE_BYTES = 1 * GIB
WEIGHT_BYTES = {"none": None, "int8": 1.0, "nf4": 0.53}  # nf4 + double-quantised absmax; None: the compute dtype
# TRL's fused LM head (trl/kernels/chunked_logprob.py) projects [4096 tokens, 32768 vocabulary] tiles in the
# compute dtype, one tile buffer at a time, and keeps seven float32 statistics per token
LOGITS_CHUNK_TOKENS = 4096
LOGITS_CHUNK_VOCAB = 32768


@dataclass
class MemoryPlan:
    """The decision and the numbers behind it (bytes)."""
    checkpointed_layers: int
    num_layers: int
    needed: int
    free: int | None
    tokens: int
    parts: dict = field(default_factory=dict)
    largest_tokens: int | None = None  # the largest micro-batch the data can produce
    warning: str | None = None  # the estimate exceeds the free memory even so

    def line(self) -> str:
        where = f"of {self.free / GIB:.1f} GiB free" if self.free is not None else "(no device limit)"
        parts = ", ".join(f"{name} {size / GIB:.1f}" for name, size in self.parts.items())
        choice = ("off" if self.checkpointed_layers == 0 else "all layers" if self.checkpointed_layers == self.num_layers
                  else f"{self.checkpointed_layers} of {self.num_layers} layers")
        larger = ""
        if self.largest_tokens and self.largest_tokens > self.tokens and self.checkpointed_layers < self.num_layers:
            larger = f"; a batch above {self.tokens:,} tokens (at most {self.largest_tokens:,}) checkpoints all layers"
        return (f"memory: estimate {self.needed / GIB:.1f} GiB {where} for {self.tokens:,} tokens per micro-batch "
                f"({parts} GiB); gradient checkpointing {choice}{larger}")


def model_dims(config) -> dict:
    """The sizes the estimate needs, from a transformers config (the text model's, for vision-language models)."""
    text = getattr(config, "text_config", None) or config
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return {
        "hidden": text.hidden_size,
        "intermediate": text.intermediate_size,
        "layers": text.num_hidden_layers,
        "heads": heads,
        "kv_heads": getattr(text, "num_key_value_heads", None) or heads,
        "head_dim": head_dim,
        "vocab": text.vocab_size,
        "tied": bool(getattr(text, "tie_word_embeddings", False)),
    }


def layer_linears(dims: dict) -> dict:
    """(in, out) features of each linear layer of one Llama-style decoder layer."""
    h, i, q, kv = dims["hidden"], dims["intermediate"], dims["heads"] * dims["head_dim"], dims["kv_heads"] * dims["head_dim"]
    return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
            "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}


def estimate(dims: dict, tokens: int, checkpointed: int, dtype_bytes: int, quantization: str = "none",
             lora_r: int = 16, lora_targets="all-linear", lora_dropout: float = 0.0, reference: bool = False) -> dict:
    """Bytes by part: weights, LoRA (weights, gradients, AdamW state), activations, LM head, reserve; and, for
    DPO and KTO, the reference forward (no gradients: one layer's hidden states in flight and the LM head's tile,
    freed before the policy's backward)."""
    linears = layer_linears(dims)
    targets = linears if lora_targets == "all-linear" else {n: linears[n] for n in lora_targets if n in linears}
    h, layers = dims["hidden"], dims["layers"]
    layer_params = sum(a * b for a, b in linears.values())
    weight_bytes = WEIGHT_BYTES.get(quantization) or dtype_bytes
    embeddings = dims["vocab"] * h * (1 if dims["tied"] else 2)
    weights = layers * layer_params * weight_bytes + embeddings * dtype_bytes
    lora_params = layers * sum(lora_r * (a + b) for a, b in targets.values())
    lora = lora_params * (4 + 4 + 8)  # fp32 weights, gradients, AdamW's two moments

    # Saved for backward, per token and layer: the norms' inputs and outputs, q/k/v after RoPE, the attention
    # output (FlashAttention keeps no score matrix), and the MLP's gate, up, activation and product.
    # LlamaRMSNorm computes in float32: each of the two norms keeps a float32 copy of its input and its output.
    q, kv, i = dims["heads"] * dims["head_dim"], dims["kv_heads"] * dims["head_dim"], dims["intermediate"]
    per_token = 2 * h * (max(4, dtype_bytes) + dtype_bytes) + dtype_bytes * (2 * q + 2 * kv + 4 * i)
    per_token += sum(lora_r * 4 for _ in targets)  # lora_A outputs
    if lora_dropout > 0:  # each LoRA layer keeps its own dropped-out copy of its input, and the mask
        per_token += sum(a * (dtype_bytes + 1) for a, _ in targets.values())
    kept = (layers - checkpointed) * per_token + checkpointed * h * dtype_bytes
    recompute = per_token if checkpointed else 0
    activations = tokens * (kept + recompute + per_token)  # + one layer's gradients in flight during backward
    head = (tokens * (h * (dtype_bytes + 4) + 7 * 4)  # the final hidden states, their float32 gradient, statistics
            + min(tokens, LOGITS_CHUNK_TOKENS) * min(dims["vocab"], LOGITS_CHUNK_VOCAB) * dtype_bytes)
    parts = {"weights": weights, "lora+optimizer": lora, "activations": activations, "lm head": head}
    if reference:
        parts["reference"] = (tokens * (3 * h * max(4, dtype_bytes) + 7 * 4)
                              + min(tokens, LOGITS_CHUNK_TOKENS) * min(dims["vocab"], LOGITS_CHUNK_VOCAB) * dtype_bytes)
    subtotal = sum(parts.values())
    parts["reserve"] = RESERVE_BYTES + RESERVE_FRACTION * subtotal
    return {name: int(size) for name, size in parts.items()}


def tokens_per_micro_batch(lengths: list[int], batch_size: int, max_length: int, padding_free: bool,
                           quantile: float = 0.99, draws: int = 2000) -> tuple[int, int]:
    """(the tokens of a micro-batch at this quantile of the sampler's random batches, the most any batch can
    hold): padding-free a batch holds the sum of its lengths, padded `batch_size` times its longest."""
    import random

    lengths = [min(n, max_length) for n in lengths] or [max_length]

    def tokens(batch: list[int]) -> int:
        return sum(batch) if padding_free else len(batch) * max(batch)

    largest = tokens(sorted(lengths, reverse=True)[:batch_size])
    if len(lengths) <= batch_size:
        return largest, largest
    draw = random.Random(0)
    sizes = sorted(tokens(draw.sample(lengths, batch_size)) for _ in range(draws))
    return sizes[min(len(sizes) - 1, int(quantile * len(sizes)))], largest


def plan_checkpointing(dims: dict, tokens: int, free: int | None, setting, dtype_bytes: int, quantization: str,
                       lora_r: int, lora_targets, lora_dropout: float, largest_tokens: int | None = None,
                       reference: bool = False) -> MemoryPlan:
    """How many layers to checkpoint: all (setting true), none (false), or the fewest that fit (auto). Where
    none fits, the plan carries a warning (with what to change) instead of refusing: the estimate is not
    the device, and a real out-of-memory error is reported with the same advice."""
    layers = dims["layers"]

    def plan(k: int) -> MemoryPlan:
        parts = estimate(dims, tokens, k, dtype_bytes, quantization, lora_r, lora_targets, lora_dropout, reference)
        return MemoryPlan(k, layers, sum(parts.values()), free, tokens, parts, largest_tokens)

    if setting is True or setting is False:
        chosen = plan(layers if setting else 0)
    elif free is None:
        chosen = plan(0)
    else:
        chosen = next((p for p in map(plan, range(layers + 1)) if p.needed <= free), plan(layers))
    if free is not None and chosen.needed > free:
        chosen.warning = (f"the estimate ({chosen.needed / GIB:.1f} GiB) exceeds the {free / GIB:.1f} GiB free; "
                          f"starting anyway. If it runs out of memory: {out_of_memory_advice(setting)}")
    return chosen


def out_of_memory_advice(setting) -> str:
    if setting is False:
        return "set training.gradient_checkpointing=auto (or true)"
    return ("lower training.batch_size (raise training.gradient_accumulation_steps to keep the batch), "
            "lower training.max_length, or use quantization=nf4")


def plan_for_run(cfg, folder, token_lengths: list[int] | None, device: str, dtype, padding_free: bool) -> MemoryPlan:
    """The plan for a training config: on CUDA from the model's config and the device's free memory (or
    training.memory_budget_gib); on CPU checkpointing is off unless training.gradient_checkpointing=true.
    Paired preference methods (dpo, orpo, simpo) hold both answers of each row in one micro-batch, padded to
    the longer (token_lengths are each row's longer side); DPO and KTO add the reference forward."""
    import torch
    from omegaconf import OmegaConf
    from transformers import AutoConfig

    t = cfg.training
    dims = model_dims(AutoConfig.from_pretrained(folder))
    lengths = token_lengths if token_lengths is not None else [t.max_length] * t.batch_size
    tokens, largest = tokens_per_micro_batch(lengths, t.batch_size, t.max_length, padding_free)
    sides = 2 if cfg.method.name in ("dpo", "orpo", "simpo") else 1
    tokens, largest = tokens * sides, largest * sides
    setting, free = t.gradient_checkpointing, None
    if device == "cuda":
        free = torch.cuda.mem_get_info()[0]
        if t.memory_budget_gib is not None:
            free = min(free, int(t.memory_budget_gib * GIB))
    elif setting == "auto":
        setting = False
    targets = cfg.lora.target_modules
    targets = targets if isinstance(targets, str) else OmegaConf.to_container(targets)
    return plan_checkpointing(dims, tokens, free, setting, torch.finfo(dtype).bits // 8, cfg.quantization.name,
                              cfg.lora.r, targets, cfg.lora.dropout, largest,
                              reference=cfg.method.name in ("dpo", "kto"))


def decoder_layers(model) -> list:
    """The text decoder's layers, in order: a vision-language model's vision-tower layers are not among them
    (the plan counted text layers)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    named = [(name, m) for name, m in model.named_modules() if isinstance(m, GradientCheckpointingLayer)]
    text = [m for name, m in named if "language_model" in name]
    return text or [m for name, m in named if not any(part in name for part in ("vision", "visual"))] or [m for _, m in named]


def apply_checkpointing(model, layers: int, fallback: bool = False) -> list:
    """Checkpoint the first `layers` decoder layers (non-reentrant), the rest keep their activations. With
    `fallback` (a batch larger than planned may come), checkpointing is set up on every layer and switched
    off on the rest; returns those layers, which `checkpoint_all_layers` switches on for one step."""
    if layers == 0 and not fallback:
        return []
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    decoder = decoder_layers(model)
    from transformers.modeling_layers import GradientCheckpointingLayer

    kept = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer) and m not in decoder[:layers]]
    for layer in kept:
        layer.gradient_checkpointing = False
    return decoder[layers:]


def step_tokens(inputs: dict) -> int:
    """Tokens in a micro-batch, from its shape (no device sync): padded B x T, padding-free 1 x T."""
    ids = inputs.get("input_ids")
    return int(ids.numel()) if ids is not None else 0


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)
MMAP_THRESHOLD_BYTES = 1 << 20
RELEASE_FROM_BYTES = 2 * GIB


def prefer_huge_pages() -> None:
    """Ask PyTorch's CPU allocator for transparent huge pages: tensors of 2 MiB or more 2 MiB-aligned and
    madvise(MADV_HUGEPAGE)d (THP_MEM_ALLOC_ENABLE, read once, at its first allocation: call this before any
    tensor exists). Fewer page faults and less fragmentation: the default model at batch 8 x 512 on CPU
    peaked at 10.84 GB instead of 14.0 GB (scripts/bench_data.py). A user's own THP_MEM_ALLOC_ENABLE=0 wins.
    SFT only: DPO on the demo pairs (batch 8, 2 x ~70 tokens a row) took 13.2 s a step with it against 10.6 s
    without, and plain TRL 10.0-10.6 (scripts/bench_dpo.py): its many mid-sized tensors pay for the 2 MiB
    pages' zeroing and gain nothing at that size."""
    import os

    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")


def release_freed_memory(setting, device: str, activation_bytes: int) -> bool:
    """Make freed tensor memory go back to the operating system during CPU training (glibc only).

    glibc serves a freed block's size from its heap from then on (its mmap threshold rises up to 32 MiB after
    the first large free), so the activations of one step and the logits chunks of the next end up side by
    side in a heap that never shrinks: training the default model at batch 8 x 512 tokens peaked at 14.0 GB
    of RSS for 5.2 GB of saved activations (10.84 GB with prefer_huge_pages()). A fixed threshold of 1 MiB
    keeps every tensor of that size in its own mapping, returned to the system on free: peak 10.0 GB, steps
    21.4 s instead of 19.4 s (fresh mappings cost page faults; 25% slower without huge pages). auto: on for CPU training whose
    estimated activations reach 2 GiB; off for smaller steps, and on CUDA, where host memory holds little.

        qrtrain train training.release_freed_memory=false    # glibc's default
    """
    if setting is False or (setting == "auto" and (device != "cpu" or activation_bytes < RELEASE_FROM_BYTES)):
        return False
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None:  # not glibc (macOS, musl): nothing to set
        return False
    return mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
