"""The training recipe: a short story over named phases that hand each other small typed objects.

    qrtrain train model=tiny training.max_steps=5
    qrtrain train model=tiny method=dpo init_adapter=tiny-dialogue/v1 training.max_steps=5

    start_run -> load_base (Base) -> prepare_data (PreparedData) -> plan_run (RunPlan)
    -> load_for_training (LoadedModel) -> tracked (TrackerRuns) -> build_run (the trainer) -> fit
    -> check the base -> publish_run -> TrainResult

Fine-tuning is TRL's SFTTrainer with PEFT LoRA (QLoRA through bitsandbytes); a preference method (DPO, KTO,
ORPO, SimPO: conf/method/) is the sibling story, sharing every phase but the data's preparation and the
trainer (qrtrain/training/preference.py). `qrtrain.training.run`
hands the command line to Hydra, which calls `train` once per job and turns its TrainResult, or the
QrtrainError it raises, into the message, the event and the exit code (the one failure path).
"""

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from qrtrain.artifacts.versions import check_writable
from qrtrain.errors import QrtrainError
from qrtrain.events import emit, write_events_to
from qrtrain.terminal import quiet_libraries, say
from qrtrain.training.tracking import TrackerRuns, tracked


@dataclass
class Base:
    """The base model as loaded: its folder (named from what it holds), its tokenizer or processor, and the
    verified version this run continues (init_adapter), if any."""
    folder: Path
    tokenizer: object
    parent: object | None = None  # qrtrain.artifacts.lineage.Parent


@dataclass
class PreparedData:
    """Checked, tokenized training and evaluation sets, and what they came from."""
    train_set: object
    eval_set: object | None
    sources: list[dict]  # every source with its role, rows and sha256
    report: dict | None  # token lengths and truncation (None for multimodal: counted on the fly)
    held_out: object | None  # the split held out of data.train, published as eval_split.jsonl
    key: str  # the data cache's key
    from_cache: bool


@dataclass
class RunPlan:
    """Where and how this run trains, decided before the model is loaded."""
    device: str
    dtype: object
    threads: int
    padding_free: bool
    attention: str
    memory: object  # qrtrain.training.memory.MemoryPlan
    fallback: bool  # a batch above the plan checkpoints every layer for its step
    result_config: dict
    checkpoint_dir: Path
    checkpoint_lock: object
    resume_from: Path | None


@dataclass
class LoadedModel:
    """The base with LoRA, checkpointing applied, and the digest its frozen weights must keep."""
    model: object
    base_digest: str
    unplanned_layers: list
    initial_adapter: Path | None = None  # lora.init=pissa|olora: the adapter as initialised, to convert at publishing


@dataclass
class TrainResult:
    """What a run ended with: a published version (exit 0), or an interruption (130/143) that says how to resume."""
    exit_code: int = 0
    message: str | None = None
    version: Path | None = None
    metrics: dict = field(default_factory=dict)

    @property
    def objective(self) -> float:
        """The sweep objective: the final evaluation loss, else the training loss."""
        return float(self.metrics.get("eval_loss", self.metrics.get("train_loss", float("nan"))))


def train(cfg, run_dir: Path) -> TrainResult:
    """Train and publish one version."""
    start_run(cfg, run_dir)
    base = load_base(cfg)
    data = prepare_data(cfg, base) if cfg.method.name == "sft" else prepare_preference_data(cfg, base)
    plan = plan_run(cfg, base, data)
    loaded = load_for_training(cfg, base, plan, data)
    with tracked(cfg, run_dir) as trackers:  # MLflow, W&B, Trackio runs: ended tagged with trackers.version
        trainer, stop = build_run(cfg, base, data, plan, loaded, run_dir)
        stop.install()  # until the version is published: see checkpoints.StopOnSignal
        try:
            result = fit(cfg, trainer, stop, plan, data)
            if result.exit_code:
                return result
            check_base_untouched(loaded)
            if not trainer.is_world_process_zero():  # multi-process training: the main process publishes, once
                return result
            if stop.exit_code is not None:
                return interrupted(stop, "after training, before publishing; nothing was published")
            stop.publishing = True
            result.version = trackers.version = publish_run(cfg, trainer, base, data, plan, loaded, result.metrics,
                                                            trackers)
        finally:
            if not stop.publishing:
                stop.uninstall()
            # once publishing began, signals stay deferred until the process exits: a published run exits 0
    finish(plan, stop, result)
    return result


