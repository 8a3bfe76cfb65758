"""The training story, top to bottom: check config -> tokenizer -> load and check data (or take it
prepared from the data cache) -> plan memory -> load the model -> add LoRA -> build trainer -> train ->
evaluate -> check the base is untouched -> publish.

    qrtrain train model=tiny training.max_steps=5

Fine-tuning is TRL's SFTTrainer with PEFT LoRA (QLoRA through bitsandbytes); `qrtrain.training.run`
hands the command line to Hydra, which calls `train` once per job.
"""

import json
import shutil
import time
from pathlib import Path

from qrtrain.artifacts.versions import check_writable
from qrtrain.errors import QrtrainError
from qrtrain.events import emit, write_events_to
from qrtrain.terminal import quiet_libraries, say


def train(cfg, run_dir: Path) -> float:
    """Train and publish one version; returns the final evaluation loss (the sweep objective)."""
    from qrtrain.config import check_config, name_for_data
    from qrtrain.training.datasets import check_token_lengths, hash_sources, load_datasets
    from qrtrain.training.memory import prefer_huge_pages

    prefer_huge_pages()  # before the first tensor
    write_events_to(run_dir / "events.jsonl")
    emit("validating_data")
    check_config(cfg)
    check_writable(Path(cfg.artifact.root))
    quiet_libraries()
    from transformers import set_seed

    from qrtrain.models.loading import (
        compute_dtype,
        load_model,
        load_tokenizer,
        model_folder,
        name_the_base,
        resolve_device,
    )
    from qrtrain.models.threads import set_cpu_threads
    from qrtrain.training import checkpoints, data_cache

    folder = model_folder(cfg.model)
    name_the_base(cfg.model, folder)  # model.path: named from what was loaded (and artifact.name with it)
    name_for_data(cfg)  # user data: its own artifact, not the next version of the demo's
    tokenizer = load_tokenizer(folder, cfg.model_type.name)  # the processor for multimodal
    data_key = data_cache.cache_key(cfg, tokenizer)
    cached = data_cache.load(data_key)  # the same data, tokenizer and settings prepared before: no re-reading
    if cached is None:
        train_set, eval_set, data_sources = load_datasets(cfg)
        data_sources = hash_sources(data_sources)
        report = None if cfg.model_type.name == "multimodal" else check_token_lengths(train_set, tokenizer,
                                                                                      cfg.training.max_length)
        held_out = eval_set
    else:
        train_set, eval_set, data_sources, report, held_out = cached
    evaluated = len(eval_set) if eval_set is not None else 0
    if report is None:  # multimodal: image tokens are counted by the processor, on the fly
        say(f"data: {len(train_set)} training examples with images, {evaluated} evaluation examples")
    else:
        say(f"data: {report['examples']} training examples ({report['truncated']} truncated to {cfg.training.max_length} "
            f"tokens, {report['all_loss_tokens_cut']} dropped: no loss token left), {evaluated} evaluation examples"
            + (" (prepared before: from the data cache)" if cached else ""))

    result_config = checkpoints.result_config(cfg, data_sources)
    checkpoint_dir, checkpoint_lock = checkpoints.claim_folder(checkpoints.checkpoints_folder(cfg, result_config))
    resume_from = checkpoints.choose_resume(cfg, checkpoint_dir, result_config)

    import torch

    from qrtrain.training.attention import choose_attention
    from qrtrain.training.memory import apply_checkpointing, out_of_memory_advice, plan_for_run, release_freed_memory

    device = resolve_device(cfg.training.device)
    threads = set_cpu_threads(cfg.training.threads, "training.threads")
    dtype = compute_dtype(cfg.training.dtype, device)
    padding_free, attention = choose_attention(cfg.training.padding_free, cfg.model_type.name, device, dtype)
    plan = plan_for_run(cfg, folder, report and report["lengths"], device, dtype, padding_free)
    if device == "cuda" or plan.checkpointed_layers:
        say(plan.line())
    if plan.warning:
        say(plan.warning)
    # a batch larger than the plan's (rare: the plan is the 99th percentile) checkpoints every layer for its step
    fallback = (device == "cuda" and cfg.training.gradient_checkpointing == "auto"
                and (plan.largest_tokens or 0) > plan.tokens and plan.checkpointed_layers < plan.num_layers)
    release_freed_memory(cfg.training.release_freed_memory, device, plan.parts["activations"])
    set_seed(cfg.seed)  # LoRA's initial weights are drawn here: same seed, same adapter
    emit("loading_model", model=folder.name, device=device)
    model = load_model(folder, cfg, device, dtype, attention)

    from qrtrain.training.lora import (
        add_lora,
        check_only_lora_trainable,
        frozen_digest,
        keep_lora_inputs_in_compute_dtype,
    )

    model = add_lora(model, cfg)
    keep_lora_inputs_in_compute_dtype(model, dtype)
    unplanned_layers = apply_checkpointing(model, plan.checkpointed_layers, fallback)
    trainable, total = check_only_lora_trainable(model)
    base_digest = frozen_digest(model)
    say(f"model: {folder.name} on {device} ({threads} CPU threads, {str(dtype).removeprefix('torch.')}), quantization={cfg.quantization.name}, "
        f"attention={attention}{', padding-free batches' if padding_free else ''}, "
        f"{trainable:,} of {total:,} parameters trainable (LoRA only)")

    from qrtrain.training.extensions import build_extensions, load_states

    extensions = build_extensions(cfg)
    checkpoints.refuse_deferred_signal()  # a sweep's earlier job was signalled after it published
    stop = checkpoints.StopOnSignal()
    from qrtrain.training.trainer import build_trainer

    trainer = build_trainer(cfg, model, tokenizer, train_set, eval_set, run_dir, device, dtype,
                            checkpoint_dir=checkpoint_dir, result_config=result_config, stop=stop,
                            extensions=extensions, padding_free=padding_free, prepared=cached is not None)
    if fallback:
        trainer.checkpoint_above = (plan.tokens, unplanned_layers)
    if cached is None:
        data_cache.save(data_key, trainer, data_sources, report, held_out)
    if resume_from is not None:
        load_states(extensions, resume_from, str(next(model.parameters()).device))
        say(f"resuming from step {resume_from.name.split('-')[1]} ({resume_from})")
    started = time.time()
    stop.install()  # until the version is published: see checkpoints.StopOnSignal
    try:
        try:
            result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        except torch.OutOfMemoryError:
            saved = checkpoints.complete_checkpoints(checkpoint_dir)
            raise QrtrainError(f"out of memory at step {trainer.state.global_step} ({plan.line()}); "
                               f"{out_of_memory_advice(cfg.training.gradient_checkpointing)}; "
                               + (f"the last checkpoint ({saved[-1]}) resumes with the same command" if saved
                                  else "no checkpoint was saved") + "; nothing was published", exit_code=1) from None
        if stop.exit_code is not None:
            saved = checkpoints.complete_checkpoints(checkpoint_dir)
            where = f"checkpoint saved at step {trainer.state.global_step} ({saved[-1]})" if saved else "no checkpoint saved"
            checkpoints.report_interrupt(where, stop.exit_code)
        metrics = {"train_loss": result.training_loss, "train_runtime_s": round(time.time() - started, 3),
                   "global_step": trainer.state.global_step,
                   "num_tokens": next((h["num_tokens"] for h in reversed(trainer.state.log_history) if "num_tokens" in h), None)}
        if eval_set is not None:
            emit("evaluating", step=trainer.state.global_step)
            metrics.update(trainer.evaluate())

        if frozen_digest(model) != base_digest:
            raise QrtrainError("the base weights changed during training; nothing was published", exit_code=1)
        if not trainer.is_world_process_zero():  # multi-process training: the main process publishes, once
            return float(metrics.get("eval_loss", metrics["train_loss"]))
        if stop.exit_code is not None:
            checkpoints.report_interrupt("after training, before publishing; nothing was published", stop.exit_code)

        stop.publishing = True
        emit("publishing")
        try:
            version = publish(cfg, trainer, tokenizer, metrics, data_sources, folder, device, base_digest, held_out)
        except OSError as error:
            raise QrtrainError(f"could not write the artifact under {cfg.artifact.root} ({error.strerror or error}); "
                               "nothing was published and earlier versions are untouched; free space or choose "
                               "another artifact.root, then run the same command to resume", exit_code=1) from None
        # the training is done: its checkpoints served their purpose, and so did those of earlier runs of this
        # artifact that were interrupted and then changed (no live run holds them)
        checkpoints.discard_checkpoints(list(checkpoint_dir.glob("checkpoint-*")))
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
        checkpoints.remove_abandoned(Path(cfg.artifact.root), cfg.artifact.name)
    finally:
        if not stop.publishing:
            stop.uninstall()
        # once publishing began, signals stay deferred until the process exits: a published run exits 0
    if checkpoint_lock is not None:
        checkpoint_lock.close()
    if stop.received is not None:
        say(f"a signal ({checkpoints.signal_name(stop.received)}) arrived while publishing: the version was completed "
            "first, and it is whole")
    emit("done", version=str(version), train_loss=metrics["train_loss"], eval_loss=metrics.get("eval_loss"),
         global_step=metrics["global_step"])
    say(f"published {version}; check it with: qrtrain verify {version}")
    print(version)
    return float(metrics.get("eval_loss", metrics["train_loss"]))


