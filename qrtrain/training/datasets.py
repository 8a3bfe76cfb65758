"""The training and evaluation sets of a run, built from checked sources before any model is loaded.

    qrtrain train data.train=my.jsonl                   # text | prompt/completion | messages | instruction/output
    qrtrain train data.train=[a.jsonl,b.parquet] data.weights=[3,1]
    qrtrain train method=dpo data.train=pairs.jsonl     # preference rows: qrtrain/data/preference.py
"""

from pathlib import Path

from qrtrain.artifacts.manifest import build_manifest
from qrtrain.config import demo_option, train_sources
from qrtrain.data.rows import DEMO_DIR, load_source
from qrtrain.errors import QrtrainError
from qrtrain.files import sha256_file


def unify(sources: list[list[dict]]) -> list[list[dict]]:
    """model_type=standard: if text meets prompt/completion, text becomes a completion with an empty prompt."""
    if any("prompt" in s[0] for s in sources) and any("text" in s[0] for s in sources):
        return [[{"prompt": "", "completion": r["text"]} if "text" in r else r for r in s] for s in sources]
    return sources


def load_datasets(cfg):
    """(train, eval, sources): datasets.Dataset objects (eval may be None) and [{path, role, rows}] per source.
    SFT rows (qrtrain/data/rows.py) or, for a preference method, preference rows (qrtrain/data/preference.py)."""
    from datasets import Dataset, interleave_datasets

    from qrtrain.data.preference import load_preference_source

    model_type, method = cfg.model_type.name, cfg.method.name

    def read(path: Path) -> list[dict]:
        if method != "sft":
            return load_preference_source(path, method, model_type)
        return load_source(path, model_type)

    demo = demo_option(cfg)
    paths = [Path(p) for p in train_sources(cfg)] or [DEMO_DIR / demo.demo_train]
    sources = [read(p) for p in paths]
    sources = unify(sources) if method == "sft" else sources
    described = [{"path": str(p), "role": "train", "rows": len(rows), "format": prompt_format(rows, model_type)}
                 for p, rows in zip(paths, sources)]
    datasets = [Dataset.from_list(rows) for rows in sources]
    if len(datasets) == 1:
        train = datasets[0]
    else:
        weights = list(cfg.data.weights) if cfg.data.weights is not None else [len(d) for d in datasets]
        total = float(sum(weights))
        train = interleave_datasets(datasets, probabilities=[w / total for w in weights], seed=cfg.seed,
                                    stopping_strategy="all_exhausted")
    if cfg.data.eval is not None:
        check_eval_is_not_train(Path(cfg.data.eval), paths)
        eval_set = Dataset.from_list(unify([read(Path(cfg.data.eval))])[0])
        described.append({"path": str(cfg.data.eval), "role": "eval", "rows": len(eval_set)})
    elif cfg.data.train is None and demo.demo_eval:
        eval_set = Dataset.from_list(read(DEMO_DIR / demo.demo_eval))
        described.append({"path": str(DEMO_DIR / demo.demo_eval), "role": "eval", "rows": len(eval_set)})
    elif cfg.data.eval_fraction > 0 and len(train) >= 2:
        held_out = min(max(1, round(len(train) * cfg.data.eval_fraction)), cfg.data.eval_max_examples)
        split = train.train_test_split(test_size=held_out, seed=cfg.seed)
        train, eval_set = split["train"], split["test"]
        if model_type != "multimodal":  # published with the adapter (eval_split.jsonl) for `qrtrain evaluate`
            described.append({"path": "eval_split.jsonl", "role": "eval-split", "rows": len(eval_set),
                              "fraction": cfg.data.eval_fraction, "seed": cfg.seed})
    else:
        eval_set = None
    if len(train) == 0:
        raise QrtrainError(f"no training examples left in {', '.join(map(str, paths))} after the evaluation split; "
                           "add data or set data.eval_fraction=0")
    return train, eval_set, described


def prompt_format(rows: list[dict], model_type: str) -> str:
    """How the examples were presented to the model: chat (the chat template), alpaca (the Alpaca prompt),
    prompt-completion (the prompt as written), or text. Evaluation and packaging present prompts the same way."""
    if model_type != "standard":
        return "chat"
    first = rows[0]
    if "prompt" in first:
        return "alpaca" if first["prompt"].startswith("### Instruction:\n") else "prompt-completion"
    return "text"


