"""Each shipped extension acts as its formula says; state survives resume; user extensions plug in."""

import pytest
import json
import os
import signal
import textwrap
from pathlib import Path

import torch
from transformers import TrainerCallback

from qrtrain.training.extensions.early_stopping import EarlyStopping
from qrtrain.training.extensions.ema import EMA
from qrtrain.training.extensions.grokfast import GrokFast
from qrtrain.training.extensions.neftune import NEFTune
from tests.conftest import invoke
from tests.training.test_train import build


def train_with(tmp_path, callbacks, *overrides):
    _, model, trainer = build(tmp_path, *overrides)
    for callback in callbacks:
        trainer.add_callback(callback)
    trainer.train()
    return model, trainer


class GradientRecorder(TrainerCallback):
    def __init__(self):
        self.steps = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.steps.append({n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None})


def test_grokfast_changes_gradients_by_the_formula(tmp_path):
    before, after = GradientRecorder(), GradientRecorder()
    grokfast = GrokFast(alpha=0.9, lamb=2.0)
    train_with(tmp_path, [before, grokfast, after], "training.max_steps=3")
    ema = {}
    for step, (raw, filtered) in enumerate(zip(before.steps, after.steps)):
        for name, g in raw.items():
            ema[name] = g.clone() if step == 0 else ema[name] * 0.9 + g * 0.1
            assert torch.allclose(filtered[name], g + 2.0 * ema[name], atol=1e-6), (step, name)
    assert len(before.steps) == 3 and before.steps[0].keys() == grokfast.ema.keys()


class WeightRecorder(TrainerCallback):
    def __init__(self):
        self.steps = []

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.steps.append({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})


def test_ema_weights_equal_the_formula_and_replace_the_last(tmp_path):
    recorder = WeightRecorder()
    model, _ = train_with(tmp_path, [recorder, EMA(decay=0.5)], "training.max_steps=4")
    expected = {}
    for step, weights in enumerate(recorder.steps):
        for name, w in weights.items():
            expected[name] = w.clone() if step == 0 else expected[name] * 0.5 + w * 0.5
    final = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    assert all(torch.allclose(final[n], expected[n], atol=1e-7) for n in expected)
    assert any(not torch.equal(final[n], recorder.steps[-1][n]) for n in expected)


def test_neftune_noise_only_in_training_mode(tmp_path):
    _, model, trainer = build(tmp_path, "training.max_steps=1")
    ids = torch.tensor([[5, 6, 7, 8]])
    embeddings = model.get_input_embeddings()
    clean = embeddings(ids).detach()
    NEFTune(alpha=5.0).on_train_begin(trainer.args, trainer.state, trainer.control, model=model)
    embeddings.train()
    noisy = embeddings(ids).detach()
    bound = 5.0 / (ids.shape[1] * clean.shape[-1]) ** 0.5
    assert not torch.equal(noisy, clean) and (noisy - clean).abs().max() <= bound + 1e-6
    embeddings.eval()
    assert torch.equal(embeddings(ids).detach(), clean)


class ScriptedMetric(TrainerCallback):
    def __init__(self, values):
        self.values = list(values)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        metrics["eval_scripted"] = self.values.pop(0)


def test_early_stopping_stops_at_the_expected_step(tmp_path):
    stopper = EarlyStopping(metric="eval_scripted", patience=2, threshold=0.1)
    _, model, trainer = build(tmp_path, "training.max_steps=20")
    trainer.args.eval_strategy, trainer.args.eval_steps = "steps", 1
    trainer.eval_dataset = trainer.train_dataset.select(range(2))
    trainer.add_callback(ScriptedMetric([5.0, 4.0, 3.95, 4.2, 3.0, 2.0] + [1.0] * 20))
    trainer.add_callback(stopper)
    trainer.train()
    # 5.0 best, 4.0 best, 3.95 not better by 0.1 (1 bad), 4.2 (2 bad) -> stop after the 4th evaluation
    assert trainer.state.global_step == 4 and stopper.stopped_at == 4 and stopper.best == 4.0



def test_resource_monitor_writes_its_metrics(tmp_path):
    result = invoke("train", "model=tiny", "training.max_steps=4", "training.logging_steps=2",
                    "extensions=[resource_monitor]", f"artifact.root={tmp_path}")
    assert result.exit_code == 0, result.output
    logs = [json.loads(line) for line in next(tmp_path.glob(".runs/*/*/metrics.jsonl")).read_text().splitlines()]
    with_loss = [entry for entry in logs if "loss" in entry]
    assert with_loss and all(entry["resource/process_rss_mb"] > 10 and "resource/tokens_per_s" in entry for entry in with_loss)
    metadata = json.loads(next(tmp_path.glob("*/v1/metadata.json")).read_text())
    assert "resource_monitor" in metadata["extensions"]


