"""Reward accuracy on held-out preference pairs: does a version prefer the chosen answer, and by how much?

    qrtrain evaluate outputs/smollm2-135m-instruct-dialogue-dpo/v1        # the demo's 26 held-out pairs
    qrtrain evaluate outputs/NAME/v1 evaluation.pairs=heldout_pairs.jsonl

DPO's implicit reward of an answer is beta * (log p_policy(answer | prompt) - log p_reference(answer | prompt)),
log-probabilities summed over the answer's tokens, tokenized as TRL's DPOTrainer tokenizes them. The
reference is the one the version was trained against: its parent adapter when it started from one
(init_adapter), else the base with the adapter off. `reward_accuracy` is the share of pairs whose chosen
answer gets the higher reward, `reward_margin` the mean difference; `preference_accuracy` the share whose
chosen answer is simply more likely under the model itself (defined for a plain base model too). Every
figure carries a 95% bootstrap interval.
"""

from contextlib import contextmanager
from pathlib import Path

from qrtrain.evaluation.metrics import bootstrap_ci, mean

BATCH = 8


def sequences(tokenizer, prompt, answer) -> tuple[list[int], int]:
    """(prompt + answer token ids, where the answer starts), as TRL's DPOTrainer builds them."""
    if isinstance(prompt, str):
        prompt_ids = tokenizer(prompt)["input_ids"]
        full = tokenizer(prompt + answer + tokenizer.eos_token)["input_ids"]
    else:
        prompt_ids = tokenizer.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True,
                                                   return_dict=True)["input_ids"]
        full = tokenizer.apply_chat_template(prompt + answer, tokenize=True, return_dict=True)["input_ids"]
    start = next((i for i, (a, b) in enumerate(zip(prompt_ids, full)) if a != b), min(len(prompt_ids), len(full)))
    return full, start


def answer_logps(model, tokenizer, rows: list[tuple], max_length: int | None = None) -> list[float]:
    """log p(answer | prompt), summed over the answer's tokens, per (prompt, answer); truncated as trained."""
    import torch

    encoded = [sequences(tokenizer, prompt, answer) for prompt, answer in rows]
    if max_length:
        encoded = [(ids[:max_length], start) for ids, start in encoded]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = []
    for first in range(0, len(encoded), BATCH):
        batch = encoded[first:first + BATCH]
        width = max(len(ids) for ids, _ in batch)
        ids = torch.tensor([seq + [pad] * (width - len(seq)) for seq, _ in batch], device=model.device)
        mask = torch.tensor([[1] * len(seq) + [0] * (width - len(seq)) for seq, _ in batch], device=model.device)
        answer = torch.zeros_like(ids, dtype=torch.bool)
        for row, (seq, start) in enumerate(batch):
            answer[row, start:len(seq)] = True
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        token_logps = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        out += (token_logps * answer[:, 1:]).sum(-1).tolist()
    return out


@contextmanager
def reference_of(model, parent: Path | None):
    """The model as the version's reference: its parent adapter, or the base (adapter off)."""
    if parent is None:
        with model.disable_adapter():
            yield
        return
    if "reference" not in model.peft_config:
        model.load_adapter(str(parent), adapter_name="reference")
    model.set_adapter("reference")
    try:
        yield
    finally:
        model.set_adapter("default")


def summary(values: list[float]) -> dict:
    return {"mean": mean(values), "ci95": bootstrap_ci(values), "n": len(values)}


def preference_metrics(model, tokenizer, pairs: list[dict], beta: float, adapter: bool,
                       parent: Path | None = None, max_length: int | None = None) -> tuple[dict, list[dict]]:
    """(aggregate metrics, one row per pair). `adapter` False: a plain model, which has no reference."""
    rows = [(p["prompt"], p[side]) for p in pairs for side in ("chosen", "rejected")]
    policy = answer_logps(model, tokenizer, rows, max_length)
    chosen, rejected = policy[0::2], policy[1::2]
    aggregate = {"preference_accuracy": summary([float(c > r) for c, r in zip(chosen, rejected)]),
                 "chosen_logps": summary(chosen), "rejected_logps": summary(rejected)}
    per_pair = [{"chosen_logp": c, "rejected_logp": r} for c, r in zip(chosen, rejected)]
    if adapter:
        with reference_of(model, parent):
            reference = answer_logps(model, tokenizer, rows, max_length)
        chosen_reward = [beta * (p - q) for p, q in zip(chosen, reference[0::2])]
        rejected_reward = [beta * (p - q) for p, q in zip(rejected, reference[1::2])]
        margins = [c - r for c, r in zip(chosen_reward, rejected_reward)]
        aggregate["reward_accuracy"] = summary([float(m > 0) for m in margins])
        aggregate["reward_margin"] = summary(margins)
        for row, c, r in zip(per_pair, chosen_reward, rejected_reward):
            row.update(chosen_reward=c, rejected_reward=r)
    return aggregate, per_pair


def pairs_for(cfg, trained: dict, artifact: Path | None) -> Path | None:
    """The held-out pairs to score: evaluation.pairs; the demo's (with the demo suite, for chat versions); or,
    for a version trained with a preference method on user data, the pairs it held out."""
    from qrtrain.data.rows import DEMO_DIR

    if cfg.evaluation.get("pairs"):
        return Path(cfg.evaluation.pairs)
    if trained["model_type"] == "multimodal":
        return None
    if not cfg.evaluation.questions and trained["prompt_format"] == "chat":
        return DEMO_DIR / "pairs_heldout.jsonl"
    if artifact is not None and trained.get("method", "sft") != "sft":
        if (artifact / "eval_split.jsonl").is_file():
            return artifact / "eval_split.jsonl"
        held = [Path(s["path"]) for s in trained.get("datasets", []) if s.get("role") == "eval"]
        return held[0] if held and held[0].is_file() else None
    return None


def load_pairs(path: Path, model_type: str) -> list[dict]:
    """Pairs checked as for training (file and line named), in the form the version was trained with."""
    from qrtrain.data.preference import load_preference_source

    return load_preference_source(path, "dpo", "standard" if model_type == "standard" else "dialogue")