def start_run(cfg, run_dir: Path) -> None:
    """Events go to the run folder; the config is checked and the artifact root writable before anything loads."""
    from qrtrain.config import check_config
    from qrtrain.models.loading import resolve_device
    from qrtrain.training.memory import prefer_huge_pages
    from qrtrain.training.strategy import check_optimizer_device

    if cfg.method.name == "sft":  # before the first tensor; preference tuning: 25% slower steps with it (memory.py)
        prefer_huge_pages()
    write_events_to(run_dir / "events.jsonl")
    emit("validating_data")
    check_config(cfg)
    check_optimizer_device(cfg.training.optim, resolve_device(cfg.training.device))
    check_writable(Path(cfg.artifact.root))
    signing = sign_with(cfg)
    if signing is not None:  # the key loads, before training rather than after
        from qrtrain.artifacts.signing import check_sign_with

        check_sign_with(signing, "artifact.sign_key")
    quiet_libraries()


def load_base(cfg) -> Base:
    """The base model's folder, named from what it holds (model.path), the artifact named for the data, and the
    init_adapter version verified and checked to be of this base."""
    from qrtrain.artifacts.lineage import check_same_base, resolve_parent
    from qrtrain.config import name_for_data
    from qrtrain.models.loading import load_tokenizer, model_folder, name_the_base

    parent = resolve_parent(cfg.init_adapter, Path(cfg.artifact.root)) if cfg.init_adapter else None
    folder = model_folder(cfg.model)
    name_the_base(cfg.model, folder)  # model.path: named from what was loaded (and artifact.name with it)
    name_for_data(cfg)  # user data: its own artifact, not the next version of the demo's
    if parent is not None:
        check_same_base(parent, folder, cfg.model_type.name)
        say(f"starting from {parent.label()} (root digest {parent.root_digest[:16]}...)"
            + ("; the reference model is its adapter (TRL's frozen copy, `ref`)" if cfg.method.name in ("dpo", "kto")
               else ""))
    return Base(folder, load_tokenizer(folder, cfg.model_type.name), parent)  # the processor for multimodal


def prepare_data(cfg, base: Base) -> PreparedData:
    """Read and check the data and tokenize it (TRL's preparation), or take it prepared from the data cache."""
    from qrtrain.training import data_cache
    from qrtrain.training.datasets import check_token_lengths, hash_sources, load_datasets

    key = data_cache.cache_key(cfg, base.tokenizer)
    cached = data_cache.load(key)  # the same data, tokenizer and settings prepared before: no re-reading
    if cached is None:
        train_set, eval_set, sources = load_datasets(cfg)
        report = None if cfg.model_type.name == "multimodal" else check_token_lengths(train_set, base.tokenizer,
                                                                                      cfg.training.max_length)
        data = PreparedData(train_set, eval_set, hash_sources(sources), report, eval_set, key, from_cache=False)
    else:
        train_set, eval_set, sources, report, held_out = cached
        data = PreparedData(train_set, eval_set, sources, report, held_out, key, from_cache=True)
    evaluated = len(data.eval_set) if data.eval_set is not None else 0
    if data.report is None:  # multimodal: image tokens are counted by the processor, on the fly
        say(f"data: {len(data.train_set)} training examples with images, {evaluated} evaluation examples")
    else:
        r = data.report
        say(f"data: {r['examples']} training examples ({r['truncated']} truncated to {cfg.training.max_length} "
            f"tokens, {r['all_loss_tokens_cut']} dropped: no loss token left), {evaluated} evaluation examples"
            + (" (prepared before: from the data cache)" if data.from_cache else ""))
    return data


def prepare_preference_data(cfg, base: Base) -> PreparedData:
    """Preference rows read and checked (qrtrain/data/preference.py), counted per side; or from the data cache
    (DPO, KTO: TRL's tokenized sets)."""
    from qrtrain.training import data_cache
    from qrtrain.training.datasets import hash_sources, load_datasets
    from qrtrain.training.preference import preference_token_report, report_line

    key = data_cache.cache_key(cfg, base.tokenizer)
    cached = data_cache.load(key)
    if cached is None:
        train_set, eval_set, sources = load_datasets(cfg)
        report = preference_token_report(train_set, base.tokenizer, cfg.training.max_length)
        data = PreparedData(train_set, eval_set, hash_sources(sources), report, eval_set, key, from_cache=False)
    else:
        train_set, eval_set, sources, report, held_out = cached
        data = PreparedData(train_set, eval_set, sources, report, held_out, key, from_cache=True)
    evaluated = len(data.eval_set) if data.eval_set is not None else 0
    say(f"data: {report_line(data.report, cfg.training.max_length)}, {evaluated} evaluation rows, "
        f"method={cfg.method.name}" + (" (prepared before: from the data cache)" if data.from_cache else ""))
    return data


