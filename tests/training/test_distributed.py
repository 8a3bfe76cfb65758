"""Two processes on CPU (torchrun, gloo) train like one process with the same global batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.numpy import load_file
from typer.testing import CliRunner

from qrtrain.cli import app

BIN = Path(sys.executable).parent
COMMON = ["model=tiny", "training.max_steps=8", "training.eval_steps=4", "training.logging_steps=1",
          "checkpoint.every_steps=4", "training.learning_rate=5e-3", "lora.dropout=0"]


def run(command, root):
    result = subprocess.run(command + [f"artifact.root={root}"], capture_output=True, text=True, timeout=600,
                            env=os.environ.copy())
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.slow
@pytest.mark.parametrize("method", ["sft", "dpo"])
def test_two_processes_match_one_and_publish_once(tmp_path, method):
    # DPO's sigmoid loss is a mean over pairs, so two halves average to the whole batch; its `sft` term (in the
    # default [sigmoid,sft]) is a mean over each process's tokens, which DDP's average of two halves only nears
    common = [*COMMON, f"method={method}", *(["method.loss_type=sigmoid"] if method == "dpo" else [])]
    name = "tiny-dialogue" + ("" if method == "sft" else f"-{method}")
    run([str(BIN / "qrtrain"), "train", *common, "training.batch_size=4"], tmp_path / "one")
    two = run([str(BIN / "torchrun"), "--nproc_per_node=2", "-m", "qrtrain", "train", *common, "training.batch_size=2"],
              tmp_path / "two")
    assert two.stdout.count("published") + two.stderr.count("published") == 1
    assert sorted(p.name for p in (tmp_path / "two" / name).glob("v*")) == ["v1"]
    losses = [[h["loss"] for h in json.loads((tmp_path / r / name / "v1" / "training_metrics.json").read_text())["history"]
               if "loss" in h] for r in ("one", "two")]
    assert len(losses[0]) == 8 and all(abs(a - b) < 1e-4 for a, b in zip(*losses)), losses
    a, b = (load_file(tmp_path / r / name / "v1" / "adapter_model.safetensors") for r in ("one", "two"))
    assert max(float(abs(a[k] - b[k]).max()) for k in a) < 1e-4
    assert CliRunner().invoke(app, ["verify", str(tmp_path / "two" / name)]).exit_code == 0


def test_slurm_launcher_config_composes():
    result = CliRunner().invoke(app, ["train", "--cfg", "hydra", "hydra/launcher=slurm", "model=tiny"])
    assert result.exit_code == 0, result.output
    assert "SlurmLauncher" in result.output and "gpus_per_node: 1" in result.output