USER_EXTENSION = '''
import os, signal
from transformers import TrainerCallback

CALLS = []

class Recorder(TrainerCallback):
    """Records every hook point; interrupts itself once at `interrupt_at` to exercise save and load."""
    def __init__(self, interrupt_at=0, label="x"):
        self.interrupt_at, self.label, self.counter = interrupt_at, label, 0
    def _record(self, name):
        CALLS.append(name)
    def on_train_begin(self, *a, **k): self._record("train_begin")
    def on_step_begin(self, *a, **k): self._record("step_begin")
    def on_pre_optimizer_step(self, *a, **k): self._record("pre_optimizer_step")
    def on_step_end(self, args, state, control, **k):
        self._record("step_end")
        self.counter += 1
        if state.global_step == self.interrupt_at and "interrupted" not in CALLS:
            CALLS.append("interrupted")
            os.kill(os.getpid(), signal.SIGINT)
    def on_evaluate(self, *a, **k): self._record("evaluate")
    def on_save(self, *a, **k): self._record("save")
    def on_log(self, *a, **k): self._record("log")
    def on_train_end(self, *a, **k): self._record("train_end")
    def state_dict(self):
        self._record("state_dict")
        return {"counter": self.counter}
    def load_state_dict(self, state):
        self._record("load_state_dict")
        self.counter = state["counter"]
'''


def test_user_extension_from_a_config_dir_sees_every_hook(tmp_path, monkeypatch):
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "my_recorder.py").write_text(USER_EXTENSION)
    (tmp_path / "conf" / "extensions").mkdir(parents=True)
    (tmp_path / "conf" / "extensions" / "recorder.yaml").write_text(textwrap.dedent("""\
        # @package extensions.recorder
        _target_: my_recorder.Recorder
        interrupt_at: 3
        label: mine
        """))
    monkeypatch.syspath_prepend(str(tmp_path / "code"))
    import my_recorder

    args = ["train", "--config-dir", tmp_path / "conf", "model=tiny", "extensions=[recorder]", "training.max_steps=6",
            "checkpoint.every_steps=2", "training.eval_steps=2", "training.logging_steps=1", f"artifact.root={tmp_path / 'out'}"]
    first = invoke(*args)
    assert first.exit_code == 130, first.output
    second = invoke(*args)
    assert second.exit_code == 0, second.output
    calls = my_recorder.CALLS
    for hook in ("train_begin", "step_begin", "pre_optimizer_step", "step_end", "evaluate", "save", "log",
                 "train_end", "state_dict", "load_state_dict"):
        assert hook in calls, hook
    assert calls.index("load_state_dict") > calls.index("interrupted")
    metadata = json.loads(next((tmp_path / "out").glob("*/v1/metadata.json")).read_text())
    assert metadata["extensions"]["recorder"]["label"] == "mine"


class InterruptAt(TrainerCallback):
    """Sends this process SIGINT once, at a given step: qrtrain saves a checkpoint and exits 130."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.slow
def test_grokfast_and_ema_state_survive_resume(tmp_path, monkeypatch):
    """Interrupt after a few steps, resume: the extensions' state after loading equals what was saved."""
    from safetensors.torch import load_file

    import qrtrain.training.extensions
    import qrtrain.training.trainer

    loaded, load_states, build_trainer = {}, qrtrain.training.extensions.load_states, qrtrain.training.trainer.build_trainer

    def capture(extensions, checkpoint, device):
        load_states(extensions, checkpoint, device)
        # restored on the model's device (cuda:0 on a GPU machine), where the next step's gradients are
        assert all(torch.device(v.device) == torch.device(device) for ext in extensions.values()
                   for v in ext.state_dict().values() if torch.is_tensor(v))
        loaded.update({name: ({k: v.clone() for k, v in ext.state_dict().items()}, Path(checkpoint),  # the files are gone once the run publishes
                              load_file(Path(checkpoint) / "extensions" / f"{name}.safetensors"))
                       for name, ext in extensions.items()})

    def build_with_interrupt(*args, **kwargs):
        trainer = build_trainer(*args, **kwargs)
        trainer.add_callback(InterruptAt(7))
        return trainer

    monkeypatch.setattr(qrtrain.training.extensions, "load_states", capture)
    args = ["train", "model=tiny", "extensions=[grokfast,ema]", "training.max_steps=400", "checkpoint.every_steps=5",
            "training.eval_steps=0", f"artifact.root={tmp_path}"]
    monkeypatch.setattr(qrtrain.training.trainer, "build_trainer", build_with_interrupt)
    assert invoke(*args).exit_code == 130
    monkeypatch.setattr(qrtrain.training.trainer, "build_trainer", build_trainer)
    resumed = invoke(*args)
    assert resumed.exit_code == 0, resumed.output
    assert set(loaded) == {"grokfast", "ema"}
    for state, checkpoint, saved in loaded.values():
        assert int(checkpoint.name.split("-")[1]) >= 7  # saved on the signal, not the step-5 one
        assert len(saved) > 0
        assert state.keys() == saved.keys() and all(torch.equal(state[k], saved[k]) for k in saved)
