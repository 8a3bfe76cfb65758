"""The embedded default model end to end (slow: converts the GGUF once, ~16 s, then trains)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture
def user_cache(monkeypatch):
    """The default model converts into the user's cache, so `make demo` and the tests share one conversion."""
    monkeypatch.delenv("QRTRAIN_CACHE", raising=False)


def test_default_model_trains_and_publishes(tmp_path, user_cache):
    qrtrain = Path(sys.executable).parent / "qrtrain"
    env = {k: v for k, v in os.environ.items() if k != "QRTRAIN_CACHE"}
    result = subprocess.run([str(qrtrain), "train", "training.max_steps=3", "training.eval_steps=0",
                             "training.batch_size=2", f"artifact.root={tmp_path}"],
                            capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    version = tmp_path / "smollm2-135m-instruct-dialogue" / "v1"
    assert result.stdout.strip().splitlines()[-1] == str(version)
    metadata = json.loads((version / "metadata.json").read_text())
    assert metadata["base_model"]["name"] == "smollm2-135m-instruct"
    adapter = json.loads((version / "adapter_config.json").read_text())
    assert adapter["r"] == 16 and adapter["peft_type"] == "LORA"


def test_console_script_bad_input_exit_code(tmp_path):
    qrtrain = Path(sys.executable).parent / "qrtrain"
    result = subprocess.run([str(qrtrain), "train", "model=tiny", f"data.train={tmp_path}/missing.jsonl",
                             f"artifact.root={tmp_path}"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "missing.jsonl: no such data file" in result.stderr and "Traceback" not in result.stderr


def test_demo_end_to_end_shape(tmp_path, user_cache):
    """make demo's training, then evaluate and compare: base near zero, retrieval high, adapter clearly above base;
    then DPO from it: held-out reward accuracy at least 0.9 (above SFT's), key-fact accuracy not lower."""
    qrtrain = Path(sys.executable).parent / "qrtrain"
    env = {k: v for k, v in os.environ.items() if k != "QRTRAIN_CACHE"}

    def run(*args):
        result = subprocess.run([str(qrtrain), *args], capture_output=True, text=True, env=env, timeout=1800)
        assert result.returncode == 0, result.stderr[-3000:]
        return result

    run("train", f"artifact.root={tmp_path}")
    version = tmp_path / "smollm2-135m-instruct-dialogue" / "v1"
    run("evaluate", str(version))
    report = json.loads(next((version.parent / "evaluations").glob("v1-demo-*/report.json")).read_text())["metrics"]
    assert report["keyword_accuracy"]["mean"] >= 0.4 and report["perplexity"]["mean"] < 5

    # deployed through transformers serve: the equivalence gate replays evaluate's questions through the engine
    deployed = run("deploy", "smollm2-135m-instruct-dialogue/v1", "--name", "demo", "--root", str(tmp_path), "--json")
    try:
        gate = json.loads(deployed.stdout)["checks"]["equivalence"]
        print(f"\nequivalence gate: {gate['answer_agreement']:.3f} of {gate['n']} answers identical; "
              + ", ".join(f"{k} {m['endpoint']:.3f} vs {m['recorded']:.3f}" for k, m in gate["metrics"].items()))
        assert gate["passed"] and gate["n"] >= 20
    finally:
        run("deploy", "--name", "demo", "--stop", "--root", str(tmp_path))
    # the full-model q8_0 GGUF of the same version, its held-out perplexity checked against the adapter's
    packaged = Path(run("package", str(version), "--format", "gguf", "--quant", "q8_0").stdout.strip().splitlines()[-1])
    check = json.loads((packaged / "metadata.json").read_text())["package"]["perplexity_check"]
    print(f"q8_0 GGUF perplexity {check['gguf_perplexity']:.4f} vs adapter {check['adapter_perplexity']:.4f} "
          f"({check['relative_increase']:+.2%}, tolerance {check['tolerance']:.0%})")
    assert check["relative_increase"] <= check["tolerance"]
    run("compare", f"artifact.root={tmp_path}", f"output_dir={tmp_path / 'cmp'}")
    systems = {s["system"]: s["metrics"] for s in json.loads((tmp_path / "cmp" / "comparison.json").read_text())["systems"]}
    base, rag = systems["base"]["keyword_accuracy"], systems["rag"]["keyword_accuracy"]
    adapter = systems["smollm2-135m-instruct-dialogue/v1"]["keyword_accuracy"]
    assert base["mean"] <= 0.1
    assert rag["mean"] >= 0.5
    assert adapter["mean"] >= base["mean"] + 0.3 and adapter["ci95"][0] > base["ci95"][1]

    # the README's preference path: DPO from the SFT version, then base, SFT and DPO side by side
    run("train", "method=dpo", "init_adapter=smollm2-135m-instruct-dialogue/v1", f"artifact.root={tmp_path}")
    dpo = tmp_path / "smollm2-135m-instruct-dialogue-dpo" / "v1"
    assert json.loads((dpo / "metadata.json").read_text())["parent"]["name"] == "smollm2-135m-instruct-dialogue"
    run("verify", str(dpo))
    run("compare", "systems=[base,adapter]", f"adapters=[{version},{dpo}]", f"artifact.root={tmp_path}",
        f"output_dir={tmp_path / 'cmp-dpo'}")
    systems = {s["system"]: s["metrics"]
               for s in json.loads((tmp_path / "cmp-dpo" / "comparison.json").read_text())["systems"]}
    sft_metrics, dpo_metrics = systems["smollm2-135m-instruct-dialogue/v1"], systems["smollm2-135m-instruct-dialogue-dpo/v1"]
    assert dpo_metrics["reward_accuracy"]["mean"] >= 0.9
    assert dpo_metrics["reward_accuracy"]["mean"] > sft_metrics["reward_accuracy"]["mean"]
    import torch

    one_question = 1 / 24 if torch.cuda.is_available() else 0.0  # GPU kernels are not bit-exact: one answer may flip
    assert dpo_metrics["keyword_accuracy"]["mean"] >= sft_metrics["keyword_accuracy"]["mean"] - one_question
    assert "preference_accuracy" in systems["base"] and "reward_accuracy" not in systems["base"]
