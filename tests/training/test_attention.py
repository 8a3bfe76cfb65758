"""Padding-free attention: the varlen wrapper against attention computed by hand, and no example
attending to another, through stand-ins with each supported torch's exact `varlen_attn` signature and
the kernel's own input checks (qrtrain/training/varlen_reference.py), where the CUDA kernel is not here."""

import functools
import math

import pytest
import torch

from qrtrain.training.attention import NAME, choose_attention, register_varlen_attention, varlen_attention
from qrtrain.training.varlen_reference import STAND_INS, varlen_attn_2_13

BF16_TOLERANCE = 2e-2  # the kernel's inputs are bf16: one bf16 rounding of outputs of size ~1


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


def run_wrapper(kernel, query, key, value, lengths, scale):
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    return varlen_attention(None, query, key, value, None, scaling=scale, kernel=kernel, cu_seq_lens_q=cu,
                            cu_seq_lens_k=cu, max_length_q=max(lengths), max_length_k=max(lengths))


@pytest.mark.parametrize("version", sorted(STAND_INS))
@pytest.mark.parametrize("kv_heads", [4, 2, 1], ids=["mha", "gqa", "mqa"])
@pytest.mark.parametrize("scale", ["default", 0.2], ids=["scale-default", "scale-0.2"])
def test_varlen_wrapper_matches_per_example_attention(version, kv_heads, scale):
    """Each torch's signature (2.10: no `scale`, causal by a flag; 2.11: a window; 2.13: enable_gqa) gives
    attention equal to the hand-computed one, with a model's own scale too (2.10 pre-scales the query)."""
    torch.manual_seed(0)
    lengths, heads, dim = [5, 11, 1, 7], 4, 8
    total = sum(lengths)
    query = torch.randn(1, heads, total, dim).bfloat16()
    key, value = torch.randn(1, kv_heads, total, dim).bfloat16(), torch.randn(1, kv_heads, total, dim).bfloat16()
    scale = 1 / math.sqrt(dim) if scale == "default" else scale
    out, weights = run_wrapper(STAND_INS[version], query, key, value, lengths, scale)
    assert weights is None and out.shape == (1, total, heads, dim) and out.dtype == torch.bfloat16
    assert (out.double() - by_hand(query, key, value, lengths, scale)).abs().max() < BF16_TOLERANCE


@pytest.mark.parametrize("version", sorted(STAND_INS))
def test_grouped_keys_and_values_reach_the_kernel_unrepeated(version):
    """With GQA the kernel gets K/V with their own heads (it shares them across each query group): no
    num_heads/num_kv_heads copies."""
    seen = []
    kernel = STAND_INS[version]

    @functools.wraps(kernel)
    def spy(query, key, *args, **kwargs):
        seen.append((query.shape[1], key.shape[1]))
        return kernel(query, key, *args, **kwargs)

    query, key = torch.randn(1, 8, 6, 16).bfloat16(), torch.randn(1, 2, 6, 16).bfloat16()
    run_wrapper(spy, query, key, key.clone(), [2, 4], 0.25)
    assert seen == [(8, 2)]


def test_the_stand_ins_refuse_what_the_kernel_refuses():
    q, k = torch.randn(6, 4, 8), torch.randn(6, 2, 8)
    cu = torch.tensor([0, 2, 6], dtype=torch.int32)
    with pytest.raises(RuntimeError, match="fp16 and bf16"):
        varlen_attn_2_13(q, q, q, cu, cu, 4, 4, window_size=(-1, 0))
    with pytest.raises(RuntimeError, match="int32"):
        varlen_attn_2_13(q.bfloat16(), q.bfloat16(), q.bfloat16(), cu.long(), cu.long(), 4, 4)
    with pytest.raises(ValueError, match="enable_gqa=True"):
        varlen_attn_2_13(q.bfloat16(), k.bfloat16(), k.bfloat16(), cu, cu, 4, 4)
    with pytest.raises(TypeError):
        STAND_INS["2.10"](q.bfloat16(), q.bfloat16(), q.bfloat16(), cu, cu, 4, 4, scale=0.3)
    with pytest.raises(RuntimeError, match="contiguous last dimension"):
        wide = torch.randn(6, 4, 16).bfloat16()[..., ::2]
        varlen_attn_2_13(wide, wide, wide, cu, cu, 4, 4)


