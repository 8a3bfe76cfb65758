"""Stand-ins for torch's `varlen_attn`, one per supported torch, with that release's exact signature and
the FlashAttention kernel's own input checks, computed as per-example SDPA (so they run on CPU).

    python scripts/gpu_check.py --out /tmp/check        # on CPU, the stages run against these stand-ins

Signatures, from the released wheels' torch/nn/attention/varlen.py:
  2.10  varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False, return_aux=None)
  2.11  varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                    window_size=(-1, -1))
  2.12+ varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                    window_size=(-1, -1), enable_gqa=False, seqused_k=None, block_table=None, num_splits=None)
2.10 has no `scale` (the kernel's is 1/sqrt(head_dim)); 2.10 and 2.11 take fewer K/V heads with no flag;
from 2.12 the wrapper refuses H_q != H_kv unless enable_gqa=True. The kernel (FlashAttention-2's
mha_varlen_fwd) takes fp16/bf16 only, all three of one dtype, int32 cumulative lengths of B+1 entries,
a contiguous last dimension, head_dim a multiple of 8 up to 256, and H_q a multiple of H_kv.
"""

import math


def check_kernel_inputs(query, key, value, cu_seq_q, cu_seq_k) -> None:
    """What FlashAttention's varlen forward refuses, with its own wording where it has one."""
    import torch

    if query.dtype not in (torch.float16, torch.bfloat16):
        raise RuntimeError("FlashAttention only support fp16 and bf16 data type")
    if key.dtype != query.dtype or value.dtype != query.dtype:
        raise RuntimeError("query and key must have the same dtype")
    for name, lengths in (("cu_seqlens_q", cu_seq_q), ("cu_seqlens_k", cu_seq_k)):
        if lengths.dtype != torch.int32:
            raise RuntimeError(f"{name} must have dtype int32")
        if not lengths.is_contiguous():
            raise RuntimeError(f"{name} must be contiguous")
    if any(t.stride(-1) != 1 for t in (query, key, value)):
        raise RuntimeError("Input tensor must have contiguous last dimension")
    head_dim = query.shape[-1]
    if head_dim % 8 or head_dim > 256 or key.shape[-1] != head_dim:
        raise RuntimeError("FlashAttention forward only supports head dimension at most 256 (a multiple of 8)")
    if query.shape[1] % key.shape[1]:
        raise RuntimeError("Number of heads in key/value must divide number of heads in query")
    if cu_seq_k.numel() != cu_seq_q.numel():
        raise RuntimeError("cu_seqlens_k must have shape (batch_size + 1)")


def per_example_attention(query, key, value, cu_seq_q, cu_seq_k, scale, causal):
    """(T, H_q, D) attention of each example on its own, in float32, returned in the input dtype."""
    import torch
    import torch.nn.functional as F

    bounds_q, bounds_k = cu_seq_q.tolist(), cu_seq_k.tolist()
    outputs = []
    for (q0, q1), (k0, k1) in zip(zip(bounds_q[:-1], bounds_q[1:]), zip(bounds_k[:-1], bounds_k[1:])):
        q, k, v = (t[a:b].transpose(0, 1).float() for t, a, b in ((query, q0, q1), (key, k0, k1), (value, k0, k1)))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale,
                                             enable_gqa=q.shape[0] != k.shape[0])
        outputs.append(out.transpose(0, 1).to(query.dtype))
    return torch.cat(outputs)


def varlen_attn_2_10(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False, return_aux=None):
    check_kernel_inputs(query, key, value, cu_seq_q, cu_seq_k)
    return per_example_attention(query, key, value, cu_seq_q, cu_seq_k, 1 / math.sqrt(query.shape[-1]), is_causal)


def varlen_attn_2_11(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                     window_size=(-1, -1)):
    if len(window_size) != 2:
        raise ValueError("window_size must have length 2")
    if tuple(window_size) not in ((-1, -1), (-1, 0)):
        raise NotImplementedError("the stand-in computes full or causal attention only")
    check_kernel_inputs(query, key, value, cu_seq_q, cu_seq_k)
    return per_example_attention(query, key, value, cu_seq_q, cu_seq_k, scale, tuple(window_size) == (-1, 0))


def varlen_attn_2_13(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                     window_size=(-1, -1), enable_gqa=False, seqused_k=None, block_table=None, num_splits=None):
    if not enable_gqa and query.size(1) != key.size(1):
        raise ValueError(f"Expect query and key/value to have the same number of heads but got Hq={query.size(1)} "
                         f"and Hkv={key.size(1)}. Try setting enable_gqa=True for GQA.")
    if enable_gqa and query.size(1) % key.size(1) != 0:
        raise ValueError("Expect number of query heads to be a multiple of kv heads for GQA")
    cu_seq_k = cu_seq_q if cu_seq_k is None else cu_seq_k
    return varlen_attn_2_11(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, return_aux=return_aux,
                            scale=scale, window_size=window_size)


STAND_INS = {"2.10": varlen_attn_2_10, "2.11": varlen_attn_2_11, "2.13": varlen_attn_2_13}
