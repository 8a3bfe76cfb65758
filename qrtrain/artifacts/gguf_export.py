"""One self-contained GGUF file of a merged model (base + adapter) for llama.cpp and Ollama, proved by perplexity.

    qrtrain package outputs/NAME/v1 --format gguf               # NAME-v1.q8_0.gguf
    qrtrain package outputs/NAME/v1 --format gguf --quant f16   # NAME-v1.f16.gguf

Llama-architecture models only. Weights are laid out as llama.cpp's converter lays them out (its tensor names,
the rotary row order for q_proj/k_proj, norms and other 1-D tensors in F32) and quantized with the `gguf`
library's own quantizer; a matrix whose rows are not a whole number of quantization blocks stays F16. The
tokenizer (byte-level BPE) and the chat template the version was trained with travel in the file.

The file is then loaded back with transformers, which dequantizes it: its tokenizer must give the same ids as
the version's, and its perplexity on the version's held-out answers may exceed base + adapter's by at most
PERPLEXITY_TOLERANCE; otherwise nothing is written.
"""

import json
import re
from pathlib import Path

from qrtrain.errors import QrtrainError

QUANTS = ("f16", "q8_0")
DEFAULT_QUANT = "q8_0"
# Largest accepted relative perplexity increase of the GGUF over base + adapter (float32). Measured on the demo
# held-out answers (README, "One GGUF file"): f16 -0.001% (tiny) and +0.04% (SmolLM2-135M); q8_0 +0.02% (tiny)
# and +0.52% (SmolLM2-135M). The margins leave room for other data and larger models, and still catch a broken
# export: on SmolLM2 a q/k rotary order left out gives +1219%.
PERPLEXITY_TOLERANCE = {"f16": 0.01, "q8_0": 0.03}
GENERATION_TAGS = re.compile(r"\{%-?\s*(?:end)?generation\s*-?%\}")


def check_llama(config: dict) -> None:
    """Refuse (exit 2) a base this exporter cannot write exactly: not Llama, scaled rope, or an odd head size."""
    kind = config.get("model_type")
    if kind != "llama":
        raise QrtrainError(f"--format gguf writes Llama-architecture models; this base is {kind!r} (its config.json "
                           "model_type); package it with --format merged and convert it with llama.cpp's "
                           "convert_hf_to_gguf.py")
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise QrtrainError(f"--format gguf: the base uses rope scaling {rope.get('rope_type', rope.get('type'))!r}, "
                           "which this exporter does not write; use --format merged and llama.cpp's converter")
    heads = config["num_attention_heads"]
    if config.get("head_dim", config["hidden_size"] // heads) * heads != config["hidden_size"]:
        raise QrtrainError("--format gguf: the base's head_dim x num_attention_heads differs from hidden_size, which "
                           "this exporter does not write; use --format merged and llama.cpp's converter")


def write_model_gguf(model, tokenizer, path: Path, quant: str, name: str) -> dict:
    """Write the (merged, float32) Llama `model` with `tokenizer` as one GGUF file; returns {tensor type: count}."""
    import gguf

    config = model.config.to_dict()
    check_llama(config)
    n_head = config["num_attention_heads"]
    n_kv = config.get("num_key_value_heads") or n_head
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_freq_base(float((config.get("rope_parameters") or config)["rope_theta"]))
    writer.add_rope_dimension_count(config["hidden_size"] // n_head)
    writer.add_layer_norm_rms_eps(float(config["rms_norm_eps"]))
    writer.add_vocab_size(config["vocab_size"])
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if quant == "f16" else gguf.LlamaFileType.MOSTLY_Q8_0)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    add_tokenizer(writer, tokenizer, config["vocab_size"])

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config["num_hidden_layers"])
    types = {}
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and config.get("tie_word_embeddings"):
            continue  # llama.cpp reads the output matrix from token_embd when output.weight is absent
        target = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if target is None:
            raise QrtrainError(f"--format gguf: the model's tensor {hf_name} has no llama.cpp name; this model is "
                               "not a plain Llama: use --format merged and llama.cpp's converter")
        array = tensor.detach().float().cpu().numpy()
        if hf_name.endswith(("q_proj.weight", "q_proj.bias", "k_proj.weight", "k_proj.bias")):
            array = permute_rows(array, n_head if ".q_proj." in hf_name else n_kv)
        data, kind = stored_tensor(array, quant)
        writer.add_tensor(target, data, raw_dtype=kind)
        types[kind.name] = types.get(kind.name, 0) + 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return types