def test_older_gpus_stay_padded(monkeypatch):
    """FlashAttention needs sm80+: on a T4 (sm75) or V100 (sm70) `auto` keeps padded batches."""
    pytest.importorskip("torch.nn.attention.varlen")
    from qrtrain.training import attention

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for capability, usable in (((7, 0), False), ((7, 5), False), ((8, 0), True), ((9, 0), True)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, c=capability: c)
        assert attention.varlen_usable("cuda", torch.bfloat16) is usable, capability
        assert attention.choose_attention("auto", "dialogue", "cuda", torch.bfloat16)[0] is usable


def test_padded_batch_through_the_wrapper_is_causal_and_masked():
    """A batch without cu_seq_lens (padded, with a 2D mask) goes through SDPA: same as by hand per row."""
    torch.manual_seed(1)
    query, key, value = torch.randn(2, 4, 6, 8), torch.randn(2, 2, 6, 8), torch.randn(2, 2, 6, 8)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    out, _ = varlen_attention(None, query, key, value, mask, scaling=0.3, kernel=varlen_attn_2_13)
    for row, n in enumerate([6, 4]):
        expected = by_hand(query[row:row + 1, :, :n], key[row:row + 1, :, :n], value[row:row + 1, :, :n], [n], 0.3)
        assert (out[row:row + 1, :n].double() - expected).abs().max() < 1e-6


def tiny_model(tiny_folder, attention: str, dtype=torch.float32):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_folder, dtype=dtype, attn_implementation=attention).eval()


def flat_batch(examples: list[list[int]]) -> dict:
    """What TRL's padding-free collator gives the model: one row, positions restarting per example."""
    lengths = [len(e) for e in examples]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    return {"input_ids": torch.tensor([sum(examples, [])]),
            "position_ids": torch.cat([torch.arange(n) for n in lengths])[None],
            "cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": max(lengths), "max_length_k": max(lengths),
            "use_cache": False}  # as in training (TRL sets it): with a cache, transformers builds no block mask


@pytest.mark.parametrize("attention", ["varlen-2.10", "varlen-2.11", "varlen-2.13", "sdpa"])
def test_no_example_attends_to_another(tiny_folder, attention):
    """Logits of a padding-free row equal each example's own forward, and changing one example changes
    no other example's logits: through the varlen wrapper (each torch's stand-in kernel, bf16 as the kernel
    requires) and through SDPA's block mask (float32)."""
    if attention == "sdpa":
        name, dtype, tolerance = "sdpa", torch.float32, 1e-5
    else:
        name, dtype, tolerance = register_varlen_attention(STAND_INS[attention[7:]]), torch.bfloat16, 0.1
    model, alone = tiny_model(tiny_folder, name, dtype), tiny_model(tiny_folder, "sdpa", dtype)
    generator = torch.Generator().manual_seed(0)
    examples = [torch.randint(5, 1000, (n,), generator=generator).tolist() for n in (9, 4, 13)]
    with torch.no_grad():
        packed = model(**flat_batch(examples)).logits[0]
        start = 0
        for example in examples:
            own = alone(input_ids=torch.tensor([example])).logits[0]
            assert (packed[start:start + len(example)] - own).float().abs().max() < tolerance
            start += len(example)
        changed = [examples[0], [7] * len(examples[1]), examples[2]]
        again = model(**flat_batch(changed)).logits[0]
    first, third = slice(0, 9), slice(13, 26)
    assert (again[first] - packed[first]).float().abs().max() <= 1e-6
    assert (again[third] - packed[third]).float().abs().max() <= 1e-6
    assert (again[9:13] - packed[9:13]).float().abs().max() > 1e-2  # the changed example did change


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
