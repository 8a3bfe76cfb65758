"""Preference tuning's own phases: the token report of pairs and the TRL trainer of each method.

    qrtrain train method=dpo init_adapter=smollm2-135m-instruct-dialogue/v1   # the demo: SFT, then DPO
    qrtrain train method=kto data.train=feedback.jsonl
    qrtrain train -m method=dpo method.beta=0.05,0.1,0.3

Every other phase (the base, the plan, LoRA, checkpoints, signals, publishing) is SFT's
(qrtrain/training/train.py). The trainers are TRL's: DPOTrainer and KTOTrainer, and from trl.experimental
ORPOTrainer and CPOTrainer (SimPO is CPO's `loss_type=simpo`). With LoRA the reference model of DPO and KTO
is the base with the adapter switched off; from `init_adapter`, TRL copies that version's adapter into a
frozen `ref` adapter and uses it as the reference: one base in memory either way.
"""

from pathlib import Path

from qrtrain.errors import QrtrainError
from qrtrain.training.trainer import PlannedCheckpointing, callbacks_for, common_args


def side_lengths(rows: dict, tokenizer, sides: tuple[str, ...]) -> dict:
    """{prompt, <side>...} token counts per row of a chunk, tokenized as TRL tokenizes them (the chat template
    for conversations, with the generation prompt for the prompt alone)."""
    conversational = isinstance(rows["prompt"][0], list)
    out = {}
    if conversational:
        def template(conversations, **kwargs) -> list[int]:
            encoded = tokenizer.apply_chat_template(conversations, tokenize=True, return_dict=True, **kwargs)
            return [len(ids) for ids in encoded["input_ids"]]

        out["prompt"] = template(rows["prompt"], add_generation_prompt=True)
        for side in sides:
            out[side] = template([p + a for p, a in zip(rows["prompt"], rows[side])])
    else:
        out["prompt"] = [len(ids) for ids in tokenizer(rows["prompt"])["input_ids"]]
        for side in sides:
            out[side] = [len(ids) + 1 for ids in tokenizer([p + a for p, a in zip(rows["prompt"], rows[side])])
                         ["input_ids"]]  # + the EOS TRL appends
    return out


def preference_token_report(dataset, tokenizer, max_length: int, chunk: int = 1000) -> dict:
    """Rows cut by max_length, counted per side, and rows whose prompt alone fills it (TRL drops them). The
    lengths are each row's longer side: a micro-batch holds both sides, padded to the longest."""
    sides = ("chosen", "rejected") if "chosen" in dataset.column_names else ("completion",)
    counts = {"prompt": [], **{side: [] for side in sides}}
    for start in range(0, len(dataset), chunk):
        for key, values in side_lengths(dataset[start:start + chunk], tokenizer, sides).items():
            counts[key] += values
    report = {"examples": len(dataset),
              "truncated": sum(any(counts[side][i] > max_length for side in sides) for i in range(len(dataset))),
              "all_loss_tokens_cut": sum(n >= max_length for n in counts["prompt"]),
              "lengths": [max(counts[side][i] for side in sides) for i in range(len(dataset))]}
    report.update({f"{side}_truncated": sum(n > max_length for n in counts[side]) for side in sides})
    if report["all_loss_tokens_cut"] == report["examples"]:
        raise QrtrainError(f"all {report['examples']} preference rows have a prompt of training.max_length="
                           f"{max_length} tokens or more, so no answer token is left; raise training.max_length")
    return report


def report_line(report: dict, max_length: int) -> str:
    sides = [key.removesuffix("_truncated") for key in report if key.endswith("_truncated")]
    cut = ", ".join(f"{report[side + '_truncated']} {side}" for side in sides)
    return (f"{report['examples']} preference rows ({cut} answers truncated to {max_length} tokens, "
            f"{report['all_loss_tokens_cut']} dropped: the prompt fills max_length)")


