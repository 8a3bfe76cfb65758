"""Fine-tune with TRL's SFTTrainer + PEFT LoRA and publish a new artifact version.

    qrtrain train model=tiny training.max_steps=5
    qrtrain train -m strategy=standard,finetune model=tiny training.max_steps=2

The story, top to bottom: check config -> load and check data -> load tokenizer
and model -> add LoRA -> build trainer -> train -> evaluate -> check the base is
untouched -> publish.
"""

import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

from qrtrain import __version__
from qrtrain.errors import QrtrainError

_task_started = False


def run_hydra(overrides: list[str]) -> int:
    """Hand the overrides to Hydra's own run machinery (multirun, launchers, sweepers, --cfg, --help)."""
    import hydra

    from qrtrain.config import conf_dir

    global _task_started
    _task_started = False
    if os.environ.get("QRTRAIN_DEBUG"):
        os.environ["HYDRA_FULL_ERROR"] = "1"
    check_override_syntax(overrides)
    check_writable(Path(artifact_root(overrides)))  # Hydra creates its run folder there first
    sys.argv = ["qrtrain train", *overrides]
    main = hydra.main(config_path=str(conf_dir()), config_name="train", version_base="1.3")(hydra_task)
    try:
        main()
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
        # Hydra exits 1 on a config it cannot compose (unknown option, bad override): that is a usage error.
        return 2 if code == 1 and not _task_started else code
    return 0


def check_override_syntax(overrides: list[str]) -> None:
    """Name the key=value token that Hydra's override grammar rejects (Hydra's own message does not)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    for token in overrides:
        if token.startswith("-") or "=" not in token:
            continue
        try:
            parser.parse_overrides([token])
        except OverrideParseException as error:
            raise QrtrainError(f"override {token!r} is not valid Hydra syntax ({error.message.splitlines()[0]}); "
                               "write key=value, lists as key=[a,b], quote values with spaces") from None


def artifact_root(overrides: list[str]) -> str:
    """artifact.root as the overrides set it (the last plain value), else the default."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    root = "outputs"
    for token in overrides:
        if token.startswith("artifact.root="):
            override = OverridesParser.create().parse_overrides([token])[0]
            if not override.is_sweep_override() and isinstance(override.value(), str):
                root = override.value()
    return root


def hydra_task(cfg) -> float:
    """One Hydra job: train and publish; returns the final evaluation loss (the sweep objective)."""
    from hydra.core.hydra_config import HydraConfig

    from qrtrain.cli import report_error

    global _task_started
    _task_started = True
    try:
        return train(cfg, Path(HydraConfig.get().runtime.output_dir))
    except QrtrainError as error:
        if os.environ.get("QRTRAIN_DEBUG"):
            traceback.print_exc()
        report_error(error)
        sys.exit(error.exit_code)
    except Exception as error:  # a crash, not bad input: say so, traceback only with --debug
        if os.environ.get("QRTRAIN_DEBUG"):
            raise
        report_error(QrtrainError(f"training failed: {type(error).__name__}: {error} (rerun with --debug for the traceback)"))
        sys.exit(1)


