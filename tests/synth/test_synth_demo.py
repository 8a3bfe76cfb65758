"""Documents -> training data -> adapter -> comparison, with the default model (slow, ~14 min on 2 cores):
`qrtrain synth` on the shipped Veloria documents, `qrtrain train` on its output and on the hand-written
conversations, `qrtrain compare` on the shipped held-out questions.

    .venv/bin/pytest -m slow tests/synth/test_synth_demo.py

It asserts what the path must deliver: the synthetic data trains, its provenance reaches the artifact, and the
comparison reports key-fact accuracy with confidence intervals for base and both adapters; the figures
(README, "qrtrain synth") come from this run.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
QRTRAIN = str(Path(sys.executable).parent / "qrtrain")
SYSTEM = "synth.system_prompt='You answer questions about the island of Veloria. Answer in one short sentence.'"


def run(*args: str, cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k != "QRTRAIN_CACHE"}  # the default model, from the user's cache
    result = subprocess.run([QRTRAIN, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_synthetic_data_trains_an_adapter_that_is_compared_with_base_and_hand_written(tmp_path):
    run("synth", f"synth.output={tmp_path / 'synth'}", "synth.questions_per_passage=24", SYSTEM, cwd=tmp_path)
    provenance = json.loads((tmp_path / "synth" / "synth_provenance.json").read_text())
    assert provenance["counts"]["kept"] >= 10
    root = tmp_path / "outputs"
    run("train", f"data.train={tmp_path / 'synth' / 'train.jsonl'}", f"data.eval={tmp_path / 'synth' / 'eval.jsonl'}",
        f"artifact.root={root}", "artifact.name=veloria-synth", cwd=tmp_path)
    run("train", f"artifact.root={root}", "artifact.name=veloria-hand", cwd=tmp_path)
    metadata = json.loads((root / "veloria-synth" / "v1" / "metadata.json").read_text())
    assert next(d for d in metadata["datasets"] if d["role"] == "train")["synth_provenance"]["counts"] == provenance["counts"]

    run("compare", f"artifact.root={root}", "systems=[base,adapter]", "adapters=[veloria-synth/v1,veloria-hand/v1]",
        f"output_dir={tmp_path / 'compare'}", cwd=tmp_path)
    systems = {s["system"]: s["metrics"]["keyword_accuracy"]
               for s in json.loads((tmp_path / "compare" / "comparison.json").read_text())["systems"]}
    assert set(systems) == {"base", "veloria-synth/v1", "veloria-hand/v1"}
    assert all(len(m["ci95"]) == 2 and m["n"] == 24 for m in systems.values())  # the 24 fact questions
    print(json.dumps({"counts": provenance["counts"], "keyword_accuracy": systems}, indent=1))
    # the target: the synthetic-data adapter beats base with non-overlapping intervals (measured with 24
    # questions per passage, meta-text dropped: base 0.0 [0.0, 0.0], synthetic 0.167 [0.042, 0.333],
    # hand-written 0.542 [0.374, 0.708]; with 12 per passage only 17 were kept and the intervals touched)
    assert systems["veloria-synth/v1"]["ci95"][0] > systems["base"]["ci95"][1]
