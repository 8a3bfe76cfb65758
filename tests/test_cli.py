"""The command line: help stays light, training publishes, bad input exits 2 and publishes nothing."""

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from qrtrain.cli import app
from tests.conftest import published_versions

HEAVY = ("torch", "transformers", "trl", "peft")


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def test_help_and_version_import_nothing_heavy():
    code = ("import sys, runpy; sys.argv=['qrtrain','--help']\n"
            "try: runpy.run_module('qrtrain', run_name='__main__')\n"
            "except SystemExit: pass\n"
            f"print('HEAVY', [m for m in {HEAVY!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "train" in out and "HEAVY []" in out
    assert invoke("--version").output.strip().startswith("qrtrain ")


@pytest.mark.parametrize("args, message", [
    (["data.train=/no/such/data.jsonl"], "no such data file"),
    (["data.eval=/no/such/held.jsonl"], "no such data file"),
    (["model.path=/no/such/model"], "no such model folder"),
    (["model.path=someone/not-in-the-cache"], "not in the Hugging Face cache"),
    (["trainig.max_steps=5"], "did you mean training.max_steps?"),
])
def test_input_errors_come_before_anything_heavy_is_imported(tmp_path, args, message):
    """Checks that need no model run first: the error comes without torch or transformers loaded (seconds,
    not the 17-41 s of importing and loading first)."""
    code = ("import sys, runpy; sys.argv=['qrtrain','train'," + ",".join(repr(a) for a in args)
            + f",'artifact.root={tmp_path}']\n"
            "try: runpy.run_module('qrtrain', run_name='__main__')\n"
            "except SystemExit as e: print('EXIT', e.code)\n"
            f"print('HEAVY', [m for m in {HEAVY!r} if m in sys.modules])")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert "EXIT 2" in run.stdout and "HEAVY []" in run.stdout, run.stdout + run.stderr
    assert message in run.stderr


def test_train_help_lists_groups_without_training(tmp_path):
    result = invoke("train", "--help")
    assert result.exit_code == 0
    for text in ("quantization: int8, nf4, none", "strategy: finetune, standard", "tracking: mlflow, tensorboard"):
        assert text in result.output
    models = next(line for line in result.output.splitlines() if line.startswith("model: "))
    assert {"smollm2-135m-instruct", "tiny", "qwen2.5-0.5b-instruct", "tiny-qwen3"} <= set(models[7:].split(", "))


def test_cfg_job_prints_config_without_training(tmp_path):
    result = invoke("train", "--cfg", "job", "model=tiny", f"artifact.root={tmp_path}")
    assert result.exit_code == 0 and "max_steps: 40" in result.output
    assert published_versions(tmp_path) == []


def test_train_publishes_a_version_with_manifest(tmp_path):
    result = invoke("train", "model=tiny", "training.max_steps=2", f"artifact.root={tmp_path}", "artifact.name=t")
    assert result.exit_code == 0, result.output
    version = tmp_path / "t" / "v1"
    assert str(version) in result.output
    names = {p.name for p in version.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "training_config.yaml", "training_metrics.json",
            "metadata.json", "checksums.json", "tokenizer.json"} <= names
    manifest = json.loads((version / "checksums.json").read_text())
    assert {f["path"] for f in manifest["files"]} == names - {"checksums.json"}
    assert (tmp_path / "t" / "latest").read_text().strip() == "v1"
    metrics = json.loads((version / "training_metrics.json").read_text())
    assert metrics["final"]["global_step"] == 2 and "eval_loss" in metrics["final"]
    run_dirs = list((tmp_path / ".runs" / "t").iterdir())
    assert (run_dirs[0] / "metrics.jsonl").is_file() and any((run_dirs[0] / "tensorboard").iterdir())


def test_published_adapter_loads_with_peft(tmp_path, tiny_folder):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    assert invoke("train", "model=tiny", "training.max_steps=2", f"artifact.root={tmp_path}", "artifact.name=t").exit_code == 0
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_folder), tmp_path / "t" / "v1")
    assert any("lora_B" in n and p.abs().sum() > 0 for n, p in model.named_parameters())