def train(cfg, run_dir: Path) -> float:
    from qrtrain.config import check_config
    from qrtrain.data import check_token_lengths, hash_sources, load_datasets

    check_config(cfg)
    check_writable(Path(cfg.artifact.root))
    train_set, eval_set, data_sources = load_datasets(cfg)
    data_sources = hash_sources(data_sources)

    quiet_libraries()
    from transformers import set_seed

    from qrtrain import checkpoints, models

    result_config = checkpoints.result_config(cfg, data_sources)
    checkpoint_dir, checkpoint_lock = checkpoints.claim_folder(checkpoints.checkpoints_folder(cfg, result_config))
    resume_from = checkpoints.choose_resume(cfg, checkpoint_dir, result_config)

    folder = models.model_folder(cfg.model)
    tokenizer = models.load_tokenizer(folder, cfg.model_type.name)  # the processor for multimodal
    if cfg.model_type.name == "multimodal":
        say(f"data: {len(train_set)} training examples with images, "
            f"{len(eval_set) if eval_set is not None else 0} evaluation examples")
    else:
        lengths = check_token_lengths(train_set, tokenizer, cfg.training.max_length)
        say(f"data: {len(train_set)} training examples ({lengths['truncated']} truncated to {cfg.training.max_length} "
            f"tokens, {lengths['all_loss_tokens_cut']} dropped: no loss token left), "
            f"{len(eval_set) if eval_set is not None else 0} evaluation examples")

    device = models.resolve_device(cfg.training.device)
    dtype = models.compute_dtype(cfg.training.dtype, device)
    set_seed(cfg.seed)  # LoRA's initial weights are drawn here: same seed, same adapter
    model = models.load_model(folder, cfg, device, dtype)

    from peft import get_peft_model

    from qrtrain.lora import check_only_lora_trainable, frozen_digest, lora_config

    model = get_peft_model(model, lora_config(cfg))
    trainable, total = check_only_lora_trainable(model)
    base_digest = frozen_digest(model)
    say(f"model: {folder.name} on {device} ({str(dtype).removeprefix('torch.')}), quantization={cfg.quantization.name}, "
        f"{trainable:,} of {total:,} parameters trainable (LoRA only)")

    from qrtrain.extensions import build_extensions, load_states

    extensions = build_extensions(cfg)
    stop = checkpoints.StopOnSignal()
    trainer = build_trainer(cfg, model, tokenizer, train_set, eval_set, run_dir, device, dtype,
                            checkpoint_dir=checkpoint_dir, result_config=result_config, stop=stop,
                            extensions=extensions)
    if resume_from is not None:
        load_states(extensions, resume_from)
        say(f"resuming from step {resume_from.name.split('-')[1]} ({resume_from})")
    started = time.time()
    stop.install()
    try:
        result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    finally:
        stop.uninstall()
    if stop.exit_code is not None:
        saved = checkpoints.complete_checkpoints(checkpoint_dir)
        where = f"checkpoint saved at step {trainer.state.global_step} ({saved[-1]})" if saved else "no checkpoint saved"
        report_interrupt(where, stop.exit_code)
    metrics = {"train_loss": result.training_loss, "train_runtime_s": round(time.time() - started, 3),
               "global_step": trainer.state.global_step,
               "num_tokens": next((h["num_tokens"] for h in reversed(trainer.state.log_history) if "num_tokens" in h), None)}
    if eval_set is not None:
        metrics.update(trainer.evaluate())

    if frozen_digest(model) != base_digest:
        raise QrtrainError("the base weights changed during training; nothing was published", exit_code=1)
    if not trainer.is_world_process_zero():  # multi-process training: the main process publishes, once
        return float(metrics.get("eval_loss", metrics["train_loss"]))

    try:
        version = publish(cfg, trainer, tokenizer, metrics, data_sources, folder, device, base_digest)
    except OSError as error:
        raise QrtrainError(f"could not write the artifact under {cfg.artifact.root} ({error.strerror or error}); "
                           "nothing was published and earlier versions are untouched; free space or choose "
                           "another artifact.root, then run the same command to resume", exit_code=1) from None
    shutil.rmtree(checkpoint_dir, ignore_errors=True)  # the training is done: its checkpoints served their purpose
    if checkpoint_lock is not None:
        checkpoint_lock.close()
    say(f"published {version}; check it with: qrtrain verify {version}")
    print(version)
    return float(metrics.get("eval_loss", metrics["train_loss"]))


def report_interrupt(where: str, code: int) -> None:
    """Say how to resume after SIGINT/SIGTERM and exit 130/143."""
    from qrtrain.cli import report_error

    overrides = [a for a in sys.argv[1:] if a not in ("-m", "--multirun")]
    report_error(QrtrainError(f"interrupted: {where}; resume with: qrtrain train {' '.join(overrides)}".rstrip()))
    sys.exit(code)


