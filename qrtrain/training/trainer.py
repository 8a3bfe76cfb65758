"""The SFTTrainer for a run: SFTConfig from the config, the collator, the optimizer, and the callbacks
(the callbacks and TrainingArguments every method shares are built here too).

    qrtrain train model=tiny training.max_steps=5 training.batch_size=4
    qrtrain train model=tiny training.padding_free=true   # one row per batch, no padding (auto: on CUDA)

Padding-free batches come from TRL's own collator (`DataCollatorForLanguageModeling(padding_free=True)`),
passed in so that TRL still truncates every example to `training.max_length` while preparing the data
(TRL does not truncate when its `padding_free` option is set). The loss and gradients equal those of
padded batches (tests/training/test_trainer.py).
"""

from pathlib import Path

import torch
from trl import SFTTrainer

from qrtrain.terminal import say
from qrtrain.training.memory import step_tokens


class PlannedCheckpointing:
    """A Trainer's `training_step` (its documented seam), for every method's trainer: `checkpoint_above` =
    (planned tokens, the layers the plan left without checkpointing); a micro-batch above the plan's tokens
    checkpoints those layers too, for its own step (qrtrain/training/memory.py)."""

    checkpoint_above: tuple[int, list] | None = None

    def training_step(self, model, inputs, num_items_in_batch=None):
        if self.checkpoint_above is None or step_tokens(inputs) <= self.checkpoint_above[0]:
            return super().training_step(model, inputs, num_items_in_batch)
        planned, layers = self.checkpoint_above
        if not self.__dict__.get("_said_oversized"):
            self._said_oversized = True
            say(f"memory: a micro-batch of {step_tokens(inputs):,} tokens, above the planned {planned:,}: every layer "
                "is checkpointed for such steps")
        for layer in layers:
            layer.gradient_checkpointing = True
        try:
            return super().training_step(model, inputs, num_items_in_batch)
        finally:
            for layer in layers:
                layer.gradient_checkpointing = False


class SFTTrainerWithoutStepSyncs(PlannedCheckpointing, SFTTrainer):
    """TRL's SFTTrainer, except that its per-step metrics (entropy, token accuracy, tokens trained) stay on
    the device until a logging step. TRL reads each with `.item()` every step, and each read waits for the
    GPU to drain its queue. The loss is TRL's own formula; the logged values are equal to TRL's (tested).
    Anything but the plain training loss (evaluation, DFT loss, label smoothing, a custom loss, MoE
    auxiliary loss, sequence parallelism) goes through TRL's compute_loss unchanged.

    Planned checkpointing's fallback comes from PlannedCheckpointing."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not model.training and "labels" in inputs:  # evaluation: token-weighted, as `qrtrain evaluate` weighs it
            result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            loss = result[0] if return_outputs else result
            tokens = (inputs["labels"][..., 1:] != -100).sum()
            sums = self.__dict__.setdefault("_eval_sums", [])
            sums.append(torch.stack([loss.detach().float() * tokens, tokens.float()]))
            return result
        if (return_outputs or not model.training or self.compute_loss_func is not None or self.label_smoother
                is not None or self.aux_loss_enabled or self.args.loss_type != "nll"
                or getattr(self.accelerator, "parallelism_config", None) is not None):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        inputs["use_cache"] = False
        outputs = model(**inputs, fused_lm_head=True)
        num_tokens = outputs.label_mask.sum() if num_items_in_batch is None else num_items_in_batch
        loss = -outputs.log_probs.sum() / torch.as_tensor(num_tokens).clamp(min=1)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())
        pending = self.__dict__.setdefault("_pending_metrics", [])
        pending.append((torch.stack([outputs.label_mask.sum().float(), outputs.entropy.detach().sum().float(),
                                     outputs.is_top1.sum().float()]),
                        inputs["attention_mask"].sum() if "attention_mask" in inputs else inputs["position_ids"].size(1)))
        return loss

    def evaluation_loop(self, *args, **kwargs):
        """The Trainer's loop, with `eval_loss` the mean over every loss token of the set (the Trainer's own is a
        mean of per-batch means, which weighs a token of a short batch more): the same quantity that
        `qrtrain evaluate` reports as `loss` on the same rows (tests/evaluation/test_evaluate.py)."""
        self._eval_sums = []
        output = super().evaluation_loop(*args, **kwargs)
        if self._eval_sums:
            nll, tokens = self.accelerator.gather(torch.stack(self._eval_sums).sum(0)[None]).sum(0).tolist()
            prefix = kwargs.get("metric_key_prefix", args[4] if len(args) > 4 else "eval")
            if tokens > 0 and f"{prefix}_loss" in output.metrics:
                output.metrics[f"{prefix}_loss"] = nll / tokens
        self._eval_sums = []
        return output

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        pending = self.__dict__.get("_pending_metrics")
        if self.model.training and pending:
            # gather, not gather_for_metrics: these are per-step sums of each process, not dataset samples, and
            # gather_for_metrics cuts its input to the dataset's remainder on the last batch of an epoch
            gathered = self.accelerator.gather(torch.stack([step for step, _ in pending]))
            tokens = self.accelerator.gather(
                torch.stack([torch.as_tensor(n, device=gathered.device) for _, n in pending]))
            per_step = gathered.view(-1, len(pending), 3).sum(0).tolist()  # one host sync per log
            for (valid, entropy, correct), step_tokens in zip(per_step, tokens.view(-1, len(pending)).sum(0).tolist()):
                self._metrics["train"]["entropy"].append(entropy / valid if valid > 0 else 0.0)
                self._metrics["train"]["mean_token_accuracy"].append(correct / valid if valid > 0 else 0.0)
                self._total_train_tokens += int(step_tokens) // self._tp_size
            self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
            pending.clear()
        super().log(logs, start_time)


def callbacks_for(cfg, run_dir: Path, checkpoint_dir: Path | None, result_config: dict | None, stop,
                  extensions: dict) -> list:
    """Progress, extensions, metrics.jsonl, TensorBoard (tracking=[tensorboard]), atomic checkpoints and the signal
    handler: every method's. The other trackers are the Trainer's own (report_to: qrtrain/training/tracking.py)."""
    from qrtrain.training.checkpoints import AtomicCheckpoints
    from qrtrain.training.progress import MetricsFile, ProgressEvents, RichProgress, tensorboard_callback

    # extensions first: what they add to the logs reaches metrics.jsonl and the trackers
    callbacks = [RichProgress(), ProgressEvents(), *extensions.values(), MetricsFile(run_dir / "metrics.jsonl")]
    if "tensorboard" in (cfg.get("tracking") or {}):
        callbacks.append(tensorboard_callback(run_dir / cfg.tracking.tensorboard.folder))
    if checkpoint_dir is not None and cfg.checkpoint.every_steps > 0:
        callbacks.append(AtomicCheckpoints(checkpoint_dir, result_config, cfg.checkpoint.keep_last,
                                           cfg.checkpoint.best_metric, cfg.checkpoint.greater_is_better, extensions))
    if stop is not None:
        callbacks.append(stop)
    return callbacks


def common_args(cfg, train_set, eval_set, run_dir: Path, device: str, dtype, checkpoint_dir: Path | None) -> dict:
    """The TrainingArguments every method's TRL config takes from `training`, `checkpoint` and `tracking` alike."""
    from qrtrain.training.checkpoints import PARTIAL
    from qrtrain.training.datasets import data_processes
    from qrtrain.training.tracking import report_to, run_name

    t = cfg.training
    evaluate_every = eval_set is not None and t.eval_steps > 0
    saving = checkpoint_dir is not None and cfg.checkpoint.every_steps > 0
    return dict(
        output_dir=str(checkpoint_dir / PARTIAL) if saving else str(run_dir / "checkpoints"),
        max_steps=t.max_steps,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        weight_decay=t.weight_decay,
        optim=t.optim,  # the optimizer itself is strategy.build_optimizer's, from these arguments
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio,
        gradient_checkpointing=False,  # qrtrain.training.memory decides and applies it, layer by layer
        logging_nan_inf_filter=False,  # its isnan check reads the loss on the host every step
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        use_cpu=device == "cpu",
        seed=cfg.seed,
        logging_steps=t.logging_steps,
        eval_strategy="steps" if evaluate_every else "no",
        eval_steps=t.eval_steps if evaluate_every else None,
        save_strategy="steps" if saving else "no",
        save_steps=cfg.checkpoint.every_steps if saving else None,
        report_to=report_to(cfg) or "none",
        run_name=run_name(cfg, run_dir),
        disable_tqdm=True,
        dataset_num_proc=data_processes(len(train_set)),
        **({"project": cfg.tracking.trackio.project} if "trackio" in (cfg.get("tracking") or {}) else {}),
    )


