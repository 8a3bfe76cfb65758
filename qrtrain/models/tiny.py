"""Build the tiny test models: a 2-layer Llama with a byte-level BPE tokenizer trained on the demo text, and one
tiny stand-in per model family of the catalog (same architecture class, the family's special tokens, chat template
and stop tokens), built from a config: nothing is downloaded.

    qrtrain train model=tiny training.max_steps=5
    qrtrain train model=tiny-qwen2.5 training.max_steps=5    # conf/model/tiny-qwen2.5.yaml

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
    for path in sorted((PACKAGE_DIR / "data" / "demo").glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            for message in row.get("messages", []):
                content = message["content"]
                texts.extend([content] if isinstance(content, str) else [p["text"] for p in content if p.get("type") == "text"])
            if "text" in row:
                texts.append(row["text"])
    return texts


def trained_bpe(vocab_size: int, special_tokens: list[str]):
    """A byte-level BPE (tokenizers.Tokenizer) trained on the demo text; the special tokens take the first ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(demo_corpus(), trainer)
    return bpe


def build_tiny_tokenizer(params, template: str = "tiny.jinja", extra_special: list[str] = ()):
    """A byte-level BPE tokenizer trained on the demo text, with a BOS-writing chat template."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    bpe = trained_bpe(params.vocab_size, SPECIAL_TOKENS)
    # Like Llama 3: the tokenizer adds BOS to plain text, and the chat template writes its own BOS.
    bpe.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", 0)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|begin_of_text|>",
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        chat_template=(PACKAGE_DIR / "models" / "chat_templates" / template).read_text(encoding="utf-8"),
    )
    if extra_special:
        tokenizer.add_special_tokens({"additional_special_tokens": list(extra_special)})
    return tokenizer


def text_config(params, tokenizer, config_class=None, **family):
    """The tiny model's config: a Llama's, or `config_class`'s with a family's own settings (rope, tying, windows)."""
    from transformers import LlamaConfig

    return (config_class or LlamaConfig)(
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
        **({"tie_word_embeddings": True} | family),
    )


def build_tiny_model(folder: Path, params) -> None:
    """Write a tiny LlamaForCausalLM and its tokenizer into `folder`."""
    import torch
    from transformers import LlamaForCausalLM

    tokenizer = build_tiny_tokenizer(params)
    torch.manual_seed(params.seed)
    model = LlamaForCausalLM(text_config(params, tokenizer))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def build_tiny_vlm(folder: Path, params) -> None:
    """Write a tiny LLaVA (CLIP-style vision tower, projector, the tiny Llama) and its processor into `folder`."""
    import torch
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tokenizer = build_tiny_tokenizer(params, "tiny_vlm.jinja", ["<image>"])
    size = params.image_size
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}),
        tokenizer=tokenizer, patch_size=params.patch_size, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=tokenizer.chat_template)
    vision = CLIPVisionConfig(hidden_size=params.vision_hidden_size, intermediate_size=2 * params.vision_hidden_size,
                              num_hidden_layers=params.vision_layers, num_attention_heads=2, image_size=size,
                              patch_size=params.patch_size)
    config = LlavaConfig(vision_config=vision, text_config=text_config(params, tokenizer),
                         image_token_index=tokenizer.convert_tokens_to_ids("<image>"), vision_feature_layer=-1,
                         vision_feature_select_strategy="default")
    torch.manual_seed(params.seed)
    LlavaForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)


def family_tokenizer(model_cfg, chat_template: str):
    """The tiny BPE tokenizer with a model family's special tokens and BOS habit (model_cfg.tokens) and its chat
    template (the text of model_cfg.chat_template): its ids differ from the real tokenizer's, its conversations
    render the same."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    tokens = model_cfg.tokens
    bpe = trained_bpe(model_cfg.tiny.vocab_size, list(tokens.special))
    if tokens.add_bos:  # Llama 3, Gemma, Mistral: plain text starts with BOS; chat templates write their own
        bpe.post_processor = processors.TemplateProcessing(
            single=f"{tokens.bos} $A", special_tokens=[(tokens.bos, bpe.token_to_id(tokens.bos))])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token=tokens.bos, eos_token=tokens.eos, pad_token=tokens.pad, unk_token=tokens.unk,
        chat_template=chat_template)
    if tokens.get("added"):  # added but not special, as Qwen3's <think> and </think>: decoding keeps them
        tokenizer.add_tokens(list(tokens.added))
    return tokenizer


def build_family_model(folder: Path, model_cfg, chat_template: str) -> None:
    """Write a tiny random model of the family's architecture class (model_cfg.architecture: LlamaForCausalLM,
    Qwen2ForCausalLM, Gemma3ForCausalLM, ...), its tokenizer, and a generation config that stops on the family's
    stop tokens (model_cfg.stop_tokens, as the real generation_config.json's eos_token_id)."""
    import torch
    import transformers
    from omegaconf import OmegaConf

    tokenizer = family_tokenizer(model_cfg, chat_template)
    params = model_cfg.tiny
    architecture = getattr(transformers, model_cfg.architecture)
    family = OmegaConf.to_container(params.config, resolve=True)  # the family's own settings: rope, tying, windows
    config = text_config(params, tokenizer, architecture.config_class, **family)
    stops = tokenizer.convert_tokens_to_ids(list(model_cfg.stop_tokens))
    torch.manual_seed(params.seed)
    model = architecture(config)
    model.generation_config = transformers.GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=stops if len(stops) > 1 else stops[0],
        pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
