"""Checkpoints that are complete or absent, rotation, and finding the one to resume from.

    qrtrain train checkpoint.every_steps=10 checkpoint.keep_last=2      # resume=auto by default
    qrtrain train resume=never                                          # start over
    qrtrain train resume=outputs/.checkpoints/NAME-1a2b3c4d5e6f/checkpoint-20

The Trainer writes each checkpoint into `.partial/`; once it is whole, it is flushed,
renamed into the checkpoints folder and given a `.complete` marker last. Only marked
checkpoints are ever resumed from. The folder is keyed by a digest of everything that
changes the result (config and data), so `resume=auto` only continues the same training.
"""

import fcntl
import hashlib
import json
import os
import shutil
import signal
from pathlib import Path

from transformers import TrainerCallback

from qrtrain.errors import QrtrainError
from qrtrain.files import fsync_dir, fsync_tree
from qrtrain.training.extensions import save_states

COMPLETE = ".complete"
PARTIAL = ".partial"
RUN_CONFIG = "run_config.json"
# Keys that do not change the trained weights: where things go, how often to log, evaluate or save.
NEUTRAL_KEYS = ("artifact", "checkpoint", "resume", "data.eval", "training.logging_steps", "training.eval_steps",
                "training.threads")


def result_config(cfg, data_sources: list[dict]) -> dict:
    """The config that determines the result, flattened to dotted keys, plus the training data's hashes."""
    from omegaconf import OmegaConf

    flat = {}

    def walk(prefix: str, node) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(f"{prefix}{key}.", value)
        else:
            flat[prefix[:-1]] = node

    walk("", OmegaConf.to_container(cfg, resolve=True))
    flat = {k: v for k, v in flat.items() if not any(k == n or k.startswith(n + ".") for n in NEUTRAL_KEYS)}
    for source in data_sources:
        if source["role"] == "train":
            flat[f"data.sha256:{source['path']}"] = source["sha256"]
    return flat


def checkpoints_folder(cfg, config: dict) -> Path:
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return Path(cfg.artifact.root) / ".checkpoints" / f"{cfg.artifact.name}-{digest}"


