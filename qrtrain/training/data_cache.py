"""Prepared training data, cached by content: a rerun on the same data starts training in seconds.

    qrtrain train data.train=big.jsonl      # first run: checks, tokenizes, caches
    qrtrain train data.train=big.jsonl      # rerun: the cached, tokenized sets (make clean-cache clears them)

The key covers everything that shapes the prepared data: the sha256 of every data file, the `data`
section, max_length, packing, model_type, the seed, the tokenizer (its files and the chat template in
use) and the qrtrain, TRL and datasets versions. An entry holds TRL's prepared (tokenized, labelled,
truncated) train and eval sets, the token report, the sources with their hashes, and the raw held-out
rows; it is written aside and renamed into place, complete or absent. A hit skips reading, checking and
tokenizing; TRL is told to skip its preparation (`skip_prepare_dataset`).
"""

import hashlib
import json
import shutil
import tempfile
from importlib.metadata import version
from pathlib import Path

from qrtrain import __version__
from qrtrain.config import demo_option, train_sources
from qrtrain.data.rows import DEMO_DIR
from qrtrain.files import sha256_file

COMPLETE = ".complete"


def cache_key(cfg, tokenizer) -> str | None:
    """The content key, or None where nothing is cached (multimodal: TRL prepares images on the fly)."""
    from omegaconf import OmegaConf

    if cfg.model_type.name == "multimodal" or cfg.method.name in ("orpo", "simpo"):
        return None  # ORPO and SimPO: trl.experimental's trainers tokenize in __init__, with no way to skip it
    paths = [Path(p) for p in train_sources(cfg)] or [DEMO_DIR / demo_option(cfg).demo_train]
    if cfg.data.eval is not None:
        paths.append(Path(cfg.data.eval))
    if not all(p.is_file() for p in paths):  # a saved-dataset folder: hashed file by file elsewhere; not cached
        return None
    backend = getattr(tokenizer, "backend_tokenizer", None)
    described = {
        "files": [sha256_file(p) for p in paths],
        "data": OmegaConf.to_container(cfg.data, resolve=True),
        "max_length": cfg.training.max_length, "packing": cfg.training.packing,
        "model_type": cfg.model_type.name, "method": cfg.method.name, "seed": cfg.seed,
        "tokenizer": hashlib.sha256(backend.to_str().encode()).hexdigest() if backend else type(tokenizer).__name__,
        "chat_template": tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None,
        "special": [tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token],
        "versions": [__version__, version("trl"), version("datasets"), version("transformers")],
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()[:20]


def folder_for(key: str) -> Path:
    from qrtrain.models.loading import cache_dir

    return cache_dir() / "data" / key


def load(key: str | None):
    """(train, eval or None, sources, token report, raw held-out rows) from the cache, or None."""
    if key is None or not (folder_for(key) / COMPLETE).is_file():
        return None
    from datasets import load_from_disk

    folder = folder_for(key)
    try:
        info = json.loads((folder / "info.json").read_text())
        train = load_from_disk(str(folder / "train"))
        eval_set = load_from_disk(str(folder / "eval")) if (folder / "eval").is_dir() else None
    except (OSError, ValueError, FileNotFoundError):
        return None  # a damaged entry is rebuilt
    return train, eval_set, info["sources"], info["report"], info["held_out"]


def save(key: str | None, trainer, sources: list[dict], report: dict, raw_eval) -> None:
    """Store the trainer's prepared sets; a failure to cache never fails the training."""
    if key is None or folder_for(key).exists():
        return
    folder = folder_for(key)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=folder.parent))
    except OSError:
        return
    try:
        trainer.train_dataset.save_to_disk(str(staging / "train"))
        if trainer.eval_dataset is not None:
            trainer.eval_dataset.save_to_disk(str(staging / "eval"))
        held_out = [dict(row) for row in raw_eval] if any(s["role"] == "eval-split" for s in sources) else []
        (staging / "info.json").write_text(json.dumps({"sources": sources, "report": report, "held_out": held_out}))
        (staging / COMPLETE).write_text("")
        staging.rename(folder)
    except OSError:
        pass
    finally:
        shutil.rmtree(staging, ignore_errors=True)
