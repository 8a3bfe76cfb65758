"""Checkpoints survive a crash, resume really resumes, and the same seed gives the same adapter."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.numpy import load_file

from qrtrain.training.checkpoints import COMPLETE, PARTIAL

QRTRAIN = str(Path(sys.executable).parent / "qrtrain")
COMMON = ["model=tiny", "training.max_steps=60", "checkpoint.every_steps=10", "training.eval_steps=20",
          "training.learning_rate=5e-3", "training.batch_size=4"]


def train(root: Path, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([QRTRAIN, "train", *COMMON, f"artifact.root={root}", *extra],
                            capture_output=True, text=True, timeout=600, env=os.environ.copy())
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def adapter(root: Path) -> dict:
    return load_file(next(Path(root).glob("*/v1")) / "adapter_model.safetensors")


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float(abs(a[k] - b[k]).max()) for k in a)


def checkpoints(root: Path) -> list[Path]:
    return sorted((p for p in Path(root).glob(".checkpoints/*/checkpoint-*") if (p / COMPLETE).is_file()),
                  key=lambda p: int(p.name.split("-")[1]))


def start(root: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([QRTRAIN, "train", *COMMON, f"artifact.root={root}", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())


def wait_for_checkpoint(root: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not checkpoints(root):
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.02)


@pytest.mark.parametrize("accumulation", [1, pytest.param(3, marks=pytest.mark.slow)])
def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path, accumulation):
    extra = [f"training.gradient_accumulation_steps={accumulation}"]
    train(tmp_path / "straight", *extra)
    process = start(tmp_path / "killed", *extra)
    wait_for_checkpoint(tmp_path / "killed", process)
    time.sleep(random.Random(accumulation).uniform(0, 0.5))  # somewhere after the first checkpoint
    process.kill()
    process.wait()
    assert not list((tmp_path / "killed").glob("*/v1")), "the killed run must not have published"
    steps = [int(p.name.split("-")[1]) for p in checkpoints(tmp_path / "killed")]
    resumed = train(tmp_path / "killed", *extra)
    assert f"resuming from step {steps[-1]}" in resumed.stderr
    assert max_difference(adapter(tmp_path / "straight"), adapter(tmp_path / "killed")) <= 1e-5


KILL_DURING_SECOND_SAVE = """
import os, signal, sys
import transformers
saves = []
original = transformers.Trainer._save_rng_state
def save_then_die(self, output_dir):
    saves.append(output_dir)
    if len(saves) == 2:  # model and optimizer of the second checkpoint are written, the rest is not
        os.kill(os.getpid(), signal.SIGKILL)
    return original(self, output_dir)
transformers.Trainer._save_rng_state = save_then_die
sys.argv = ["qrtrain", "train"] + sys.argv[1:]
from qrtrain.cli import main
main()
"""


@pytest.mark.slow
def test_kill_while_saving_keeps_the_previous_checkpoint(tmp_path):
    root = tmp_path / "r"
    result = subprocess.run([sys.executable, "-c", KILL_DURING_SECOND_SAVE, *COMMON, f"artifact.root={root}"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == -signal.SIGKILL
    assert [p.name for p in checkpoints(root)] == ["checkpoint-10"]
    half = list(root.glob(f".checkpoints/*/{PARTIAL}/checkpoint-20"))
    assert half and not (half[0] / COMPLETE).exists() and not (half[0] / "trainer_state.json").exists()
    resumed = train(root)
    assert "resuming from step 10" in resumed.stderr
    assert (root / "tiny-dialogue" / "v1").is_dir()


@pytest.mark.slow
def test_sigint_saves_a_checkpoint_and_exits_130_then_resumes(tmp_path):
    root = tmp_path / "r"
    process = start(root, "training.max_steps=400")
    wait_for_checkpoint(root, process)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stderr[-2000:]
    step = int(checkpoints(root)[-1].name.split("-")[1])
    assert f"checkpoint saved at step {step}" in stderr and "resume with: qrtrain train" in stderr
    assert not list(root.glob("*/v1"))
    resumed = train(root, "training.max_steps=400")
    assert f"resuming from step {step}" in resumed.stderr
    state = json.loads((root / "tiny-dialogue" / "v1" / "training_metrics.json").read_text())
    assert state["final"]["global_step"] == 400


@pytest.mark.slow
def test_resume_refuses_a_checkpoint_of_another_config(tmp_path):
    root = tmp_path / "r"
    process = start(root, "training.max_steps=400")
    wait_for_checkpoint(root, process)
    process.kill()
    process.wait()
    checkpoint = checkpoints(root)[-1]
    result = train(root, "training.max_steps=400", "lora.r=8", f"resume={checkpoint}", check=False)
    assert result.returncode == 2 and "different config: lora.r (16 -> 8)" in result.stderr

    # the interrupted training's checkpoints are listed; a published run of the same artifact removes them
    from tests.conftest import invoke

    listed = json.loads(invoke("list", "--root", root, "--checkpoints", "--json").output)
    assert {(r["artifact"], r["in_use"]) for r in listed} == {("tiny-dialogue", False)}
    assert any(r["newest_step"] for r in listed)  # the killed run's; the refused one left an empty folder
    train(root, "training.max_steps=2", "lora.r=8", "checkpoint.every_steps=0")
    assert json.loads(invoke("list", "--root", root, "--checkpoints", "--json").output) == []
    assert not checkpoints(root)


@pytest.mark.slow
def test_clean_checkpoints_keeps_those_a_live_run_holds(tmp_path):
    from tests.conftest import invoke

    root = tmp_path / "r"
    stale = start(root, "training.max_steps=400", "artifact.name=stale")
    wait_for_checkpoint(root, stale)
    stale.kill()
    stale.wait()
    live = start(root, "training.max_steps=100000", "artifact.name=live")
    try:
        while len(list(root.glob(".checkpoints/live-*/.lock"))) == 0:
            time.sleep(0.1)
        rows = {r["artifact"]: r for r in json.loads(invoke("list", "--root", root, "--checkpoints", "--json").output)}
        assert rows["live"]["in_use"] and not rows["stale"]["in_use"]
        assert "removed 1 checkpoint folder" in invoke("list", "--root", root, "--clean-checkpoints").output
        assert [p.name.split("-")[0] for p in (root / ".checkpoints").iterdir()] == ["live"]
    finally:
        live.kill()
        live.wait()


@pytest.mark.slow  # three trainings of 10 steps; tests/training/test_data_cache.py checks bit-identical reruns too
def test_same_seed_gives_byte_identical_adapters(tmp_path):
    paths = []
    for name in ("a", "b"):
        train(tmp_path / name, "checkpoint.every_steps=0", "training.max_steps=10")
        paths.append(next((tmp_path / name).glob("*/v1")) / "adapter_model.safetensors")
    assert paths[0].read_bytes() == paths[1].read_bytes()
    train(tmp_path / "c", "checkpoint.every_steps=0", "training.max_steps=10", "seed=7")
    assert (next((tmp_path / "c").glob("*/v1")) / "adapter_model.safetensors").read_bytes() != paths[0].read_bytes()