def test_multirun_publishes_one_version_per_job(tmp_path):
    result = invoke("train", "-m", "strategy=standard,finetune", "model=tiny", "training.max_steps=2",
                    f"artifact.root={tmp_path}")
    assert result.exit_code == 0, result.output
    assert published_versions(tmp_path) == ["tiny-dialogue/v1", "tiny-dialogue/v2"]
    strategies = {(tmp_path / v / "metadata.json").read_text().count('"finetune"') for v in published_versions(tmp_path)}
    assert strategies == {0, 1}


def bad_jsonl(tmp_path, text):
    path = tmp_path / "data.jsonl"
    path.write_text(text)
    return f"data.train={path}"


BAD_INPUTS = {
    "malformed json": (lambda p: [bad_jsonl(p, '{"text": "a"}\n{"text": \n')], "data.jsonl line 2: not valid JSON"),
    "missing field": (lambda p: [bad_jsonl(p, '{"txt": "a"}\n')], "data.jsonl line 1: expected a JSON object"),
    "mistyped field": (lambda p: [bad_jsonl(p, '{"messages": "hi"}\n')], "`messages` must be a non-empty list"),
    "empty file": (lambda p: [bad_jsonl(p, "")], "no examples (the file is empty)"),
    "missing file": (lambda p: [f"data.train={p}/nope.jsonl"], "nope.jsonl: no such data file"),
    "all loss tokens cut": (lambda p: ["training.max_length=8"], "lose every loss token"),
    "text for dialogue": (lambda p: [bad_jsonl(p, '{"text": "a"}\n')], "model_type=dialogue needs conversations"),
    "bad value": (lambda p: ["training.max_steps=abc"], "training.max_steps='abc': expected a whole number"),
    "unknown key": (lambda p: ["training.max_step=3"], "max_step"),
    "unknown option": (lambda p: ["strategy=sideways"], "sideways"),
    "bad override syntax": (lambda p: ["training.max_steps=[1"], "training.max_steps"),
    "missing model folder": (lambda p: [f"model.path={p}/no-model"], "no such model folder"),
    "folder without config": (lambda p: [f"model.path={p}"], "no config.json"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_exits_2_with_message_and_publishes_nothing(tmp_path, case):
    overrides, expected = BAD_INPUTS[case]
    root = tmp_path / "out"
    result = invoke("train", "model=tiny", "training.max_steps=1", f"artifact.root={root}", *overrides(tmp_path))
    assert result.exit_code == 2, result.output
    assert expected in result.output
    assert "Traceback" not in result.output
    assert published_versions(root) == []


@pytest.mark.slow
def test_hydra_launchers_and_sweepers(tmp_path):
    """Hydra's own plugins drive `train`: joblib and submitit_local launchers, the Optuna sweeper."""
    common = ["model=tiny", "training.max_steps=2", "training.eval_steps=0"]
    result = invoke("train", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "strategy=standard,finetune",
                    *common, f"artifact.root={tmp_path / 'joblib'}")
    assert result.exit_code == 0, result.output
    assert published_versions(tmp_path / "joblib") == ["tiny-dialogue/v1", "tiny-dialogue/v2"]

    result = invoke("train", "-m", "hydra/launcher=submitit_local", *common, f"artifact.root={tmp_path / 'submitit'}")
    assert result.exit_code == 0, result.output
    assert published_versions(tmp_path / "submitit") == ["tiny-dialogue/v1"]

    result = invoke("train", "-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=2", "hydra.sweeper.direction=minimize",
                    "training.learning_rate=interval(1e-4,1e-2)", *common, f"artifact.root={tmp_path / 'optuna'}")
    assert result.exit_code == 0, result.output
    assert published_versions(tmp_path / "optuna") == ["tiny-dialogue/v1", "tiny-dialogue/v2"]
    objective = json.loads((tmp_path / "optuna" / "tiny-dialogue" / "v1" / "training_metrics.json").read_text())["final"]
    optimization = next((tmp_path / "optuna" / ".runs").rglob("optimization_results.yaml")).read_text()
    assert "best_value" in optimization and "eval_loss" in objective
