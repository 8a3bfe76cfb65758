"""What an artifact version records about how it was made: metadata.json and the model card.

    qrtrain train model=tiny training.max_steps=2 && cat outputs/tiny-dialogue/v1/metadata.json

`metadata.json` holds the base model's file hashes, the data's hashes, the chat template's hash,
the seed, the device and the library versions; `README.md` is a Hugging Face model card.
"""

import hashlib
import platform
from datetime import datetime, timezone
from pathlib import Path

from qrtrain import __version__
from qrtrain.files import sha256_file


def version_metadata(cfg, tokenizer, data_sources: list[dict], base_folder: Path, device: str, base_digest: str,
                     extensions: dict, parent=None, tracking: dict | None = None) -> dict:
    """metadata.json's contents (the version number is added when the version is published)."""
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
    return {
        "name": cfg.artifact.name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "qrtrain_version": __version__,
        "git_commit": git_commit(),
        "base_model": {
            "name": cfg.model.name,
            "hub_id": cfg.model.get("hub_id"),
            "weights": (f"{cfg.model.gguf_file} from the {cfg.model.gguf_package} package, dequantised to float32"
                        if cfg.model.get("source") == "gguf" and not cfg.model.get("path") else "as in the folder"),
            "path": str(cfg.model.path or base_folder),
            "files": {p.name: sha256_file(p) for p in sorted(base_folder.iterdir())
                      if p.suffix in (".safetensors", ".json", ".jinja", ".model", ".txt") and p.is_file()},
        },
        "model_type": cfg.model_type.name,
        "method": method_record(cfg),
        "parent": parent.record() if parent is not None else None,  # qrtrain/artifacts/lineage.py
        "strategy": cfg.strategy.name,
        "quantization": cfg.quantization.name,
        "datasets": [dict(source, synth_provenance=synth) if (synth := synth_provenance(source)) else source
                     for source in data_sources],
        "chat_template_sha256": hashlib.sha256(template.encode()).hexdigest() if template else None,
        "seed": cfg.seed,
        "device": device_description(device),
        "python": platform.python_version(),
        "libraries": library_versions(),
        "base_weights_check": {"frozen_parameters_sha256": base_digest, "unchanged": True},
        "extensions": extensions,
        "tracking": tracking or {},  # each tracker's run of this version (qrtrain/training/tracking.py)
        "prompt": prompt_format(data_sources, tokenizer),
    }


def method_record(cfg) -> dict:
    """The training method and its settings (conf/method/), minus where its demo data lives."""
    from omegaconf import OmegaConf

    method = OmegaConf.to_container(cfg.method, resolve=True)
    return {k: v for k, v in method.items() if k not in ("suffix", "demo_train", "demo_eval")}


ALPACA_TEMPLATE = "### Instruction:\n{instruction}\n\n[### Input:\n{input}\n\n]### Response:\n"


def prompt_format(data_sources: list[dict], tokenizer) -> dict:
    """How a prompt must be presented to this adapter and when its answer ends: the format it was trained
    with, the exact template, and the stop token (TRL ends every training example with it)."""
    formats = [s.get("format") for s in data_sources if s.get("role") == "train" and s.get("format")]
    kind = formats[0] if formats else "chat"
    templates = {
        "chat": "the chat template in chat_template.jinja: tokenizer.apply_chat_template(messages, "
                "add_generation_prompt=True); the answer is the assistant turn",
        "alpaca": ALPACA_TEMPLATE + "   (the [### Input] block only when there is an input)",
        "prompt-completion": "{prompt}   (the prompt exactly as written in training; the answer is its completion)",
        "text": "{text}   (plain text: the adapter continues it)",
    }
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a multimodal processor holds its tokenizer
    stop = tokenizer.eos_token if isinstance(tokenizer.eos_token, str) else None
    return {"format": kind, "template": templates.get(kind, kind), "stop_token": stop,
            "stop_token_id": tokenizer.eos_token_id, "add_special_tokens": kind != "chat"}


def synth_provenance(source: dict) -> dict | None:
    """The synth_provenance.json beside a data file that `qrtrain synth` wrote, when it names this file with
    the same sha256 (the data as generated, unchanged)."""
    import json

    path = Path(source.get("path", ""))
    record = path.parent / "synth_provenance.json"
    if source.get("role") == "eval-split" or not record.is_file() or not source.get("sha256"):
        return None
    try:
        provenance = json.loads(record.read_text(encoding="utf-8"))
    except ValueError:
        return None
    outputs = provenance.get("outputs", {}) if isinstance(provenance, dict) else {}
    return provenance if outputs.get(path.name) == source["sha256"] else None