def permute_rows(weights, n_head: int):
    """llama.cpp's LlamaModel.permute: reorder output rows from HF's rotary layout to GGML's."""
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def stored_tensor(array, quant: str):
    """(data, GGML type) as llama.cpp's converter stores a tensor: 1-D in F32; matrices in F16, or Q8_0 when
    asked and each row is a whole number of 32-value blocks (else F16).

    >>> import numpy as np
    >>> [stored_tensor(np.ones(s, "float32"), "q8_0")[1].name for s in [(64,), (8, 64), (8, 48)]]
    ['F32', 'Q8_0', 'F16']
    """
    import gguf

    types = gguf.GGMLQuantizationType
    if array.ndim <= 1:
        kind = types.F32
    elif quant == "q8_0" and array.shape[-1] % gguf.GGML_QUANT_SIZES[types.Q8_0][0] == 0:
        kind = types.Q8_0
    else:
        kind = types.F16
    return gguf.quants.quantize(array, kind), kind


def add_tokenizer(writer, tokenizer, vocab_size: int) -> None:
    """llama.cpp's byte-level BPE tokenizer keys: tokens as the tokenizer spells them, their types (special added
    tokens CONTROL, other added tokens USER_DEFINED, ids the model has beyond the tokenizer [PADn]), merges,
    the pre-tokenizer's name, special ids, whether BOS/EOS are added to plain text, the chat template."""
    import gguf

    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    if backend["model"]["type"] != "BPE" or backend.get("decoder", {}).get("type") != "ByteLevel":
        raise QrtrainError(f"--format gguf writes byte-level BPE tokenizers; this one is {backend['model']['type']} "
                           "with a different decoder; use --format merged and llama.cpp's converter")
    vocab = tokenizer.get_vocab()
    if max(vocab.values()) >= vocab_size:
        raise QrtrainError(f"the tokenizer has token ids up to {max(vocab.values())}, beyond the model's vocab_size "
                           f"{vocab_size}; the version's tokenizer does not belong to this base")
    by_id = {i: token for token, i in vocab.items()}
    added = tokenizer.added_tokens_decoder
    tokens, kinds = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            kinds.append(gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            kinds.append(gguf.TokenType.NORMAL if i not in added else
                         gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in backend["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer_name(backend.get("pre_tokenizer")))
    writer.add_token_list(tokens)
    writer.add_token_types(kinds)
    writer.add_token_merges(merges)
    special = {"bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id, "pad": tokenizer.pad_token_id,
               "unk": tokenizer.unk_token_id}
    for kind, token_id in special.items():
        if token_id is not None:
            getattr(writer, {"bos": "add_bos_token_id", "eos": "add_eos_token_id", "pad": "add_pad_token_id",
                             "unk": "add_unk_token_id"}[kind])(token_id)
    plain, marked = tokenizer("a", add_special_tokens=False)["input_ids"], tokenizer("a")["input_ids"]
    writer.add_add_bos_token(len(marked) > len(plain) and marked[0] == tokenizer.bos_token_id)
    writer.add_add_eos_token(len(marked) > len(plain) and marked[-1] == tokenizer.eos_token_id)
    if tokenizer.chat_template:
        writer.add_chat_template(plain_chat_template(tokenizer.chat_template))


def pre_tokenizer_name(pre_tokenizer: dict | None) -> str:
    """llama.cpp's name (tokenizer.ggml.pre) for a byte-level pre-tokenizer: GPT-2's split ('gpt-2'), or digits
    split one by one before it ('smollm'); any other is refused rather than approximated.

    >>> pre_tokenizer_name({"type": "ByteLevel", "add_prefix_space": False, "use_regex": True})
    'gpt-2'
    """
    def gpt2_split(step):
        return step.get("type") == "ByteLevel" and step.get("use_regex", True) and not step.get("add_prefix_space")

    steps = (pre_tokenizer or {}).get("pretokenizers", [pre_tokenizer or {}])
    if len(steps) == 1 and gpt2_split(steps[0]):
        return "gpt-2"
    if (len(steps) == 2 and steps[0].get("type") == "Digits" and steps[0].get("individual_digits")
            and gpt2_split(steps[1])):
        return "smollm"
    raise QrtrainError(f"--format gguf: the tokenizer's pre-tokenizer ({json.dumps(pre_tokenizer)[:200]}) has no "
                       "llama.cpp name known to qrtrain (GPT-2's split, or digits then GPT-2's); use --format "
                       "merged and llama.cpp's converter, which recognises more")


def plain_chat_template(template: str) -> str:
    """The chat template without `{% generation %}` markers (they only mark assistant text for training and
    render nothing), so llama.cpp's and Ollama's template engines read it.

    >>> plain_chat_template("{{ '<a>' }}{% generation %}{{ m }}{% endgeneration %}")
    "{{ '<a>' }}{{ m }}"
    """
    return GENERATION_TAGS.sub("", template)


def heldout_pairs(version: Path, model_type: str) -> tuple[Path, list[tuple]]:
    """(file, [(prompt, answer)]) the perplexity check scores: the version's eval_split.jsonl when it has one,
    else the demo's held-out questions; prompts in the form the version was trained on."""
    from qrtrain.data.rows import DEMO_DIR, read_rows, row_format, to_training_row

    path = version / "eval_split.jsonl"
    if not path.is_file():
        path = DEMO_DIR / "qa_heldout.jsonl"
    pairs = []
    for where, row in read_rows(path):
        if not isinstance(row, dict) or row_format(row) not in ("messages", "prompt_completion", "alpaca"):
            continue
        try:
            example = to_training_row(row, model_type, where)
        except QrtrainError:
            continue
        if "messages" in example and len(example["messages"]) > 1 and example["messages"][-1]["role"] == "assistant":
            pairs.append((example["messages"][:-1], example["messages"][-1]["content"]))
        elif "completion" in example:
            pairs.append((example["prompt"], example["completion"]))
    if not pairs:
        raise QrtrainError(f"{path}: no held-out (prompt, answer) examples in the form this version was trained on "
                           f"(model_type={model_type}), so the GGUF's perplexity cannot be checked")
    return path, pairs


def gguf_perplexity_check(path: Path, pairs: list[tuple], adapter: dict, quant: str, max_length: int | None) -> dict:
    """Load the written file with transformers and score the held-out answers; refuse (exit 1) a GGUF whose
    perplexity exceeds base + adapter's (`adapter`, from answer_loss) by more than PERPLEXITY_TOLERANCE."""
    import torch
    from transformers import AutoModelForCausalLM

    from qrtrain.models.generation import answer_loss

    tokenizer = load_gguf_tokenizer(path)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    loaded = answer_loss(model, tokenizer, pairs, max_length=max_length)
    tolerance = PERPLEXITY_TOLERANCE[quant]
    increase = loaded["perplexity"] / adapter["perplexity"] - 1
    check = {"gguf_perplexity": loaded["perplexity"], "adapter_perplexity": adapter["perplexity"],
             "relative_increase": increase, "tolerance": tolerance, "quant": quant, "tokens": loaded["tokens"],
             "examples": len(pairs)}
    if loaded["tokens"] != adapter["tokens"]:
        raise QrtrainError(f"the GGUF's tokenizer scores {loaded['tokens']} answer tokens where the version's scores "
                           f"{adapter['tokens']}; the written vocabulary is wrong; nothing was written", exit_code=1)
    if increase > tolerance:
        advice = "try --quant f16" if quant != "f16" else "package --format merged and compare it with base + adapter"
        raise QrtrainError(f"the {quant} GGUF's perplexity {loaded['perplexity']:.4f} exceeds base + adapter's "
                           f"{adapter['perplexity']:.4f} by {increase:.2%} > {tolerance:.0%}; nothing was written "
                           f"({advice})", exit_code=1)
    return check


def load_gguf_tokenizer(path: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def gguf_tokenizer_check(path: Path, tokenizer, conversations: list[list[dict]]) -> dict:
    """The GGUF's tokenizer, loaded back, renders each conversation as the version's tokenizer does and gives the
    same ids for it (with and without special tokens); a mismatch is refused (exit 1)."""
    loaded = load_gguf_tokenizer(path)
    for messages in conversations:
        expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        rendered = loaded.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if rendered != expected:
            raise QrtrainError(f"the GGUF's chat template renders {rendered[:80]!r}, the version's {expected[:80]!r}; "
                               "nothing was written", exit_code=1)
        for special in (False, True):
            ids, want = (t(expected, add_special_tokens=special)["input_ids"] for t in (loaded, tokenizer))
            if ids != want:
                first = next((n for n, (a, b) in enumerate(zip(ids, want)) if a != b), min(len(ids), len(want)))
                raise QrtrainError(f"the GGUF's tokenizer gives other ids than the version's for {expected[:60]!r} "
                                   f"(from token {first}: {ids[first:first + 4]} vs {want[first:first + 4]}); the "
                                   "written vocabulary is wrong; nothing was written", exit_code=1)
    return {"conversations": len(conversations), "same_ids": True, "same_chat_template_rendering": True}
