"""Replay the first steps of a published version's training and compare the loss curve with the recorded one.

    qrtrain replay tiny-dialogue/v1 --steps 10
    qrtrain replay outputs/NAME/v3 --json

The recorded config (training_config.yaml) is trained again through the same phases as `qrtrain train`
(qrtrain/training/train.py), into a private folder that is removed afterwards: nothing is published and no
checkpoint of a real run is touched. Before anything loads, every recorded data file and the base model's
files are hashed and compared with metadata.json: any difference is exit 2, naming the file. The steps run
on the recorded device kind with the recorded CPU thread count, and stop after step N (rounded up to the
next logged step) with the learning-rate schedule of the full run, so the logged losses and gradient norms
are comparable one to one: on CPU they must be identical (tolerance 0); on CUDA within CUDA_TOLERANCE
(relative), because its kernels are not bit-exact from run to run.
Exit codes: 0 reproduced, 1 the curve differs, 2 an input differs or bad usage.
"""

import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from qrtrain.errors import QrtrainError

CUDA_TOLERANCE = 1e-2  # relative, per logged value
COMPARED = ("loss", "grad_norm")


@dataclass
class Recorded:
    """What the version says about how it was trained."""
    folder: Path
    config: object  # the resolved OmegaConf config
    metadata: dict
    history: list[dict]  # training_metrics.json's logged steps


def read_recorded(target: str, root: Path) -> Recorded:
    import json

    from omegaconf import OmegaConf

    from qrtrain.artifacts.lineage import find_version
    from qrtrain.artifacts.verify import verify_version

    folder = Path(target) if (Path(target) / "checksums.json").is_file() else find_version(target, root)
    if folder is None:
        raise QrtrainError(f"{target}: no such version under {root} (nor a version folder); `qrtrain list` shows them")
    result = verify_version(folder)
    if not result["verified"]:
        listed = "; ".join(f"{p['file']}: {p['message']}" for p in result["problems"][:3])
        raise QrtrainError(f"{folder} fails verification ({listed}); its record cannot be trusted to replay",
                           exit_code=1)
    metadata = json.loads((folder / "metadata.json").read_text(encoding="utf-8"))
    if (metadata.get("package") or {}).get("format"):
        raise QrtrainError(f"{folder} is a package; replay the version it was packaged from")
    history = json.loads((folder / "training_metrics.json").read_text(encoding="utf-8")).get("history", [])
    return Recorded(folder, OmegaConf.load(folder / "training_config.yaml"), metadata, history)


def input_differences(recorded: Recorded) -> list[str]:
    """Every recorded data file and base model file whose sha256 differs here (or that is missing)."""
    from qrtrain.artifacts.manifest import build_manifest
    from qrtrain.files import sha256_file
    from qrtrain.models.loading import model_folder

    found = []
    for source in recorded.metadata.get("datasets") or []:
        if source.get("role") == "eval-split":  # made from data.train, and kept in the version
            continue
        path = Path(str(source.get("path")))
        if not path.exists():
            found.append(f"data {path} ({source.get('role')}): missing (replay from the folder training ran in)")
            continue
        digest = sha256_file(path) if path.is_file() else build_manifest(path)["root_digest"]
        if digest != source.get("sha256"):
            found.append(f"data {path} ({source.get('role')}): sha256 {digest[:16]}..., recorded "
                         f"{str(source.get('sha256'))[:16]}... (the file changed since training)")
    base = model_folder(recorded.config.model)
    for name, digest in sorted(((recorded.metadata.get("base_model") or {}).get("files") or {}).items()):
        if not (base / name).is_file():
            found.append(f"base model {base / name}: missing")
        elif sha256_file(base / name) != digest:
            found.append(f"base model {base / name}: sha256 differs from the one recorded at training time")
    return found


def recorded_threads(metadata: dict) -> int | None:
    match = re.search(r"(\d+) threads", str(metadata.get("device", "")))
    return int(match.group(1)) if match else None