def plan_run(cfg, base: Base, data: PreparedData) -> RunPlan:
    """Checkpoints to resume from, device, dtype, threads, attention and the memory plan."""
    from qrtrain.models.loading import compute_dtype, resolve_device
    from qrtrain.models.threads import set_cpu_threads
    from qrtrain.training import checkpoints
    from qrtrain.training.attention import choose_attention
    from qrtrain.training.memory import plan_for_run, release_freed_memory

    result_config = checkpoints.result_config(cfg, data.sources)
    checkpoint_dir, checkpoint_lock = checkpoints.claim_folder(checkpoints.checkpoints_folder(cfg, result_config))
    resume_from = checkpoints.choose_resume(cfg, checkpoint_dir, result_config)
    device = resolve_device(cfg.training.device)
    threads = set_cpu_threads(cfg.training.threads, "training.threads")
    dtype = compute_dtype(cfg.training.dtype, device)
    padding_free, attention = choose_attention(cfg.training.padding_free, cfg.model_type.name, device, dtype)
    padding_free = padding_free and cfg.method.name == "sft"  # TRL's preference trainers pad (DPO: "temporarily")
    memory = plan_for_run(cfg, base.folder, data.report and data.report["lengths"], device, dtype, padding_free)
    if device == "cuda" or memory.checkpointed_layers:
        say(memory.line())
    if memory.warning:
        say(memory.warning)
    # a batch larger than the plan's (rare: the plan is the 99th percentile) checkpoints every layer for its step
    fallback = (device == "cuda" and cfg.training.gradient_checkpointing == "auto"
                and (memory.largest_tokens or 0) > memory.tokens and memory.checkpointed_layers < memory.num_layers)
    release_freed_memory(cfg.training.release_freed_memory, device, memory.parts["activations"])
    return RunPlan(device, dtype, threads, padding_free, attention, memory, fallback, result_config,
                   checkpoint_dir, checkpoint_lock, resume_from)


def load_for_training(cfg, base: Base, plan: RunPlan, data: PreparedData) -> LoadedModel:
    """The base on its device, LoRA added (its initial weights drawn from the seed, or from the data with
    lora.init=eva), checkpointing applied."""
    from transformers import set_seed

    from qrtrain.models.loading import load_model
    from qrtrain.training.lora import (
        add_lora,
        check_only_lora_trainable,
        continue_lora,
        frozen_digest,
        eva_batches,
        keep_lora_inputs_in_compute_dtype,
        lora_init,
        save_initial_adapter,
    )
    from qrtrain.training.memory import apply_checkpointing

    set_seed(cfg.seed)  # LoRA's initial weights are drawn here: same seed, same adapter
    emit("loading_model", model=base.folder.name, device=plan.device)
    model = load_model(base.folder, cfg, plan.device, plan.dtype, plan.attention)
    initial = None
    if base.parent is None:
        tokenizer = getattr(base.tokenizer, "tokenizer", base.tokenizer)
        batches = (eva_batches(data.train_set, tokenizer.pad_token_id, cfg.training.batch_size)
                   if lora_init(cfg) == "eva" else None)
        model = add_lora(model, cfg, base.folder, batches)
        initial = save_initial_adapter(model, cfg, plan.checkpoint_dir / "initial-adapter")
    else:
        model = continue_lora(model, base.parent)
    keep_lora_inputs_in_compute_dtype(model, plan.dtype)
    unplanned = apply_checkpointing(model, plan.memory.checkpointed_layers, plan.fallback)
    trainable, total = check_only_lora_trainable(model)
    say(f"model: {base.folder.name} on {plan.device} ({plan.threads} CPU threads, "
        f"{str(plan.dtype).removeprefix('torch.')}), quantization={cfg.quantization.name}, attention={plan.attention}"
        f"{', padding-free batches' if plan.padding_free else ''}, {trainable:,} of {total:,} parameters trainable "
        "(LoRA only)")
    return LoadedModel(model, frozen_digest(model), unplanned, initial)