def publish(cfg, trainer, tokenizer, metrics: dict, data_sources: list[dict], base_folder: Path, device: str,
            base_digest: str, eval_set=None) -> Path:
    """Save the adapter, tokenizer, config, metrics, metadata and model card as the next version."""
    from omegaconf import OmegaConf

    from qrtrain.artifacts.provenance import base_model_reference, model_card, version_metadata
    from qrtrain.artifacts.versions import publish_version, staging_folder
    from qrtrain.files import sha256_file, write_json
    from qrtrain.training.extensions import describe as describe_extensions

    with staging_folder(Path(cfg.artifact.root), cfg.artifact.name) as staging:
        for peft_config in trainer.model.peft_config.values():  # a name that resolves on other machines
            peft_config.base_model_name_or_path = base_model_reference(cfg)
        trainer.model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "training_config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True), encoding="utf-8")
        write_json(staging / "training_metrics.json",
                   {"final": metrics, "history": [entry for entry in trainer.state.log_history]})
        if any(source["role"] == "eval-split" for source in data_sources):  # the examples held out, as trained
            split = staging / "eval_split.jsonl"
            split.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in eval_set), encoding="utf-8")
            data_sources = [dict(s, sha256=sha256_file(split)) if s["role"] == "eval-split" else s for s in data_sources]
        metadata = version_metadata(cfg, tokenizer, data_sources, base_folder, device, base_digest,
                                    describe_extensions(cfg))
        (staging / "README.md").write_text(model_card(cfg, metadata, metrics), encoding="utf-8")
        return publish_version(staging, metadata)
