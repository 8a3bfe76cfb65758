"""Training progress for people (a rich progress bar) and for files (metrics.jsonl, events.jsonl, TensorBoard).

    qrtrain train model=tiny training.max_steps=20 training.logging_steps=2
    tensorboard --logdir outputs/.runs
"""

import json
import time
from pathlib import Path

from transformers import TrainerCallback


class RichProgress(TrainerCallback):
    """step/total, loss, learning rate, real tokens per second and ETA, from the trainer's own logs."""

    def __init__(self, console=None):
        self.console = console
        self.progress = None
        self.task = None
        self.last = None  # (time, num_tokens) of the previous log

    def on_train_begin(self, args, state, control, **kwargs):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        if not state.is_world_process_zero:
            return
        self.progress = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  lr {task.fields[lr]}  {task.fields[tps]} tok/s"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=self.console, transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=state.max_steps, completed=state.global_step,
                                           loss="-", lr="-", tps="-")
        self.last = (time.perf_counter(), 0)

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.progress is None or not logs or "loss" not in logs:
            return
        now, tokens = time.perf_counter(), logs.get("num_tokens", 0)
        rate = (tokens - self.last[1]) / max(now - self.last[0], 1e-9)
        self.last = (now, tokens)
        self.progress.update(self.task, loss=f"{logs['loss']:.4f}", lr=f"{logs.get('learning_rate', 0):.2e}",
                             tps=f"{rate:.0f}" if tokens else "-")

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step)
            self.progress.stop()
            self.progress = None


class ProgressEvents(TrainerCallback):
    """A `training` event per optimizer step (qrtrain.events): step, total_steps, eta_s, and the loss,
    learning rate and tokens per second of the latest log, with `loss_step`, the step that log was made at
    (a chart plots each loss once, at its own step, not repeated at every step until the next log)."""

    def __init__(self):
        self.started = None  # (time, step) when this process began training: resumed runs count from there
        self.latest = {}
        self.last_log = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = (time.perf_counter(), state.global_step)
        self.last_log = (time.perf_counter(), 0)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs:
            return
        now, tokens = time.perf_counter(), logs.get("num_tokens", 0)
        rate = (tokens - self.last_log[1]) / max(now - self.last_log[0], 1e-9) if tokens else None
        self.last_log = (now, tokens)
        self.latest = {"loss": logs["loss"], "loss_step": state.global_step, "learning_rate": logs.get("learning_rate"),
                       "tokens_per_s": round(rate, 1) if rate is not None else None}
        self.on_step_end(args, state, control)  # the fresh loss, at the step it belongs to

    def on_step_end(self, args, state, control, **kwargs):
        from qrtrain.events import emit

        if not state.is_world_process_zero:
            return
        began, first = self.started
        done = state.global_step - first
        eta = (time.perf_counter() - began) / done * (state.max_steps - state.global_step) if done else None
        emit("training", step=state.global_step, total_steps=state.max_steps,
             eta_s=round(eta, 1) if eta is not None else None, **self.latest)


class MetricsFile(TrainerCallback):
    """Append every log (train and eval) to a JSON Lines file, with step and wall time."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.start = time.time()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        record = {"step": state.global_step, "time": round(time.time() - self.start, 3), **logs}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def tensorboard_callback(folder: Path):
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    return TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(folder)))