def build_run(cfg, base: Base, data: PreparedData, plan: RunPlan, loaded: LoadedModel, run_dir: Path):
    """(the trainer, the signal handler): extensions, callbacks, the data cache filled, resume states loaded."""
    from qrtrain.training import checkpoints, data_cache
    from qrtrain.training.extensions import build_extensions, load_states
    from qrtrain.training.preference import build_preference_trainer
    from qrtrain.training.trainer import build_trainer

    extensions = build_extensions(cfg)
    checkpoints.refuse_deferred_signal()  # a sweep's earlier job was signalled after it published
    stop = checkpoints.StopOnSignal()
    shared = dict(checkpoint_dir=plan.checkpoint_dir, result_config=plan.result_config, stop=stop,
                  extensions=extensions)
    if cfg.method.name == "sft":
        trainer = build_trainer(cfg, loaded.model, base.tokenizer, data.train_set, data.eval_set, run_dir,
                                plan.device, plan.dtype, padding_free=plan.padding_free, prepared=data.from_cache,
                                **shared)
    else:
        trainer = build_preference_trainer(cfg, loaded.model, base.tokenizer, data.train_set, data.eval_set,
                                           run_dir, plan.device, plan.dtype, continuing=base.parent is not None,
                                           **shared)
    if plan.fallback:
        trainer.checkpoint_above = (plan.memory.tokens, loaded.unplanned_layers)
    if not data.from_cache:
        data_cache.save(data.key, trainer, data.sources, data.report, data.held_out)
    if plan.resume_from is not None:
        load_states(extensions, plan.resume_from, str(next(loaded.model.parameters()).device))
        say(f"resuming from step {plan.resume_from.name.split('-')[1]} ({plan.resume_from})")
    return trainer, stop


def fit(cfg, trainer, stop, plan: RunPlan, data: PreparedData) -> TrainResult:
    """Train (from the checkpoint chosen, if any), then evaluate: the metrics, or the interruption."""
    import torch

    from qrtrain.training import checkpoints
    from qrtrain.training.memory import out_of_memory_advice

    started = time.time()
    try:
        result = trainer.train(resume_from_checkpoint=str(plan.resume_from) if plan.resume_from else None)
    except torch.OutOfMemoryError:
        saved = checkpoints.complete_checkpoints(plan.checkpoint_dir)
        raise QrtrainError(f"out of memory at step {trainer.state.global_step} ({plan.memory.line()}); "
                           f"{out_of_memory_advice(cfg.training.gradient_checkpointing)}; "
                           + (f"the last checkpoint ({saved[-1]}) resumes with the same command" if saved
                              else "no checkpoint was saved") + "; nothing was published", exit_code=1) from None
    if stop.exit_code is not None:
        saved = checkpoints.complete_checkpoints(plan.checkpoint_dir)
        return interrupted(stop, f"checkpoint saved at step {trainer.state.global_step} ({saved[-1]})" if saved
                           else "no checkpoint saved")
    metrics = {"train_loss": result.training_loss, "train_runtime_s": round(time.time() - started, 3),
               "global_step": trainer.state.global_step,
               "num_tokens": next((h["num_tokens"] for h in reversed(trainer.state.log_history) if "num_tokens" in h),
                                  None)}
    if data.eval_set is not None:
        emit("evaluating", step=trainer.state.global_step)
        metrics.update(trainer.evaluate())
    return TrainResult(metrics=metrics)


def interrupted(stop, where: str) -> TrainResult:
    """The result of a run stopped by SIGINT/SIGTERM: where it stopped and the command that resumes it."""
    import sys

    overrides = [a for a in sys.argv[1:] if a not in ("-m", "--multirun")]
    return TrainResult(stop.exit_code, f"interrupted: {where}; resume with: qrtrain train {' '.join(overrides)}".rstrip())


def check_base_untouched(loaded: LoadedModel) -> None:
    from qrtrain.training.lora import frozen_digest

    if frozen_digest(loaded.model) != loaded.base_digest:
        raise QrtrainError("the base weights changed during training; nothing was published", exit_code=1)


