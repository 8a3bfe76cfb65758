"""Padding-free attention: the varlen wrapper against attention computed by hand, and no example
attending to another, with a per-example SDPA stand-in where the CUDA kernel is not available."""

import math

import pytest
import torch
import torch.nn.functional as F

from qrtrain.training.attention import NAME, choose_attention, register_varlen_attention, varlen_attention


def per_example_sdpa(q, k, v, cu_seq_q, cu_seq_k, max_q, max_k, *, scale=None, window_size=(-1, -1),
                     enable_gqa=False):
    """A stand-in for torch.nn.attention.varlen.varlen_attn (torch >= 2.11 signature): causal SDPA over
    each example separately. It insists on the causal window qrtrain must ask for."""
    assert window_size == (-1, 0), window_size
    assert cu_seq_q.dtype == torch.int32 and torch.equal(cu_seq_q, cu_seq_k)
    assert max_q == max_k == int(cu_seq_q.diff().max())
    bounds = cu_seq_q.tolist()
    outputs = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        qi, ki, vi = (t[start:end].transpose(0, 1) for t in (q, k, v))
        out = F.scaled_dot_product_attention(qi, ki, vi, is_causal=True, scale=scale, enable_gqa=enable_gqa)
        outputs.append(out.transpose(0, 1))
    return torch.cat(outputs)


def torch_2_10_kernel(q, k, v, cu_seq_q, cu_seq_k, max_q, max_k, *, scale=None, is_causal=False):
    """torch 2.10's signature: causal by a flag, and no grouped-query attention (k/v heads must match)."""
    assert is_causal and q.shape[1] == k.shape[1]
    return per_example_sdpa(q, k, v, cu_seq_q, cu_seq_k, max_q, max_k, scale=scale, window_size=(-1, 0))


def by_hand(query, key, value, lengths, scale):
    """Causal attention per example in float64, written out: softmax(q k^T * scale + causal) v."""
    heads, kv_heads = query.shape[1], key.shape[1]
    outputs, start = [], 0
    for n in lengths:
        q = query[0, :, start:start + n].double()
        k = key[0, :, start:start + n].double().repeat_interleave(heads // kv_heads, dim=0)
        v = value[0, :, start:start + n].double().repeat_interleave(heads // kv_heads, dim=0)
        scores = q @ k.transpose(-1, -2) * scale
        scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
        outputs.append((scores.softmax(-1) @ v).transpose(0, 1))  # (n, heads, dim)
        start += n
    return torch.cat(outputs)[None]


@pytest.mark.parametrize("kernel", [per_example_sdpa, torch_2_10_kernel], ids=["torch>=2.11", "torch-2.10"])
@pytest.mark.parametrize("kv_heads", [4, 2, 1], ids=["mha", "gqa", "mqa"])
def test_varlen_wrapper_matches_per_example_attention(kernel, kv_heads):
    torch.manual_seed(0)
    lengths, heads, dim = [5, 11, 1, 7], 4, 8
    total = sum(lengths)
    query = torch.randn(1, heads, total, dim)
    key, value = torch.randn(1, kv_heads, total, dim), torch.randn(1, kv_heads, total, dim)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    scale = 1 / math.sqrt(dim)
    out, weights = varlen_attention(None, query, key, value, None, scaling=scale, kernel=kernel,
                                    cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=max(lengths),
                                    max_length_k=max(lengths))
    assert weights is None and out.shape == (1, total, heads, dim)
    assert (out.double() - by_hand(query, key, value, lengths, scale)).abs().max() < 1e-6


def test_padded_batch_through_the_wrapper_is_causal_and_masked():
    """A batch without cu_seq_lens (padded, with a 2D mask) goes through SDPA: same as by hand per row."""
    torch.manual_seed(1)
    query, key, value = torch.randn(2, 4, 6, 8), torch.randn(2, 2, 6, 8), torch.randn(2, 2, 6, 8)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    out, _ = varlen_attention(None, query, key, value, mask, scaling=0.3, kernel=per_example_sdpa)
    for row, n in enumerate([6, 4]):
        expected = by_hand(query[row:row + 1, :, :n], key[row:row + 1, :, :n], value[row:row + 1, :, :n], [n], 0.3)
        assert (out[row:row + 1, :n].double() - expected).abs().max() < 1e-6


def tiny_model(tiny_folder, attention: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_folder, dtype=torch.float32, attn_implementation=attention).eval()


def flat_batch(examples: list[list[int]]) -> dict:
    """What TRL's padding-free collator gives the model: one row, positions restarting per example."""
    lengths = [len(e) for e in examples]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    return {"input_ids": torch.tensor([sum(examples, [])]),
            "position_ids": torch.cat([torch.arange(n) for n in lengths])[None],
            "cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": max(lengths), "max_length_k": max(lengths),
            "use_cache": False}  # as in training (TRL sets it): with a cache, transformers builds no block mask


@pytest.mark.parametrize("attention", ["varlen", "sdpa"])
def test_no_example_attends_to_another(tiny_folder, attention):
    """Logits of a padding-free row equal each example's own forward, and changing one example changes
    no other example's logits: through the varlen wrapper (stand-in kernel) and through SDPA's block mask."""
    name = register_varlen_attention(per_example_sdpa) if attention == "varlen" else "sdpa"
    model, alone = tiny_model(tiny_folder, name), tiny_model(tiny_folder, "sdpa")
    generator = torch.Generator().manual_seed(0)
    examples = [torch.randint(5, 1000, (n,), generator=generator).tolist() for n in (9, 4, 13)]
    with torch.no_grad():
        packed = model(**flat_batch(examples)).logits[0]
        start = 0
        for example in examples:
            own = alone(input_ids=torch.tensor([example])).logits[0]
            assert (packed[start:start + len(example)] - own).abs().max() < 1e-5
            start += len(example)
        changed = [examples[0], [7] * len(examples[1]), examples[2]]
        again = model(**flat_batch(changed)).logits[0]
    first, third = slice(0, 9), slice(13, 26)
    assert torch.equal(again[first], packed[first]) or (again[first] - packed[first]).abs().max() < 1e-6
    assert (again[third] - packed[third]).abs().max() < 1e-6
    assert (again[9:13] - packed[9:13]).abs().max() > 1e-3  # the changed example did change


def test_choose_attention():
    assert choose_attention("auto", "dialogue", "cpu", torch.float32) == (False, "sdpa")
    assert choose_attention(True, "dialogue", "cpu", torch.float32) == (True, "sdpa")  # exact, via the block mask
    assert choose_attention(False, "standard", "cpu", torch.bfloat16) == (False, "sdpa")
    assert choose_attention("auto", "multimodal", "cpu", torch.float32) == (False, "sdpa")
    from qrtrain.errors import QrtrainError

    with pytest.raises(QrtrainError, match="multimodal cannot train padding-free"):
        choose_attention(True, "multimodal", "cpu", torch.float32)
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        from qrtrain.training.attention import varlen_kernel

        expected = (True, NAME) if varlen_kernel() is not None else (False, "sdpa")
        assert choose_attention("auto", "dialogue", "cuda", torch.bfloat16) == expected
