"""The SFTTrainer for a run: SFTConfig from the config, the optimizer, and the callbacks.

    qrtrain train model=tiny training.max_steps=5 training.batch_size=4
"""

from pathlib import Path


def build_trainer(cfg, model, tokenizer, train_set, eval_set, run_dir: Path, device: str, dtype,
                  checkpoint_dir: Path | None = None, result_config: dict | None = None, stop=None,
                  extensions: dict | None = None):
    import torch
    from transformers import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    from qrtrain.training.checkpoints import PARTIAL, AtomicCheckpoints
    from qrtrain.training.progress import MetricsFile, RichProgress, tensorboard_callback
    from qrtrain.training.strategy import build_optimizer

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