def publish_run(cfg, trainer, base: Base, data: PreparedData, plan: RunPlan, loaded: LoadedModel,
                metrics: dict, trackers: TrackerRuns) -> Path:
    """Publish the version (its metadata naming the trackers' runs), then remove this training's checkpoints and
    those of abandoned runs of the artifact."""
    from qrtrain.training import checkpoints
    from qrtrain.training.tracking import tracker_records

    emit("publishing")
    try:
        version = publish(cfg, trainer, base.tokenizer, metrics, data.sources, base.folder, plan.device,
                          loaded.base_digest, data.held_out, base.parent,
                          tracker_records(trackers, cfg), loaded.initial_adapter)
    except OSError as error:
        raise QrtrainError(f"could not write the artifact under {cfg.artifact.root} ({error.strerror or error}); "
                           "nothing was published and earlier versions are untouched; free space or choose "
                           "another artifact.root, then run the same command to resume", exit_code=1) from None
    # the training is done: its checkpoints served their purpose, and so did those of earlier runs of this
    # artifact that were interrupted and then changed (no live run holds them)
    checkpoints.discard_checkpoints(list(plan.checkpoint_dir.glob("checkpoint-*")))
    shutil.rmtree(plan.checkpoint_dir, ignore_errors=True)
    checkpoints.remove_abandoned(Path(cfg.artifact.root), cfg.artifact.name)
    return version


def finish(plan: RunPlan, stop, result: TrainResult) -> None:
    from qrtrain.training import checkpoints

    if plan.checkpoint_lock is not None:
        plan.checkpoint_lock.close()
    if stop.received is not None:
        say(f"a signal ({checkpoints.signal_name(stop.received)}) arrived while publishing: the version was completed "
            "first, and it is whole")
    m = result.metrics
    emit("done", version=str(result.version), train_loss=m["train_loss"], eval_loss=m.get("eval_loss"),
         global_step=m["global_step"])
    say(f"published {result.version}; check it with: qrtrain verify {result.version}")
    print(result.version)


def publish(cfg, trainer, tokenizer, metrics: dict, data_sources: list[dict], base_folder: Path, device: str,
            base_digest: str, eval_set=None, parent=None, tracking: dict | None = None,
            initial_adapter: Path | None = None) -> Path:
    """Save the adapter, tokenizer, config, metrics, metadata and model card as the next version."""
    from omegaconf import OmegaConf

    from qrtrain.artifacts.provenance import base_model_reference, model_card, version_metadata
    from qrtrain.artifacts.versions import publish_version, staging_folder
    from qrtrain.files import sha256_file, write_json
    from qrtrain.training.extensions import describe as describe_extensions

    with staging_folder(Path(cfg.artifact.root), cfg.artifact.name) as staging:
        for peft_config in trainer.model.peft_config.values():  # a name that resolves on other machines
            peft_config.base_model_name_or_path = base_model_reference(cfg)
        # not the frozen reference, `ref`; PiSSA/OLoRA converted by PEFT to a plain LoRA over the original base
        trainer.model.save_pretrained(staging, selected_adapters=["default"],
                                      path_initial_model_for_weight_conversion=str(initial_adapter)
                                      if initial_adapter else None)
        tokenizer.save_pretrained(staging)
        (staging / "training_config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True), encoding="utf-8")
        write_json(staging / "training_metrics.json",
                   {"final": metrics, "history": [entry for entry in trainer.state.log_history]})
        if any(source["role"] == "eval-split" for source in data_sources):  # the examples held out, as trained
            split = staging / "eval_split.jsonl"
            split.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in eval_set), encoding="utf-8")
            data_sources = [dict(s, sha256=sha256_file(split)) if s["role"] == "eval-split" else s for s in data_sources]
        metadata = version_metadata(cfg, tokenizer, data_sources, base_folder, device, base_digest,
                                    describe_extensions(cfg), parent, tracking)
        (staging / "README.md").write_text(model_card(cfg, metadata, metrics), encoding="utf-8")
        return publish_version(staging, metadata, OmegaConf.to_container(cfg, resolve=True), sign_with(cfg))


def sign_with(cfg):
    """artifact.sign_key (with artifact.sign_certificate and sign_chain): how the version is signed as it is
    published; None: unsigned (`qrtrain sign` signs it later)."""
    from qrtrain.artifacts.signing import SignWith

    if not cfg.artifact.get("sign_key"):
        return None
    return SignWith(Path(cfg.artifact.sign_key), Path(cfg.artifact.sign_certificate) if cfg.artifact.get(
        "sign_certificate") else None, [Path(p) for p in cfg.artifact.get("sign_chain") or []])
