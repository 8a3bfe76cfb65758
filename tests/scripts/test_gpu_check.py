"""`make gpu-check` runs on CPU against the stand-in kernel: every stage writes its JSON line and passes,
and a stage that breaks is recorded while the later ones still run."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_check.py"


def run_check(out: Path, *stages: str) -> tuple[int, list[dict]]:
    command = [sys.executable, str(SCRIPT), "--out", str(out), *(["--stages", *stages] if stages else [])]
    result = subprocess.run(command, capture_output=True, text=True, timeout=1200)
    lines = [json.loads(line) for line in (out / "stages.jsonl").read_text().splitlines()]
    return result.returncode, lines


def test_the_kernel_and_version_stages_pass_on_cpu(tmp_path, model_cache):
    code, lines = run_check(tmp_path, "versions", "kernel")
    assert code == 0, lines
    assert [line["stage"] for line in lines] == ["versions", "kernel", "summary"]
    kernel = lines[1]
    assert kernel["kernel"].startswith("stand-in") and kernel["ok"]
    assert max(kernel["gqa"]["max_error"].values()) <= kernel["tolerance"]
    assert lines[0]["versions"]["torch"] and lines[0]["matches"] in ("2.10", "2.11", "2.13")


def test_a_failing_stage_is_recorded_and_the_next_still_runs(tmp_path, monkeypatch):
    (tmp_path / "a-file").write_text("not a folder")
    monkeypatch.setenv("QRTRAIN_CACHE", str(tmp_path / "a-file" / "cache"))  # qrtrain train exits 2 on it
    code, lines = run_check(tmp_path / "out", "train-default", "versions")
    assert code == 1
    assert [(line["stage"], line["ok"]) for line in lines] == [("train-default", False), ("versions", True),
                                                                ("summary", False)]
    assert "QRTRAIN_CACHE" in lines[0]["error"]


@pytest.mark.slow
def test_every_stage_passes_on_cpu(tmp_path, model_cache):
    code, lines = run_check(tmp_path)
    stages = {line["stage"]: line for line in lines}
    assert code == 0, [(k, v.get("error")) for k, v in stages.items() if not v["ok"]]
    assert list(stages) == ["versions", "kernel", "trainer-losses", "train-default", "train-nf4", "tests", "bench", "summary"]
    losses = stages["trainer-losses"]
    assert "qrtrain_varlen" in losses["padding_free_run"] and losses["max_relative_difference"] <= losses["tolerance"]
    assert losses["padded"][0] != losses["padded"][-1]  # training moved
    assert stages["bench"]["figures"]["smoke"]["speedup"] > 0