def claim_folder(folder: Path):
    """(folder, lock) for this run's checkpoints. The first run of a training locks its folder for as long
    as it lives; a second run of the same training started meanwhile checkpoints into its own `-<pid>` folder.
    In a multi-process run, processes other than rank 0 share rank 0's folder without locking."""
    if int(os.environ.get("RANK", "0")) != 0:
        return folder, None
    for candidate in (folder, folder.with_name(f"{folder.name}-{os.getpid()}")):
        candidate.mkdir(parents=True, exist_ok=True)
        lock = open(candidate / ".lock", "w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return candidate, lock
        except BlockingIOError:
            lock.close()
    raise QrtrainError(f"could not lock a checkpoint folder beside {folder}")


def remove_abandoned(root: Path, name: str) -> None:
    """Once a version of NAME is published, the checkpoints of NAME's other trainings that no live run holds
    (interrupted, then run with another config) are deleted; `qrtrain list --checkpoints` shows the rest."""
    from qrtrain.artifacts.listing import checkpoint_folders, remove_checkpoints

    remove_checkpoints([r for r in checkpoint_folders(root) if r["artifact"] == name])


def complete_checkpoints(folder: Path) -> list[Path]:
    """Marked checkpoints, oldest first."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.glob("checkpoint-*") if (p / COMPLETE).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def choose_resume(cfg, folder: Path, config: dict) -> Path | None:
    """The checkpoint to resume from, per `resume` (auto | never | PATH); checked before use.

    auto skips a damaged checkpoint (saying so) for the one before it; a named one must be whole."""
    from qrtrain.terminal import say

    resume = str(cfg.resume)
    if resume == "never":
        for old in list(folder.glob("checkpoint-*")) + [folder / PARTIAL]:
            shutil.rmtree(old, ignore_errors=True)
        return None
    if resume != "auto":
        checkpoint = Path(resume)
        if not (checkpoint / COMPLETE).is_file():
            raise QrtrainError(f"resume={resume}: not a complete qrtrain checkpoint (no {COMPLETE} marker); "
                               "give a checkpoint-N folder, or resume=auto / resume=never")
        damage = checkpoint_damage(checkpoint, config)
        if damage:
            raise QrtrainError(f"checkpoint {checkpoint} is damaged: {damage}; delete it or start over with resume=never")
        check_same_config(checkpoint, config)
        return checkpoint
    for checkpoint in reversed(complete_checkpoints(folder)):
        damage = checkpoint_damage(checkpoint, config)
        if damage is None:
            check_same_config(checkpoint, config)
            return checkpoint
        say(f"skipping checkpoint {checkpoint}: {damage}")
        discard_checkpoints([checkpoint])
    return None


def checkpoint_damage(checkpoint: Path, config: dict) -> str | None:
    """What is wrong with a checkpoint's files, or None: missing or unreadable files, a state that claims
    more steps than the run has, an adapter or optimizer file that does not parse."""
    import zipfile

    from qrtrain.artifacts.verify import check_safetensors, folder_contents

    for name in ("trainer_state.json", "adapter_model.safetensors", "optimizer.pt", "scheduler.pt", RUN_CONFIG):
        if not (checkpoint / name).is_file():
            return f"{name} is missing"
    try:
        state = json.loads((checkpoint / "trainer_state.json").read_text())
        saved = json.loads((checkpoint / RUN_CONFIG).read_text())
        assert isinstance(state, dict) and isinstance(saved, dict) and type(state.get("global_step")) is int
    except (ValueError, AssertionError, UnicodeDecodeError, RecursionError):
        return f"trainer_state.json or {RUN_CONFIG} is not valid"
    max_steps = config.get("training.max_steps")
    if isinstance(max_steps, int) and not 0 < state["global_step"] <= max_steps:
        return (f"trainer_state.json claims step {state['global_step']}, outside this run's "
                f"1..{max_steps} (training.max_steps)")
    if checkpoint.name != f"checkpoint-{state['global_step']}":
        return f"trainer_state.json claims step {state['global_step']}, but the folder is {checkpoint.name}"
    problems = []
    check_safetensors(folder_contents(checkpoint), "adapter_model.safetensors",
                      lambda file, check, message: problems.append(message))
    if problems:
        return f"adapter_model.safetensors: {problems[0]}"
    for name in ("optimizer.pt", "scheduler.pt"):  # torch's files are zip archives: check every member's CRC
        try:
            with zipfile.ZipFile(checkpoint / name) as archive:
                if archive.testzip() is not None:
                    return f"{name} is corrupt"
        except (zipfile.BadZipFile, OSError, EOFError):
            return f"{name} is truncated or not a torch file"
    return None


def check_same_config(checkpoint: Path, config: dict) -> None:
    """Refuse a checkpoint whose result-changing config differs, naming the keys."""
    saved = json.loads((checkpoint / RUN_CONFIG).read_text())
    differing = sorted(k for k in set(saved) | set(config) if saved.get(k) != config.get(k))
    if differing:
        details = ", ".join(f"{k} ({saved.get(k)!r} -> {config.get(k)!r})" for k in differing[:8])
        raise QrtrainError(f"checkpoint {checkpoint} was made with a different config: {details}; "
                           "resuming would not give the same result: use the same settings, or resume=never")


def discard_checkpoints(checkpoints: list[Path]) -> None:
    """Unmark first (flushed), then delete: a kill half-way leaves unmarked leftovers, never a marked half."""
    for checkpoint in checkpoints:
        (checkpoint / COMPLETE).unlink(missing_ok=True)
    for folder in {c.parent for c in checkpoints}:
        fsync_dir(folder)
    for checkpoint in checkpoints:
        shutil.rmtree(checkpoint, ignore_errors=True)


class AtomicCheckpoints(TrainerCallback):
    """Move each checkpoint the Trainer finished writing into place, mark it complete, rotate."""

    def __init__(self, folder: Path, config: dict, keep_last: int, best_metric: str | None, greater_is_better: bool,
                 extensions: dict | None = None):
        self.folder, self.config, self.extensions = Path(folder), config, extensions or {}
        self.keep_last, self.best_metric, self.greater_is_better = keep_last, best_metric, greater_is_better
        self.scores: dict[int, float] = {}
        self.latest_metric = None

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if metrics and self.best_metric in metrics:
            self.latest_metric = metrics[self.best_metric]

    def on_save(self, args, state, control, **kwargs):
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()  # every process has written its part (RNG states) before the main one moves it
        if not state.is_world_process_zero:
            return
        written = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        final = self.folder / written.name
        (written / RUN_CONFIG).write_text(json.dumps(self.config, sort_keys=True, default=str))
        save_states(self.extensions, written)
        fsync_tree(written)
        if final.exists():
            shutil.rmtree(final)
        os.rename(written, final)
        marker = final / COMPLETE
        with open(marker, "w") as f:
            f.write(json.dumps({"step": state.global_step, self.best_metric or "metric": self.latest_metric}) + "\n")
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(self.folder)
        if self.latest_metric is not None:
            self.scores[state.global_step] = self.latest_metric
        self.rotate()

    def rotate(self) -> None:
        """Keep the last `keep_last` complete checkpoints and the best by the metric."""
        found = complete_checkpoints(self.folder)
        keep = set(found[-self.keep_last:]) if self.keep_last > 0 else set(found)
        scored = [(v, s) for s, v in self.scores.items()]
        if self.best_metric and scored:
            best_step = (max(scored) if self.greater_is_better else min(scored))[1]
            keep |= {p for p in found if p.name == f"checkpoint-{best_step}"}
        for path in found:
            if path not in keep:
                (path / COMPLETE).unlink()  # unmarked first: never seen half-deleted
                shutil.rmtree(path)


class StopOnSignal(TrainerCallback):
    """SIGINT/SIGTERM: finish the step, save a checkpoint, stop. A second signal exits at once, except while
    publishing: then every signal waits until the version is complete."""

    EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}

    deferred = None  # the StopOnSignal still installed after its run published (signals wait for the exit)

    def __init__(self):
        self.received = None
        self.previous = {}
        self.publishing = False  # while publishing, signals are only noted: the version is completed first

    def install(self) -> None:
        StopOnSignal.deferred = self
        for sig in self.EXIT_CODES:
            self.previous[sig] = signal.signal(sig, self.handle)

    def uninstall(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def handle(self, signum, frame) -> None:
        if self.received is not None and not self.publishing:
            os._exit(self.EXIT_CODES[signum])
        self.received = self.received or signum

    def on_step_end(self, args, state, control, **kwargs):
        if self.received is not None:
            control.should_save = args.save_strategy != "no"
            control.should_training_stop = True

    @property
    def exit_code(self) -> int | None:
        return self.EXIT_CODES.get(self.received)


def forget_deferred_signal() -> None:
    """A new command in this process (the CLI runs one; tests run many) starts with the handlers it found."""
    if StopOnSignal.deferred is not None:
        StopOnSignal.deferred.uninstall()
        StopOnSignal.deferred = None


def refuse_deferred_signal() -> None:
    """In a sweep, a signal that arrived after an earlier job published stops the sweep here, before this job
    trains (exit 130/143, nothing of this job published)."""
    earlier = StopOnSignal.deferred
    if earlier is not None and earlier.publishing and earlier.exit_code is not None:
        code = earlier.exit_code
        earlier.uninstall()
        StopOnSignal.deferred = None
        raise QrtrainError(f"interrupted ({signal_name(earlier.received)}) after the previous job published; "
                           "this job did not start", exit_code=code)


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name