def replay(target: str, root: Path, steps: int | None = None) -> dict:
    """Check the inputs, train the first steps again, compare: {reproduced, steps, rows, tolerance, ...}."""
    from omegaconf import OmegaConf

    recorded = read_recorded(target, Path(root))
    logged = [h for h in recorded.history if "loss" in h and "step" in h]
    if not logged:
        raise QrtrainError(f"{recorded.folder}/training_metrics.json records no logged loss to compare with")
    if steps is not None and steps < 1:
        raise QrtrainError(f"--steps {steps}: expected a whole number above 0")
    last = next((h["step"] for h in logged if h["step"] >= (steps or logged[-1]["step"])), logged[-1]["step"])
    differences = input_differences(recorded)
    if differences:
        raise QrtrainError("the inputs differ from the recorded ones, so the run cannot be replayed:\n  "
                           + "\n  ".join(differences))
    device_kind = str(recorded.metadata.get("device", "cpu")).split(":")[0]
    cfg = OmegaConf.create(OmegaConf.to_container(recorded.config, resolve=True))
    work = Path(tempfile.mkdtemp(prefix="qrtrain-replay-"))
    try:
        parent = recorded.metadata.get("parent")
        if parent:  # continue from the parent beside the version, by folder (the recorded root is elsewhere)
            cfg.init_adapter = str((recorded.folder.parent.parent / parent["name"] / parent["version"]).resolve())
        cfg.artifact.root, cfg.resume, cfg.checkpoint.every_steps = str(work / "root"), "never", 0
        cfg.artifact.sign_key = None
        cfg.training.device = device_kind
        cfg.training.threads = recorded_threads(recorded.metadata) or cfg.training.threads
        replayed = train_steps(cfg, work, last)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return compare_curves(recorded, logged, replayed, last, device_kind)


def train_steps(cfg, work: Path, last: int) -> list[dict]:
    """The recipe's phases up to `fit`, stopped after step `last`; the logged history."""
    from transformers import TrainerCallback

    from qrtrain.training import train as recipe

    class StopAfter(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step >= last:
                control.should_training_stop = True
            return control

    recipe.start_run(cfg, work / "run")
    base = recipe.load_base(cfg)
    data = recipe.prepare_data(cfg, base) if cfg.method.name == "sft" else recipe.prepare_preference_data(cfg, base)
    plan = recipe.plan_run(cfg, base, data)
    loaded = recipe.load_for_training(cfg, base, plan, data)
    trainer, _ = recipe.build_run(cfg, base, data, plan, loaded, work / "run")
    trainer.add_callback(StopAfter())
    try:
        trainer.train()
    finally:
        if plan.checkpoint_lock is not None:
            plan.checkpoint_lock.close()
    return [h for h in trainer.state.log_history if "loss" in h and "step" in h]


def compare_curves(recorded: Recorded, logged: list[dict], replayed: list[dict], last: int, device_kind: str) -> dict:
    tolerance = 0.0 if device_kind == "cpu" else CUDA_TOLERANCE
    again = {h["step"]: h for h in replayed}
    rows = []
    for entry in (h for h in logged if h["step"] <= last):
        for key in COMPARED:
            if key not in entry:
                continue
            now = again.get(entry["step"], {}).get(key)
            difference = abs(now - entry[key]) if isinstance(now, (int, float)) else None
            allowed = tolerance * max(abs(entry[key]), 1e-12)
            rows.append({"step": entry["step"], "value": key, "recorded": entry[key], "replayed": now,
                         "difference": difference, "ok": difference is not None and difference <= allowed})
    return {"version": f"{recorded.metadata.get('name')}/{recorded.metadata.get('version')}", "steps": last,
            "device": device_kind, "tolerance": tolerance, "reproduced": bool(rows) and all(r["ok"] for r in rows),
            "rows": rows}


def print_replay(result: dict, as_json: bool) -> None:
    import json

    if as_json:
        print(json.dumps(result, indent=2))
        return
    from rich.table import Table

    from qrtrain.terminal import table_console

    verdict = "[green]reproduced[/]" if result["reproduced"] else "[bold red]DIFFERS[/]"
    limit = "identical (CPU)" if result["tolerance"] == 0 else f"within {result['tolerance']:.0%} ({result['device']})"
    table = Table(title=f"replay of {result['version']}, {result['steps']} steps, {limit}: {verdict}",
                  title_justify="left")
    for column in ("step", "value", "recorded", "replayed", "difference"):
        table.add_column(column)
    for row in result["rows"]:
        table.add_row(str(row["step"]), row["value"], f"{row['recorded']:.8g}",
                      "-" if row["replayed"] is None else f"{row['replayed']:.8g}",
                      "-" if row["difference"] is None else f"{row['difference']:.3g}"
                      + ("" if row["ok"] else " [red]x[/]"))
    table_console().print(table)
