"""Experiment trackers (conf/tracking/): the Trainer's own integrations, each tracker run linked to the version.

    qrtrain train model=tiny training.max_steps=5 tracking=[tensorboard,mlflow,wandb]
    mlflow ui --backend-store-uri sqlite:///outputs/.mlflow/mlflow.db

`tensorboard` is qrtrain's own writer, as before (the run folder's tensorboard/: progress.tensorboard_callback).
`mlflow`, `wandb` and `trackio` are the Trainer's callbacks (`report_to`), set up by the environment variables
they read (MLFLOW_TRACKING_URI, MLFLOW_EXPERIMENT_NAME, WANDB_MODE, WANDB_DIR, WANDB_PROJECT, TRACKIO_DIR), set
from the config for the run and restored after it. qrtrain opens the MLflow run itself: the callback would end
its own run when training ends, and the final evaluation would then start a second one.

metadata.json names each tracker's run (`tracking`); once the version is published, the MLflow run is tagged
and the W&B run's config and summary get `qrtrain.artifact`, `qrtrain.version`, `qrtrain.root_digest` and
`qrtrain.version_path`. Trackio keeps a run's config from its first log, so for Trackio the link is
metadata.json's alone.
"""

import contextlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from qrtrain.errors import QrtrainError

TRAINER_TRACKERS = ("mlflow", "wandb", "trackio")  # the Trainer's report_to names; tensorboard is qrtrain's writer


@dataclass
class TrackerRuns:
    """The trackers of one run: the Trainer's report_to, the run name they share, the environment set for them
    (with the values it replaced, None: unset), the MLflow run qrtrain opened, and the version once published."""
    report_to: list[str]
    run_name: str
    replaced_environment: dict = field(default_factory=dict)
    mlflow: dict | None = None  # {run_id, tracking_uri, experiment}
    version: Path | None = None


def report_to(cfg) -> list[str]:
    """The Trainer's integrations this config selects (tracking=[...] less tensorboard)."""
    return [name for name in (cfg.get("tracking") or {}) if name in TRAINER_TRACKERS]


def run_name(cfg, run_dir: Path) -> str:
    """One name for the run in every tracker: the artifact and the Hydra run folder (a sweep's job number too)."""
    run_dir = Path(run_dir)
    folder = f"{run_dir.parent.name}/{run_dir.name}" if run_dir.parent.name.startswith("multirun-") else run_dir.name
    return f"{cfg.artifact.name}/{folder}"


def mlflow_tracking_uri(cfg) -> str:
    """tracking.mlflow.tracking_uri, or null: a local SQLite store under the artifact root (MLflow's default
    backend for local use), as an absolute path so that metadata.json names it from anywhere."""
    uri = cfg.tracking.mlflow.tracking_uri
    return uri or f"sqlite:///{(Path(cfg.artifact.root) / '.mlflow' / 'mlflow.db').resolve()}"


def tracker_environment(cfg) -> dict[str, str]:
    """The environment variables the selected trackers read, from the config."""
    tracking = cfg.get("tracking") or {}
    env = {}
    if "mlflow" in tracking:
        env.update(MLFLOW_TRACKING_URI=mlflow_tracking_uri(cfg), MLFLOW_EXPERIMENT_NAME=tracking.mlflow.experiment)
    if "wandb" in tracking:
        env.update(WANDB_MODE=tracking.wandb.mode, WANDB_DIR=str(Path(tracking.wandb.dir).resolve()),
                   WANDB_PROJECT=tracking.wandb.project)
    if "trackio" in tracking:
        env.update(TRACKIO_DIR=str(Path(tracking.trackio.dir).resolve()))
    return env


@contextlib.contextmanager
def tracked(cfg, run_dir: Path):
    """The trackers' runs around training and publishing: ended as FINISHED and tagged with the version that
    `runs.version` names when the block sets it, as KILLED when it returns without one (an interruption), as
    FAILED when it raises."""
    runs = start_trackers(cfg, run_dir)
    try:
        yield runs
    except BaseException:
        end_trackers(runs, failed=True)
        raise
    end_trackers(runs, failed=False)


