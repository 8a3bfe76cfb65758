"""Answers and losses from a base model, with or without a LoRA adapter.

    qrtrain evaluate outputs/NAME/v1 generation.max_new_tokens=32

Generation is batched (left padding), greedy and seeded, and uses the chat template
the adapter was trained with.
"""

import math
import time


def render(processing, prompt, generation_prompt: bool = True) -> str:
    """A prompt as the model saw it in training: a conversation through the chat template, a string as is."""
    if isinstance(prompt, str):
        return prompt
    return processing.apply_chat_template(prompt, tokenize=False, add_generation_prompt=generation_prompt)


def encode(processing, texts: list[str], images: list | None, device, special_tokens: bool = False):
    """Token ids (and pixel values) for rendered prompts; images per prompt when the items have them.
    Chat templates write their own BOS; raw prompts get the tokenizer's special tokens, as TRL adds them."""
    tokenizer = getattr(processing, "tokenizer", processing)
    if images and any(images):
        return processing(text=texts, images=images, return_tensors="pt", padding=True).to(device)
    return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=special_tokens).to(device)


def answer_limit(setting, processing, references: list[str]) -> int:
    """generation.max_new_tokens: a number, or auto: 1.5x the longest reference answer (+8), within 48..512."""
    if setting != "auto":
        return int(setting)
    tokenizer = getattr(processing, "tokenizer", processing)
    longest = max((len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in references), default=0)
    return min(512, max(48, round(1.5 * longest) + 8))


def generate_answers(model, processing, prompts: list[list[dict]], batch_size: int, max_new_tokens: int,
                     seed: int, images: list | None = None, sampling: dict | None = None, on_batch=None) -> list[dict]:
    """One {answer, latency_s, new_tokens, stopped} per prompt; latency is the wall time of the answer's batch.
    Greedy unless `sampling` gives {temperature, top_p}; on_batch(done) is called after each batch."""
    import torch

    tokenizer = getattr(processing, "tokenizer", processing)
    stops = stop_token_ids(model, tokenizer)
    torch.manual_seed(seed)
    results = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start:start + batch_size]
        texts = [render(processing, p) for p in batch]
        inputs = encode(processing, texts, images[start:start + batch_size] if images else None, model.device,
                        special_tokens=isinstance(batch[0], str))
        began = time.perf_counter()
        with torch.no_grad():
            decoding = {"do_sample": True, **sampling} if sampling else {"do_sample": False}
            output = model.generate(**inputs, max_new_tokens=max_new_tokens, **decoding,
                                    pad_token_id=tokenizer.pad_token_id, eos_token_id=stops)
        latency = time.perf_counter() - began
        for row in output[:, inputs["input_ids"].shape[1]:]:
            tokens = row.tolist()
            stopped = any(t in stops for t in tokens)
            if stopped:
                tokens = tokens[:next(i for i, t in enumerate(tokens) if t in stops)]
            tokens = [t for t in tokens if t != tokenizer.pad_token_id]
            results.append({"answer": tokenizer.decode(tokens, skip_special_tokens=True).strip(),
                            "latency_s": latency, "new_tokens": len(tokens) + stopped, "batch": start // batch_size,
                            "stopped": stopped})
        if on_batch is not None:
            on_batch(len(results))
    return results


def stop_token_ids(model, tokenizer) -> list[int]:
    """The tokens that end an answer: the tokenizer's EOS and every eos_token_id of the model's generation config
    (Gemma 3 ends its turns with <end_of_turn>, Phi-4-mini with <|end|>, Llama 3 with <|eot_id|>: not all are EOS)."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    configured = configured if isinstance(configured, list) else [configured]
    return list(dict.fromkeys(t for t in [tokenizer.eos_token_id, *configured] if isinstance(t, int)))


def answer_loss(model, processing, pairs: list[tuple], images: list | None = None, max_length: int | None = None) -> dict:
    """Mean loss (and perplexity) over the reference answers of (prompt, answer) pairs, each truncated to
    max_length tokens as training truncated it (keeping the start)."""
    import torch

    tokenizer = getattr(processing, "tokenizer", processing)
    total_loss, total_tokens = 0.0, 0
    for n, (prompt, answer) in enumerate(pairs):
        pictures = [images[n]] if images and images[n] else None
        raw = isinstance(prompt, str)
        full_text = prompt + answer + tokenizer.eos_token if raw else render(
            processing, prompt + [{"role": "assistant", "content": answer}], generation_prompt=False)
        full = encode(processing, [full_text], pictures, model.device, special_tokens=raw)
        prompt_ids = encode(processing, [render(processing, prompt)], pictures, model.device, special_tokens=raw)
        ids = full["input_ids"]
        labels = ids.clone()
        labels[:, :prompt_ids["input_ids"].shape[1]] = -100  # the prompt renders as a prefix
        eos = (ids[0] == tokenizer.eos_token_id).nonzero()
        if len(eos):
            labels[:, int(eos[-1]) + 1:] = -100  # template text after the end-of-turn token is not learned
        extra = {k: v for k, v in full.items() if k not in ("input_ids", "attention_mask")}
        mask = full["attention_mask"]
        if max_length and not extra:  # image tokens are never cut (training does not cut them either)
            ids, labels, mask = ids[:, :max_length], labels[:, :max_length], mask[:, :max_length]
        count = int((labels[:, 1:] != -100).sum())
        if count == 0:
            continue
        with torch.no_grad():
            loss = model(input_ids=ids, attention_mask=mask, labels=labels, **extra).loss
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
