"""Build the tiny test model: a 2-layer Llama with a byte-level BPE tokenizer trained on the demo text.

    qrtrain train model=tiny training.max_steps=5

Everything is deterministic: the tokenizer is trained on the shipped demo files in
a fixed order, and the weights come from a seeded initialisation.
"""

import json
from pathlib import Path

from qrtrain.config import PACKAGE_DIR

SPECIAL_TOKENS = ["<|begin_of_text|>", "<|end_of_text|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]


def demo_corpus() -> list[str]:
    """All text of the shipped demo data, in a fixed order."""
    texts = []
    for path in sorted((PACKAGE_DIR / "demo_data").glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            texts.extend(m["content"] for m in row.get("messages", []))
            if "text" in row:
                texts.append(row["text"])
    return texts


def build_tiny_model(folder: Path, params) -> None:
    """Write a tiny LlamaForCausalLM and its tokenizer into `folder`."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=params.vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(demo_corpus(), trainer)
    # Like Llama 3: the tokenizer adds BOS to plain text, and the chat template writes its own BOS.
    bpe.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", 0)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|begin_of_text|>",
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        chat_template=(PACKAGE_DIR / "chat_templates" / "tiny.jinja").read_text(encoding="utf-8"),
    )
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=params.hidden_size,
        intermediate_size=params.intermediate_size,
        num_hidden_layers=params.num_hidden_layers,
        num_attention_heads=params.num_attention_heads,
        num_key_value_heads=params.num_key_value_heads,
        max_position_embeddings=params.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(params.seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
