"""Answers and losses from a base model, with or without a LoRA adapter.

    qrtrain evaluate outputs/NAME/v1 generation.max_new_tokens=32

Generation is batched (left padding), greedy and seeded, and uses the chat template
the adapter was trained with.
"""

import math
import time
from pathlib import Path


def load_model_for_inference(base_folder: Path, device: str, dtype):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_folder, dtype=dtype)
    return model.to(device).eval()


def load_chat_tokenizer(folder: Path):
    """The tokenizer of an artifact or model folder, with a marked chat template, padding on the left."""
    from qrtrain.models import load_tokenizer

    tokenizer = load_tokenizer(folder, "dialogue")
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def generate_answers(model, tokenizer, prompts: list[list[dict]], batch_size: int, max_new_tokens: int,
                     seed: int) -> list[dict]:
    """One {answer, latency_s, new_tokens} per prompt; latency is the wall time of the answer's batch."""
    import torch

    torch.manual_seed(seed)
    results = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start:start + batch_size]
        texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in batch]
        inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        began = time.perf_counter()
        with torch.no_grad():
            output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                    pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        latency = time.perf_counter() - began
        for row in output[:, inputs["input_ids"].shape[1]:]:
            tokens = row.tolist()
            stopped = tokenizer.eos_token_id in tokens
            if stopped:
                tokens = tokens[:tokens.index(tokenizer.eos_token_id)]
            tokens = [t for t in tokens if t != tokenizer.pad_token_id]
            results.append({"answer": tokenizer.decode(tokens, skip_special_tokens=True).strip(),
                            "latency_s": latency, "new_tokens": len(tokens) + stopped})
    return results


def answer_loss(model, tokenizer, conversations: list[list[dict]]) -> dict:
    """Mean loss (and perplexity) over the assistant tokens of complete conversations."""
    import torch

    total_loss, total_tokens = 0.0, 0
    for messages in conversations:
        encoded = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
                                                return_assistant_tokens_mask=True, return_tensors="pt")
        ids = encoded["input_ids"].to(model.device)
        labels = ids.clone()
        labels[encoded["assistant_masks"].to(model.device) == 0] = -100
        count = int((labels[:, 1:] != -100).sum())
        if count == 0:
            continue
        with torch.no_grad():
            loss = model(input_ids=ids, labels=labels).loss
        total_loss += loss.item() * count
        total_tokens += count
    if total_tokens == 0:
        return {"loss": None, "perplexity": None, "tokens": 0}
    mean = total_loss / total_tokens
    return {"loss": mean, "perplexity": math.exp(mean), "tokens": total_tokens}


def peak_memory_mb(device: str) -> float:
    """Peak GPU memory allocated, or the process's peak resident memory on CPU."""
    import resource

    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