class PreparedOnce:
    """DPO's and KTO's `_prepare_dataset`, skipped for a set that TRL prepared before (from qrtrain's data
    cache: it has TRL's `prompt_ids` column); every other set goes through TRL's preparation unchanged."""

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        if "prompt_ids" in getattr(dataset, "column_names", ()):
            return dataset
        return super()._prepare_dataset(dataset, processing_class, args, dataset_name)


def trainer_class(method: str):
    """The TRL trainer and config classes of a method, with qrtrain's planned checkpointing."""
    import os

    if method == "dpo":
        from trl import DPOConfig, DPOTrainer
        return type("QrtrainDPOTrainer", (PlannedCheckpointing, PreparedOnce, DPOTrainer), {}), DPOConfig
    if method == "kto":
        from trl import KTOConfig, KTOTrainer
        return type("QrtrainKTOTrainer", (PlannedCheckpointing, PreparedOnce, KTOTrainer), {}), KTOConfig
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # chosen: ORPO and CPO live in trl.experimental in TRL 1.16
    if method == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer
        return type("QrtrainORPOTrainer", (PlannedCheckpointing, ORPOTrainer), {}), ORPOConfig
    from trl.experimental.cpo import CPOConfig, CPOTrainer
    return type("QrtrainCPOTrainer", (PlannedCheckpointing, CPOTrainer), {}), CPOConfig


def method_args(cfg) -> dict:
    """The method's own TRL settings (conf/method/<name>.yaml)."""
    from omegaconf import OmegaConf

    m = cfg.method
    if m.name == "dpo":
        losses = [m.loss_type] if isinstance(m.loss_type, str) else list(OmegaConf.to_container(m.loss_type))
        return dict(beta=m.beta, loss_type=losses, label_smoothing=m.label_smoothing,
                    loss_weights=None if m.loss_weights is None else list(OmegaConf.to_container(m.loss_weights)))
    if m.name == "kto":
        return dict(beta=m.beta, loss_type=m.loss_type, desirable_weight=m.desirable_weight,
                    undesirable_weight=m.undesirable_weight)
    if m.name == "orpo":
        return dict(beta=m.beta)
    return dict(beta=m.beta, loss_type="simpo", simpo_gamma=m.gamma, cpo_alpha=m.cpo_alpha,
                label_smoothing=m.label_smoothing)


def build_preference_trainer(cfg, model, tokenizer, train_set, eval_set, run_dir: Path, device: str, dtype,
                             checkpoint_dir: Path | None = None, result_config: dict | None = None, stop=None,
                             extensions: dict | None = None, continuing: bool = False):
    """TRL's trainer for cfg.method, on the LoRA model (a PeftModel: TRL takes no second copy of the base);
    `continuing`: the adapter is a parent version's (init_adapter), whose frozen copy is the reference."""
    from transformers import PrinterCallback

    from qrtrain.training.strategy import build_optimizer

    trainer_type, config_type = trainer_class(cfg.method.name)
    args = config_type(**common_args(cfg, train_set, eval_set, run_dir, device, dtype, checkpoint_dir),
                       max_length=cfg.training.max_length, **method_args(cfg))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    trainer = trainer_type(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=eval_set,
        processing_class=tokenizer,
        optimizers=(build_optimizer(model, cfg, args), None),
        callbacks=callbacks_for(cfg, run_dir, checkpoint_dir, result_config, stop, extensions or {}),
    )
    trainer.remove_callback(PrinterCallback)
    if not continuing and "ref" in getattr(model, "peft_config", {}):
        # TRL copies any adapter it is given into a frozen `ref`. A new adapter's copy is the base itself (LoRA's B
        # starts at zero), so it is dropped: TRL then takes the reference with the adapter switched off, as for the
        # PeftModel it builds itself, without the copy's LoRA matmuls in every reference forward (same loss: tested)
        model.delete_adapter("ref")
        model.set_adapter("default")
    return trainer
