"""Padding-free attention: the examples of a batch are one row, and each attends only to itself.

    qrtrain train training.padding_free=true         # auto: on for CUDA with torch's varlen kernel

TRL's padding-free collator concatenates a batch into one row with per-example `position_ids`
and the cumulative lengths `cu_seq_lens_q/k` and `max_length_q/k`; transformers passes these
to the attention function. `varlen_attention` hands them to PyTorch's bundled FlashAttention-2
for variable-length batches (`torch.nn.attention.varlen.varlen_attn`, torch >= 2.10), registered
with transformers' `AttentionInterface` under the name `qrtrain_varlen`. No compute or memory
goes to padding, and no dense block mask is built.
"""

import functools
import inspect
import math

NAME = "qrtrain_varlen"


def varlen_kernel():
    """torch's variable-length FlashAttention, or None where this torch or GPU has none: FlashAttention
    needs an Ampere (sm80) or newer GPU; on a T4 or V100 training stays padded."""
    import torch

    if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 0):
        return None
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


def varlen_usable(device: str, dtype) -> bool:
    """The kernel runs on CUDA sm80+ in bf16/fp16 only."""
    import torch

    return device == "cuda" and dtype in (torch.bfloat16, torch.float16) and varlen_kernel() is not None


def choose_attention(setting, model_type: str, device: str, dtype) -> tuple[bool, str]:
    """(padding_free, attn_implementation) for training.padding_free=auto|true|false.

    auto: padding-free with `qrtrain_varlen` where the varlen kernel runs (CUDA, bf16/fp16, torch >= 2.10);
    padded SDPA elsewhere, which on CPU measured faster than one long row with a block-diagonal mask.
    true without the kernel: padding-free through SDPA with transformers' block-diagonal mask (exact)."""
    from qrtrain.errors import QrtrainError

    if model_type == "multimodal":
        if setting is True:
            raise QrtrainError("training.padding_free=true: TRL pads image batches, so model_type=multimodal cannot "
                               "train padding-free; use training.padding_free=auto or false")
        return False, "sdpa"
    usable = varlen_usable(device, dtype)
    padding_free = usable if setting == "auto" else bool(setting)
    return padding_free, register_varlen_attention() if padding_free and usable else "sdpa"


def register_varlen_attention(kernel=None) -> str:
    """Register `qrtrain_varlen` with transformers (the CUDA kernel, or `kernel`: tests pass a stand-in)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

    kernel = kernel or varlen_kernel()
    AttentionInterface.register(NAME, functools.partial(varlen_attention, kernel=kernel))
    # Like FlashAttention: no 4D mask; a 2D padding mask only where a padded batch comes through.
    AttentionMaskInterface.register(NAME, flash_attention_mask)
    return NAME


def varlen_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, *, kernel,
                     cu_seq_lens_q=None, cu_seq_lens_k=None, max_length_q=None, max_length_k=None, **kwargs):
    """transformers' attention signature: query (1, Hq, T, D), key/value (1, Hkv, T, D) -> ((1, T, Hq, D), None).

    A batch without `cu_seq_lens_q` (a padded batch, e.g. from a caller that pads) goes through SDPA
    with a causal and padding mask instead, so every input stays exact."""
    if cu_seq_lens_q is None:
        return _padded_attention(query, key, value, attention_mask, scaling)
    heads, head_dim = query.shape[1], query.shape[-1]
    q = query.transpose(1, 2).reshape(-1, heads, head_dim)
    # K/V keep their own (fewer, with GQA) heads: the kernel shares each among its group of query heads.
    k = key.transpose(1, 2).reshape(-1, key.shape[1], head_dim)
    v = value.transpose(1, 2).reshape(-1, value.shape[1], head_dim)
    cu_q = cu_seq_lens_q.to(q.device, non_blocking=True)
    cu_k = cu_seq_lens_k.to(q.device, non_blocking=True) if cu_seq_lens_k is not None else cu_q
    max_q = int(max_length_q)
    max_k = int(max_length_k if max_length_k is not None else max_length_q)
    accepts = _parameters(kernel)
    if "window_size" in accepts:  # torch >= 2.11: causal is a (-1, 0) window
        options = {"scale": scaling, "window_size": (-1, 0)}
        if "enable_gqa" in accepts and heads != key.shape[1]:  # torch >= 2.12 asks for it
            options["enable_gqa"] = True
        out = kernel(q, k, v, cu_q, cu_k, max_q, max_k, **options)
    else:  # torch 2.10: causal by a flag, and the kernel's own scale 1/sqrt(head_dim)
        if scaling is not None and not math.isclose(scaling, head_dim ** -0.5, rel_tol=1e-6):
            q = q * (scaling * math.sqrt(head_dim))
        out = kernel(q, k, v, cu_q, cu_k, max_q, max_k, True)
    return out.reshape(query.shape[0], -1, heads, head_dim), None


@functools.lru_cache(maxsize=8)
def _parameters(kernel) -> frozenset:
    return frozenset(inspect.signature(kernel).parameters)


def _padded_attention(query, key, value, attention_mask, scaling):
    import torch
    import torch.nn.functional as F

    length = query.shape[2]
    mask = torch.ones(length, key.shape[2], dtype=torch.bool, device=query.device).tril()
    if attention_mask is not None and attention_mask.dim() == 2:
        mask = mask[None, None] & attention_mask[:, None, None, -key.shape[2]:].bool()
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling,
                                         enable_gqa=query.shape[1] != key.shape[1])
    return out.transpose(1, 2).contiguous(), None