def check_eval_is_not_train(eval_path: Path, train_paths: list[Path]) -> None:
    """An evaluation set that is a training file (the same file, or the same bytes) measures nothing."""
    for train_path in train_paths:
        same = eval_path.exists() and train_path.exists() and (
            eval_path.resolve() == train_path.resolve()
            or (eval_path.is_file() and train_path.is_file() and eval_path.stat().st_size == train_path.stat().st_size
                and sha256_file(eval_path) == sha256_file(train_path)))
        if same:
            raise QrtrainError(f"data.eval={eval_path} is the same data as data.train {train_path}: a loss on the "
                               "examples trained on says nothing about new ones; give held-out data, or leave "
                               "data.eval null to hold out data.eval_fraction of the training data")


def token_report(dataset, tokenizer, max_length: int, chunk: int = 1000) -> dict:
    """Count examples longer than max_length and those whose loss tokens all lie beyond it; every token length.
    Tokenized a chunk of rows per call (the tokenizer's batch path), as TRL will tokenize them; large sets in
    one process per core (the processes TRL's own tokenizing uses), keeping only two numbers per row."""
    from functools import partial

    measure = partial(chunk_lengths, tokenizer=tokenizer, max_length=max_length)
    processes = data_processes(len(dataset))
    if processes:
        measured = dataset.map(measure, batched=True, batch_size=chunk, num_proc=processes,
                               remove_columns=dataset.column_names, desc="checking token lengths")
        lengths, no_loss = list(measured["length"]), list(measured["no_loss"])
    else:
        lengths, no_loss = [], []
        for start in range(0, len(dataset), chunk):
            part = measure(dataset[start:start + chunk])
            lengths += part["length"]
            no_loss += part["no_loss"]
    return {"examples": len(dataset), "truncated": sum(n > max_length for n in lengths),
            "all_loss_tokens_cut": sum(no_loss), "lengths": lengths}


def data_processes(rows: int) -> int | None:
    """Worker processes for TRL's tokenizing: one per core for large sets, none for small (start-up costs more)."""
    import os

    return min(os.cpu_count() or 1, 8) if rows >= 20_000 else None


def chunk_lengths(rows: dict, tokenizer, max_length: int) -> dict:
    """{length, no_loss} per row of a chunk (columns): its token count, and whether max_length cuts every
    loss token (the first token is never predicted)."""
    if "messages" in rows:
        encoded = tokenizer.apply_chat_template(rows["messages"], tokenize=True, return_dict=True,
                                                return_assistant_tokens_mask=True)
        pairs = zip(encoded["input_ids"], encoded["assistant_masks"])
    elif "prompt" in rows:
        prompts = tokenizer(rows["prompt"])["input_ids"]
        full = tokenizer([p + c for p, c in zip(rows["prompt"], rows["completion"])])["input_ids"]
        pairs = ((ids, [0] * len(p) + [1] * (len(ids) - len(p))) for p, ids in zip(prompts, full))
    else:
        pairs = ((ids, [1] * len(ids)) for ids in tokenizer(rows["text"])["input_ids"])
    lengths, no_loss = [], []
    for ids, mask in pairs:
        lengths.append(len(ids))
        no_loss.append(sum(mask[1:max_length]) == 0)
    return {"length": lengths, "no_loss": no_loss}


def check_token_lengths(train, tokenizer, max_length: int) -> dict:
    """Refuse a set where max_length cuts every loss token; report counts otherwise."""
    report = token_report(train, tokenizer, max_length)
    if report["all_loss_tokens_cut"] == report["examples"]:
        raise QrtrainError(f"all {report['examples']} training examples lose every loss token to "
                           f"training.max_length={max_length}; raise training.max_length or shorten the prompts")
    return report


def hash_sources(sources: list[dict]) -> list[dict]:
    """Each source with the sha256 of its file (or the root digest of a dataset folder); the held-out split
    is hashed when it is written into the version."""
    return [s if s["role"] == "eval-split" else
            dict(s, sha256=sha256_file(Path(s["path"])) if Path(s["path"]).is_file()
                 else build_manifest(Path(s["path"]))["root_digest"]) for s in sources]