def base_model_reference(cfg) -> str:
    """How the adapter names its base: the Hub id where one is known (it resolves on any machine), else what
    model.path was given, else the model option's name. metadata.json keeps the local folder and file hashes."""
    return cfg.model.get("hub_id") or (str(cfg.model.path) if cfg.model.get("path") else cfg.model.name)


def model_card(cfg, metadata: dict, metrics: dict) -> str:
    """A Hugging Face model card: front matter, how it was made, how to load and verify it."""
    eval_loss = metrics.get("eval_loss")
    hub_id = metadata["base_model"].get("hub_id")
    base = base_model_reference(cfg)
    weights = metadata["base_model"].get("weights", "")
    note = (f"\nThe base weights qrtrain trained against are `{hub_id}`'s {weights}; the file hashes are in "
            "`metadata.json`. Loading the Hub's original weights instead gives a slightly different base than the "
            "one trained against (a 4-bit GGUF is not the original); how much that changes the adapter's answers "
            "was not measured here (no Hub access): `qrtrain evaluate THIS_VERSION model.path=HUB_FOLDER` measures "
            "it on your machine.\n" if hub_id and "dequantised" in weights else "")
    front_base = f"base_model: {hub_id}\n" if hub_id else ""
    method, parent = metadata.get("method") or {"name": "sft"}, metadata.get("parent")
    lineage = (f"\nTrained with {method['name'].upper()}"
               + (f" (beta {method['beta']})" if "beta" in method else "")
               + (f", continuing `{parent['name']}/{parent['version']}` (root digest {parent['root_digest']}), "
                  "which `qrtrain verify` checks when it sits beside this version." if parent else ".") + "\n"
               if method["name"] != "sft" or parent else "")
    return f"""---
library_name: peft
{front_base}tags: [qrtrain, lora, {cfg.method.name}, {cfg.model_type.name}, {cfg.quantization.name}]
---

# {cfg.artifact.name}

A LoRA adapter (r={cfg.lora.r}, alpha={cfg.lora.alpha}) for `{base}`, trained by qrtrain {__version__}
with model_type={cfg.model_type.name}, strategy={cfg.strategy.name}, quantization={cfg.quantization.name},
{metrics.get('global_step')} steps; final train loss {metrics.get('train_loss'):.4f}{f', eval loss {eval_loss:.4f}' if eval_loss is not None else ''}.
{lineage}{note}
## Load

```python
from peft import AutoPeftModelForCausalLM
from transformers import AutoTokenizer

model = AutoPeftModelForCausalLM.from_pretrained("PATH_TO_THIS_FOLDER")   # the base by its name: {base}
tokenizer = AutoTokenizer.from_pretrained("PATH_TO_THIS_FOLDER")
```

## Prompt format

Trained on `{metadata['prompt']['format']}` prompts; present prompts the same way, or the adapter answers
something it was never trained on:

```text
{metadata['prompt']['template']}
```

Generation stops at `{metadata['prompt']['stop_token']}` (token id {metadata['prompt']['stop_token_id']}); with
PEFT alone: `model.generate(**tokenizer(prompt, return_tensors="pt"{'' if metadata['prompt']['add_special_tokens']
else ', add_special_tokens=False'}), eos_token_id={metadata['prompt']['stop_token_id']}, max_new_tokens=...)`.

## Verify

```bash
qrtrain verify PATH_TO_THIS_FOLDER                       # every file against checksums.json
qrtrain verify PATH_TO_THIS_FOLDER --base BASE_FOLDER    # and the base model against metadata.json
```

`metadata.json` records the base model's file hashes, the data, the seed, the library versions and the device;
`training_config.yaml` is the full resolved config.
"""


def git_commit() -> str | None:
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def device_description(device: str) -> str:
    import torch

    if device == "cuda":
        return f"cuda: {torch.cuda.get_device_name(0)}"
    return f"cpu: {platform.machine()}, {torch.get_num_threads()} threads"


def library_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("torch", "transformers", "peft", "trl", "bitsandbytes", "datasets", "safetensors"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found
