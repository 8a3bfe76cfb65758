"""Experiment trackers: one tiny training reports to TensorBoard, MLflow, W&B (offline) and Trackio; each tracker's
run is read back from its local store and linked to the published version both ways. Nothing touches the network.

    .venv/bin/pytest tests/training/test_tracking.py
"""

import json
import os
import sqlite3
import struct
from pathlib import Path

import pytest

from tests.conftest import compose_cfg, invoke

STEPS = 3
ENVIRONMENT = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "WANDB_MODE", "WANDB_DIR", "WANDB_PROJECT",
               "TRACKIO_DIR")


@pytest.fixture(scope="module")
def tracked_version(tmp_path_factory, model_cache):
    """(root, the version, its metadata, its root digest, the environment before the run). The run is the CLI in
    its own process, as users run it: Trackio reads its folder once per process, when first imported, and other
    tests in this process may have imported it already."""
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("tracked")
    before = {name: os.environ.get(name) for name in ENVIRONMENT}
    result = subprocess.run([sys.executable, "-m", "qrtrain", "train", "model=tiny", f"training.max_steps={STEPS}",
                             "training.logging_steps=1", "training.eval_steps=0", "training.learning_rate=1e-2",
                             f"artifact.root={root}", "artifact.name=t", "tracking=[tensorboard,mlflow,wandb,trackio]"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    version = root / "t" / "v1"
    metadata = json.loads((version / "metadata.json").read_text())
    digest = json.loads((version / "checksums.json").read_text())["root_digest"]
    return root, version, metadata, digest, before


def version_tags(version: Path, digest: str) -> dict:
    return {"qrtrain.artifact": "t", "qrtrain.version": "v1", "qrtrain.root_digest": digest,
            "qrtrain.version_path": str(version.resolve())}


def test_mlflow_run_has_params_steps_and_the_versions_tags(tracked_version):
    from mlflow import MlflowClient

    root, version, metadata, digest, _ = tracked_version
    record = metadata["tracking"]["mlflow"]
    assert record["tracking_uri"] == f"sqlite:///{(root / '.mlflow' / 'mlflow.db').resolve()}"
    assert record["experiment"] == "t"
    client = MlflowClient(record["tracking_uri"])
    run = client.get_run(record["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["learning_rate"] == "0.01" and run.data.params["optim"] == "adamw_torch"
    losses = client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in losses] == list(range(1, STEPS + 1))
    assert "eval_loss" in run.data.metrics  # the final evaluation went to the same run, not to a second one
    experiment = client.get_experiment_by_name("t")
    assert [r.info.run_id for r in client.search_runs([experiment.experiment_id])] == [run.info.run_id]
    assert {k: v for k, v in run.data.tags.items() if k.startswith("qrtrain.")} == version_tags(version, digest)


def wandb_records(path: Path) -> list:
    """The protobuf records of a .wandb file (LevelDB's log format: 32 KiB blocks of chunks with 7-byte headers,
    after W&B's own 7-byte file header)."""
    from wandb.proto import wandb_internal_pb2

    data, position, chunks, records = path.read_bytes(), 7, b"", []
    assert data[:4] == b":W&B"
    while position + 7 <= len(data):
        if 32768 - position % 32768 < 7:  # a block's tail too short for a header is padding
            position += 32768 - position % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        chunks += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunks)
            records.append(record)
            chunks = b""
    return records


def test_wandb_offline_run_is_written_named_and_tagged(tracked_version):
    root, version, metadata, digest, _ = tracked_version
    record = metadata["tracking"]["wandb"]
    folder = Path(record["dir"])
    assert record["mode"] == "offline" and record["project"] == "t"
    assert folder.parent == (root / ".wandb" / "wandb").resolve()
    assert folder.name.startswith("offline-run-") and folder.name.endswith(record["run_id"])
    records = wandb_records(folder / f"run-{record['run_id']}.wandb")
    config = {u.key: json.loads(u.value_json) for r in records if r.HasField("config") for u in r.config.update}
    assert {k: v for k, v in config.items() if k.startswith("qrtrain.")} == version_tags(version, digest)
    losses = [item for r in records if r.HasField("history") for item in r.history.item
              if list(item.nested_key) == ["train/loss"]]
    assert len(losses) == STEPS


def test_trackio_run_is_stored_locally_and_named(tracked_version):
    root, _, metadata, _, _ = tracked_version
    record = metadata["tracking"]["trackio"]
    assert record == {"run": record["run"], "project": "t", "dir": str((root / ".trackio").resolve())}
    with sqlite3.connect(root / ".trackio" / "t.db") as db:
        rows = db.execute("select run_id, metrics from metrics where run_name = ?", (record["run"],)).fetchall()
    assert len({run_id for run_id, _ in rows}) == 1  # the final evaluation resumed the same run
    assert sum("train/loss" in json.loads(metrics) for _, metrics in rows) == STEPS


def test_tensorboard_events_stay_in_the_run_folder(tracked_version):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root = tracked_version[0]
    [folder] = (root / ".runs" / "t").glob("*/tensorboard")
    events = EventAccumulator(str(folder))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, STEPS + 1))


def test_tracker_environment_is_restored_after_the_run(tmp_path):
    """In-process (a sweep's jobs share one process): the variables set for the run are put back after it."""
    before = {name: os.environ.get(name) for name in ENVIRONMENT}
    result = invoke("train", "model=tiny", "training.max_steps=1", "training.eval_steps=0", f"artifact.root={tmp_path}",
                    "tracking=[tensorboard,mlflow,wandb]")
    assert result.exit_code == 0, result.output
    assert {name: os.environ.get(name) for name in ENVIRONMENT} == before


def test_a_missing_tracker_package_is_exit_2_before_training(tmp_path, monkeypatch):
    from qrtrain import config

    monkeypatch.setattr(config, "tracker_installed", lambda module: module != "mlflow")
    result = invoke("train", "model=tiny", f"artifact.root={tmp_path}", "tracking=[tensorboard,mlflow]")
    assert result.exit_code == 2
    assert "pip install mlflow-skinny" in result.output and "tracking=mlflow" in result.output
    assert not list(tmp_path.glob("*/v*")) and not (tmp_path / ".mlflow").exists()


def test_a_failed_run_ends_its_mlflow_run_as_failed(tmp_path):
    from mlflow import MlflowClient

    from qrtrain.training.tracking import tracked

    cfg = compose_cfg("tracking=[mlflow]", "artifact.name=f", root=tmp_path)
    with pytest.raises(RuntimeError), tracked(cfg, tmp_path / ".runs" / "f" / "now") as runs:
        assert os.environ["MLFLOW_EXPERIMENT_NAME"] == "f"
        raise RuntimeError("training crashed")
    assert MlflowClient(runs.mlflow["tracking_uri"]).get_run(runs.mlflow["run_id"]).info.status == "FAILED"
    assert "MLFLOW_EXPERIMENT_NAME" not in os.environ or os.environ["MLFLOW_EXPERIMENT_NAME"] != "f"


def test_no_trackers_means_no_tensorboard_and_no_report_to(tmp_path):
    from transformers.integrations import TensorBoardCallback

    from qrtrain.training.trainer import callbacks_for
    from qrtrain.training.tracking import report_to

    cfg = compose_cfg("tracking=[]", root=tmp_path)
    assert report_to(cfg) == []
    assert not any(isinstance(c, TensorBoardCallback) for c in callbacks_for(cfg, tmp_path, None, None, None, {}))
    default = compose_cfg(root=tmp_path)
    assert list(default.tracking) == ["tensorboard"] and report_to(default) == []
