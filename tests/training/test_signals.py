"""Signals and kills at every moment of publishing: what the exit code says is what is on disk.

SIGINT/SIGTERM while publishing wait for the version to be complete, then the run says so and exits 0
with the version published. SIGKILL can land anywhere: the version is then complete or absent, and the
next run of the same command publishes and leaves a verified artifact (latest repaired, no staging left).
A damaged newest checkpoint is skipped by resume=auto.
"""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import invoke

ARGS = ["train", "model=tiny", "training.max_steps=4", "checkpoint.every_steps=2", "training.eval_steps=0"]
# Where publishing can be interrupted: (module, function) called at that moment.
POINTS = {
    "staging": ("qrtrain.artifacts.versions", "remove_stale_staging"),
    "metadata": ("qrtrain.artifacts.provenance", "version_metadata"),
    "manifest": ("qrtrain.artifacts.versions", "write_manifest"),
    "before latest": ("qrtrain.artifacts.versions", "_write_latest"),
    "after latest": ("qrtrain.artifacts.versions", "fsync_dir"),
    "checkpoint clean-up": ("qrtrain.training.checkpoints", "discard_checkpoints"),
}


def artifact_state(root: Path) -> dict:
    name_dir = root / "tiny-dialogue"
    return {"versions": sorted(p.name for p in name_dir.glob("v*")),
            "latest": (name_dir / "latest").read_text().strip() if (name_dir / "latest").exists() else None,
            "staging": sorted(p.name for p in name_dir.glob(".staging-*")),
            "checkpoints": sorted(p.name for p in root.glob(".checkpoints/*/checkpoint-*"))}


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("point", sorted(POINTS))
def test_a_signal_while_publishing_completes_the_version_and_says_so(tmp_path, monkeypatch, point, signum):
    import importlib

    module_name, function = POINTS[point]
    module = importlib.import_module(module_name)
    original = getattr(module, function)

    def signal_then_continue(*args, **kwargs):
        os.kill(os.getpid(), signum)
        os.kill(os.getpid(), signum)  # a second one too: still nothing half-done
        return original(*args, **kwargs)

    monkeypatch.setattr(module, function, signal_then_continue)
    result = invoke(*ARGS, f"artifact.root={tmp_path}")
    assert result.exit_code == 0, result.output[-2000:]
    assert f"a signal ({signal.Signals(signum).name}) arrived while publishing" in result.output
    assert artifact_state(tmp_path) == {"versions": ["v1"], "latest": "v1", "staging": [], "checkpoints": []}
    monkeypatch.undo()
    assert invoke("verify", tmp_path / "tiny-dialogue").exit_code == 0


def test_a_signal_after_training_before_publishing_publishes_nothing(tmp_path, monkeypatch):
    import qrtrain.training.lora as lora

    calls = []
    original = lora.frozen_digest

    def digest_and_signal(model):
        calls.append(1)
        if len(calls) == 2:  # the check after training
            os.kill(os.getpid(), signal.SIGTERM)
        return original(model)

    monkeypatch.setattr(lora, "frozen_digest", digest_and_signal)
    result = invoke(*ARGS, f"artifact.root={tmp_path}")
    assert result.exit_code == 143 and "before publishing; nothing was published" in result.output
    state = artifact_state(tmp_path)
    assert state["versions"] == [] and state["checkpoints"] == ["checkpoint-2", "checkpoint-4"]
    monkeypatch.undo()
    resumed = invoke(*ARGS, f"artifact.root={tmp_path}")
    assert resumed.exit_code == 0 and "resuming from step 4" in resumed.output


KILL_AT = """
import importlib, os, signal, sys
module_name, function = sys.argv[1], sys.argv[2]
module = importlib.import_module(module_name)
def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)
setattr(module, function, die)
sys.argv = ["qrtrain"] + sys.argv[3:]
from qrtrain.cli import main
main()
"""


@pytest.mark.slow
@pytest.mark.parametrize("point", sorted(POINTS))
def test_sigkill_while_publishing_leaves_complete_or_nothing_and_the_rerun_repairs(tmp_path, point):
    qrtrain = str(Path(sys.executable).parent / "qrtrain")
    killed = subprocess.run([sys.executable, "-c", KILL_AT, *POINTS[point], *ARGS, f"artifact.root={tmp_path}"],
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL
    state = artifact_state(tmp_path)
    for version in state["versions"]:  # anything published is whole
        assert invoke("verify", tmp_path / "tiny-dialogue" / version).exit_code == 0
    rerun = subprocess.run([qrtrain, *ARGS, f"artifact.root={tmp_path}"], capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    after = artifact_state(tmp_path)
    assert after["staging"] == [] and after["checkpoints"] == [] and after["latest"] == after["versions"][-1]
    assert invoke("verify", tmp_path / "tiny-dialogue").exit_code == 0


def test_resume_auto_skips_a_checkpoint_left_half_deleted(tmp_path, monkeypatch):
    """A kill in the clean-up used to leave a checkpoint marked complete with files missing; every later
    run failed. Now the clean-up unmarks first, and resume=auto skips a damaged one for the one before."""
    import qrtrain.training.checkpoints as checkpoints

    root = tmp_path / "r"
    monkeypatch.setattr(checkpoints, "discard_checkpoints", lambda found: None)  # as if killed before clean-up
    monkeypatch.setattr(checkpoints.shutil, "rmtree", lambda *a, **k: None)
    assert invoke(*ARGS, "training.max_steps=6", f"artifact.root={root}").exit_code == 0
    monkeypatch.undo()
    newest = max(root.glob(".checkpoints/*/checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    (newest / "adapter_model.safetensors").unlink()  # marked complete, a file gone
    result = invoke(*ARGS, "training.max_steps=6", f"artifact.root={root}")
    assert result.exit_code == 0, result.output[-2000:]
    assert f"skipping checkpoint {newest}: adapter_model.safetensors is missing" in result.output
    assert "resuming from step 4" in result.output


def test_clean_up_unmarks_before_deleting(tmp_path, monkeypatch):
    import qrtrain.training.checkpoints as checkpoints

    for step in (2, 4):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / checkpoints.COMPLETE).write_text("")
    deleted = []
    monkeypatch.setattr(checkpoints.shutil, "rmtree", lambda path, **kwargs: deleted.append(
        (Path(path).name, (Path(path) / checkpoints.COMPLETE).exists())))
    checkpoints.discard_checkpoints(sorted(tmp_path.glob("checkpoint-*")))
    assert deleted == [("checkpoint-2", False), ("checkpoint-4", False)]
    assert checkpoints.complete_checkpoints(tmp_path) == []


def test_publish_removes_staging_left_by_a_dead_process(tmp_path):
    from qrtrain.artifacts.versions import staging_folder

    name_dir = tmp_path / "a"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (name_dir / f".staging-{dead.pid}-x").mkdir(parents=True)
    (name_dir / f".staging-{os.getpid()}-alive").mkdir()
    with staging_folder(tmp_path, "a"):
        names = sorted(p.name for p in name_dir.glob(".staging-*"))
    assert f".staging-{dead.pid}-x" not in names and f".staging-{os.getpid()}-alive" in names