def start_trackers(cfg, run_dir: Path) -> TrackerRuns:
    """Set the trackers' environment, create their folders, and open the MLflow run (on the main process)."""
    runs = TrackerRuns(report_to(cfg), run_name(cfg, run_dir))
    env = tracker_environment(cfg)
    for name, value in env.items():
        runs.replaced_environment[name] = os.environ.get(name)
        os.environ[name] = value
    try:
        for key in ("WANDB_DIR", "TRACKIO_DIR"):
            if key in env:
                Path(env[key]).mkdir(parents=True, exist_ok=True)
        if "trackio" in runs.report_to and "trackio" in sys.modules:  # trackio reads TRACKIO_DIR once, on import
            from trackio.utils import TRACKIO_DIR

            if Path(TRACKIO_DIR).resolve() != Path(env["TRACKIO_DIR"]):
                raise QrtrainError(f"tracking.trackio.dir={cfg.tracking.trackio.dir}: trackio was imported in this "
                                   f"process with TRACKIO_DIR={TRACKIO_DIR}, and reads it only then; run this job "
                                   "in its own process, or use the same tracking.trackio.dir")
        if "mlflow" in runs.report_to and int(os.environ.get("RANK", "0")) == 0:
            runs.mlflow = start_mlflow_run(env["MLFLOW_TRACKING_URI"], env["MLFLOW_EXPERIMENT_NAME"], runs.run_name)
    except BaseException:
        end_trackers(runs, failed=True)
        raise
    return runs


def start_mlflow_run(tracking_uri: str, experiment: str, name: str) -> dict:
    import mlflow

    if tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(experiment)
    run = mlflow.start_run(run_name=name)
    return {"run_id": run.info.run_id, "tracking_uri": tracking_uri, "experiment": experiment}


def tracker_records(runs: TrackerRuns, cfg) -> dict:
    """metadata.json's `tracking`: where each tracker's run of this version is."""
    records = {}
    if runs.mlflow is not None:
        records["mlflow"] = dict(runs.mlflow)
    if "wandb" in runs.report_to and "wandb" in sys.modules and sys.modules["wandb"].run is not None:
        run = sys.modules["wandb"].run
        records["wandb"] = {"run_id": run.id, "project": run.project, "mode": cfg.tracking.wandb.mode,
                            "dir": run.settings.sync_dir}
    if "trackio" in runs.report_to:
        records["trackio"] = {"run": runs.run_name, "project": cfg.tracking.trackio.project,
                              "dir": os.environ["TRACKIO_DIR"]}
    return records


def version_tags(version: Path) -> dict[str, str]:
    """The tags that name a published version in its tracker runs."""
    from qrtrain.artifacts.manifest import MANIFEST_NAME

    manifest = json.loads((version / MANIFEST_NAME).read_text(encoding="utf-8"))
    return {"qrtrain.artifact": version.parent.name, "qrtrain.version": version.name,
            "qrtrain.root_digest": manifest["root_digest"], "qrtrain.version_path": str(version.resolve())}


def end_trackers(runs: TrackerRuns, failed: bool) -> None:
    """Tag each run with the version (when one was published), end it, and restore the environment."""
    try:
        tags = version_tags(runs.version) if runs.version is not None and not failed else {}
        if "wandb" in sys.modules and "wandb" in runs.report_to and sys.modules["wandb"].run is not None:
            wandb = sys.modules["wandb"]
            if tags:  # written into the offline run before it is finished: `wandb sync` uploads them with it
                wandb.run.config.update(tags, allow_val_change=True)
                wandb.run.summary.update(tags)
            wandb.finish(exit_code=0 if tags else 1)
        if "trackio" in sys.modules and "trackio" in runs.report_to:
            trackio = sys.modules["trackio"]
            if trackio.context_vars.current_run.get() is not None:
                trackio.finish()
        if runs.mlflow is not None:
            import mlflow

            if mlflow.active_run() is not None and mlflow.active_run().info.run_id == runs.mlflow["run_id"]:
                mlflow.end_run("FAILED" if failed else "FINISHED" if tags else "KILLED")
            client = mlflow.MlflowClient(runs.mlflow["tracking_uri"])
            for key, value in tags.items():
                client.set_tag(runs.mlflow["run_id"], key, value)
    finally:
        for name, value in runs.replaced_environment.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