def check_writable(root: Path) -> None:
    """Fail before training, not after, when the artifact root cannot be written."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".write-test-"):
            pass
    except OSError as error:
        raise QrtrainError(f"artifact.root={root} is not writable ({error.strerror}); choose another "
                           "artifact.root or fix its permissions") from None


def build_trainer(cfg, model, tokenizer, train_set, eval_set, run_dir: Path, device: str, dtype,
                  checkpoint_dir: Path | None = None, result_config: dict | None = None, stop=None,
                  extensions: dict | None = None):
    import torch
    from transformers import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    from qrtrain.checkpoints import PARTIAL, AtomicCheckpoints
    from qrtrain.progress import MetricsFile, RichProgress, tensorboard_callback
    from qrtrain.strategy import build_optimizer

    t = cfg.training
    evaluate_every = eval_set is not None and t.eval_steps > 0
    saving = checkpoint_dir is not None and cfg.checkpoint.every_steps > 0
    extensions = extensions or {}
    # extensions first: what they add to the logs reaches metrics.jsonl and TensorBoard
    callbacks = [RichProgress(), *extensions.values(), MetricsFile(run_dir / "metrics.jsonl"),
                 tensorboard_callback(run_dir / "tensorboard")]
    if saving:
        callbacks.append(AtomicCheckpoints(checkpoint_dir, result_config, cfg.checkpoint.keep_last,
                                           cfg.checkpoint.best_metric, cfg.checkpoint.greater_is_better, extensions))
    if stop is not None:
        callbacks.append(stop)
    args = SFTConfig(
        output_dir=str(checkpoint_dir / PARTIAL) if saving else str(run_dir / "checkpoints"),
        max_steps=t.max_steps,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        weight_decay=t.weight_decay,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio,
        packing=t.packing,
        gradient_checkpointing=t.gradient_checkpointing,
        assistant_only_loss=cfg.model_type.name in ("dialogue", "multimodal"),
        max_length=None if cfg.model_type.name == "multimodal" else t.max_length,  # image tokens must not be cut
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        use_cpu=device == "cpu",
        seed=cfg.seed,
        logging_steps=t.logging_steps,
        eval_strategy="steps" if evaluate_every else "no",
        eval_steps=t.eval_steps if evaluate_every else None,
        save_strategy="steps" if saving else "no",
        save_steps=cfg.checkpoint.every_steps if saving else None,
        report_to="none",
        disable_tqdm=True,
        dataset_num_proc=None,
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=eval_set,
        processing_class=tokenizer,
        optimizers=(build_optimizer(model, cfg), None),
        callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)
    return trainer


def publish(cfg, trainer, tokenizer, metrics: dict, data_sources: list[dict], base_folder: Path, device: str,
            base_digest: str) -> Path:
    import hashlib
    import platform
    from datetime import datetime, timezone

    from omegaconf import OmegaConf

    from qrtrain.artifact import publish_version, staging_folder
    from qrtrain.extensions import describe as describe_extensions
    from qrtrain.manifest import sha256_file, write_json

    with staging_folder(Path(cfg.artifact.root), cfg.artifact.name) as staging:
        trainer.model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "training_config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True), encoding="utf-8")
        write_json(staging / "training_metrics.json",
                   {"final": metrics, "history": [entry for entry in trainer.state.log_history]})
        template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
        metadata = {
            "name": cfg.artifact.name,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "qrtrain_version": __version__,
            "git_commit": git_commit(),
            "base_model": {
                "name": cfg.model.name,
                "path": str(cfg.model.path or base_folder),
                "files": {p.name: sha256_file(p) for p in sorted(base_folder.iterdir())
                          if p.suffix in (".safetensors", ".json", ".jinja", ".model", ".txt") and p.is_file()},
            },
            "model_type": cfg.model_type.name,
            "strategy": cfg.strategy.name,
            "quantization": cfg.quantization.name,
            "datasets": data_sources,
            "chat_template_sha256": hashlib.sha256(template.encode()).hexdigest() if template else None,
            "seed": cfg.seed,
            "device": device_description(device),
            "python": platform.python_version(),
            "libraries": library_versions(),
            "base_weights_check": {"frozen_parameters_sha256": base_digest, "unchanged": True},
            "extensions": describe_extensions(cfg),
        }
        (staging / "README.md").write_text(model_card(cfg, metadata, metrics), encoding="utf-8")
        return publish_version(staging, metadata)


def model_card(cfg, metadata: dict, metrics: dict) -> str:
    """A Hugging Face model card: front matter, how it was made, how to load and verify it."""
    eval_loss = metrics.get("eval_loss")
    return f"""---
library_name: peft
base_model: {metadata['base_model']['path']}
tags: [qrtrain, lora, {cfg.model_type.name}, {cfg.quantization.name}]
---

# {cfg.artifact.name}

A LoRA adapter (r={cfg.lora.r}, alpha={cfg.lora.alpha}) for `{cfg.model.name}`, trained by qrtrain {__version__}
with model_type={cfg.model_type.name}, strategy={cfg.strategy.name}, quantization={cfg.quantization.name},
{metrics.get('global_step')} steps; final train loss {metrics.get('train_loss'):.4f}{f', eval loss {eval_loss:.4f}' if eval_loss is not None else ''}.

## Load

```python
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

base = AutoModelForCausalLM.from_pretrained("{metadata['base_model']['path']}")
model = PeftModel.from_pretrained(base, "PATH_TO_THIS_FOLDER")
tokenizer = AutoTokenizer.from_pretrained("PATH_TO_THIS_FOLDER")
```

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
    import platform

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


def say(message: str) -> None:
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True, highlight=False, soft_wrap=True).print(f"[dim]qrtrain:[/] {escape(message)}")


def quiet_libraries() -> None:
    """Keep library chatter (per-dataset progress bars, load reports) out of the terminal."""
    import logging
    import warnings

    import datasets
    import transformers

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="peft|transformers|trl|torch")
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    logging.getLogger("accelerate").setLevel(logging.WARNING)
    datasets.disable_progress_bars()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