def build_trainer(cfg, model, tokenizer, train_set, eval_set, run_dir: Path, device: str, dtype,
                  checkpoint_dir: Path | None = None, result_config: dict | None = None, stop=None,
                  extensions: dict | None = None, padding_free: bool = False, prepared: bool = False):
    """The SFT trainer (method=sft); qrtrain/training/preference.py builds the preference methods' trainers."""
    from transformers import PrinterCallback
    from trl import SFTConfig
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from qrtrain.training.strategy import build_optimizer

    t = cfg.training
    args = SFTConfig(
        **common_args(cfg, train_set, eval_set, run_dir, device, dtype, checkpoint_dir),
        packing=t.packing,
        use_liger_kernel=use_liger_kernel(t.liger_kernel, device),
        # A prepared set (the data cache) carries its labels, assistant-only already; TRL's check that the data is
        # conversational would look at the prepared (packed: input_ids only) rows and refuse them.
        assistant_only_loss=cfg.model_type.name in ("dialogue", "multimodal") and not prepared,
        max_length=None if cfg.model_type.name == "multimodal" else t.max_length,  # image tokens must not be cut
        dataset_kwargs={"skip_prepare_dataset": True} if prepared else None,  # from qrtrain's data cache
    )
    collator = None
    if padding_free:
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        collator = DataCollatorForLanguageModeling(pad_token_id=pad, padding_free=True)
    trainer = SFTTrainerWithoutStepSyncs(
        model=model,
        args=args,
        data_collator=collator,
        train_dataset=train_set,
        eval_dataset=eval_set,
        processing_class=tokenizer,
        optimizers=(build_optimizer(model, cfg, args), None),
        callbacks=callbacks_for(cfg, run_dir, checkpoint_dir, result_config, stop, extensions or {}),
    )
    trainer.remove_callback(PrinterCallback)
    return trainer


def use_liger_kernel(setting, device: str) -> bool:
    """Liger's RMSNorm/RoPE/SwiGLU kernels: on CUDA when liger-kernel is installed (auto), or as set."""
    import importlib.util

    from qrtrain.errors import QrtrainError

    installed = importlib.util.find_spec("liger_kernel") is not None
    if setting is True and not (installed and device == "cuda"):
        raise QrtrainError("training.liger_kernel=true needs a CUDA device and `pip install liger-kernel`; "
                           "use training.liger_kernel=auto to use it only where it can run")
    return bool(setting) and installed and device == "cuda"
