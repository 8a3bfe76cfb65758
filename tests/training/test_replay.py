"""qrtrain replay: the recorded config trained again reproduces the logged losses exactly on CPU; a changed
data file is exit 2, named, before anything trains."""

import json
import shutil

import pytest

from qrtrain.data.rows import DEMO_DIR
from tests.conftest import invoke


@pytest.fixture(scope="module")
def version(tmp_path_factory, model_cache):
    root = tmp_path_factory.mktemp("replay")
    data = root / "train.jsonl"
    shutil.copyfile(DEMO_DIR / "qa_train.jsonl", data)
    result = invoke("train", "model=tiny", "training.max_steps=8", "training.logging_steps=2", f"data.train={data}",
                    f"artifact.root={root}", "artifact.name=r")
    assert result.exit_code == 0, result.output
    return root, data


def test_replay_reproduces_the_recorded_losses_exactly_on_cpu(version):
    root, _ = version
    result = invoke("replay", "r/v1", "--root", root, "--steps", "5", "--json")
    assert result.exit_code == 0, result.output
    replayed = json.loads(result.output[result.output.index("{"):])
    assert replayed["reproduced"] and replayed["tolerance"] == 0 and replayed["steps"] == 6  # the next logged step
    assert [r["step"] for r in replayed["rows"] if r["value"] == "loss"] == [2, 4, 6]
    assert all(r["difference"] == 0 for r in replayed["rows"])
    assert sorted(p.name for p in (root / "r").iterdir() if p.name.startswith("v")) == ["v1"]  # nothing published


def test_replay_refuses_changed_data_and_names_it(version, tmp_path):
    root, data = version
    original = data.read_bytes()
    try:
        data.write_bytes(original.replace(b"Quillhaven", b"Quillhavem", 1))
        result = invoke("replay", "r/v1", "--root", root)
        assert result.exit_code == 2, result.output
        assert f"data {data}" in result.output and "changed since training" in result.output
        data.unlink()
        result = invoke("replay", "r/v1", "--root", root)
        assert result.exit_code == 2 and "missing" in result.output
    finally:
        data.write_bytes(original)
    assert invoke("replay", "r/v9", "--root", root).exit_code == 2


def test_a_curve_that_differs_in_the_last_bit_is_not_reproduced_on_cpu_and_is_within_tolerance_on_cuda():
    from pathlib import Path

    from qrtrain.training.replay import Recorded, compare_curves

    logged = [{"step": 2, "loss": 6.5, "grad_norm": 1.0}, {"step": 4, "loss": 6.25, "grad_norm": 0.5}]
    nudged = [dict(h, loss=h["loss"] + 1e-12) for h in logged]
    recorded = Recorded(Path("v1"), None, {"name": "r", "version": "v1"}, logged)
    assert compare_curves(recorded, logged, logged, 4, "cpu")["reproduced"]
    assert not compare_curves(recorded, logged, nudged, 4, "cpu")["reproduced"]
    assert compare_curves(recorded, logged, nudged, 4, "cuda")["reproduced"]
    assert not compare_curves(recorded, logged, logged[:1], 4, "cpu")["reproduced"]  # a step not replayed
